// One replication session with one peer, sans-IO, mirroring streamer/core/replication.py.
//
// One job: the protocol rules of one channel. Chunks in (`receive`), data-channel messages out
// (`datagramsToSend`), events out (`nextEvent`), time always passed in (seconds). A session
// checks the handshake (capability bound to the DTLS fingerprints, optional writer proof), parses
// and checks what its peer sends, matches data to our requests, and leaves every choice of what
// to request or serve to its replicator (replicator.js). It never stores, announces or serves a
// block that has not verified, and never does I/O. A peer that sends undecodable bytes, a bad
// proof or data we never asked for is dropped with a PeerMisbehaved event (the adapter bans it).
// Handshake and proof checks use WebCrypto, which is asynchronous: receive() returns a promise,
// and messages are handled strictly one after another in arrival order.

import { blake2b } from './blake2b.js'
import { compare, concat, equal, fromHex } from './encoding.js'
import { Ed25519PublicKey, replicationCapability } from './crypto.js'
import { BlockNotFoundError, ProofError } from './merkle.js'
import { RangeSet } from './ranges.js'
import { Framer, Reassembler, WireError, decodeMessage, encodeMessage } from './wire.js'

// NoData reasons (our own codes; hypercore peers send none, which reads as NO_DATA_MISSING).
export const NO_DATA_MISSING = 0 // we do not hold what was asked, or cannot prove it
export const NO_DATA_BUSY = 1 // we hold it but our upload queue is full

export const MAX_CONTROL_MESSAGES = 4096 // queued small messages to one peer
export const MAX_REMOTE_REQUESTS = 256 // unanswered requests a peer may have with us
export const MAX_REMOTE_RANGES = 1024 // disjoint runs remembered of a peer's blocks
export const MAX_BITFIELD_WORDS = 1024 // u32 words in one bitfield message
export const MAX_BLOCK_INDEX = 2 ** 48 // beyond any real stream; larger indexes are hostile
export const MAX_EVENTS = 1024 // unread events kept; the oldest are dropped
// Waiting requests (wire flag 64): a block we lack is kept and answered when it verifies here.
export const ANNOUNCED_MEMORY = 32 // newest single-block announcements whose time we keep
export const MAX_WAITING = 8 // kept per peer; more are answered missing at once
export const WAIT_AHEAD = 16 // only for blocks this close past our length
export const WAIT_BEHIND = 8 // given up (missing) when a block this many newer verifies first
export const RECENT_CANCELLED = 256 // cancelled requests whose late answers we still accept

class ProtocolViolation extends Error {}

// ---------------------------------------------------------------- handshake (net/swarm.py)

/** The sha-256 DTLS fingerprint (32 bytes) of an SDP: the data channel section's, else the
 *  session-level one; an Error if the SDP has none. */
export function sdpFingerprint (sdp) {
  let section = 'session'
  let sessionFp = null
  let appFp = null
  for (const raw of sdp.split(/\r?\n/)) {
    const line = raw.trim()
    if (line.startsWith('m=')) section = line.startsWith('m=application') ? 'application' : 'other'
    const m = /^a=fingerprint:(\S+)\s+([0-9A-Fa-f:]+)$/.exec(line)
    if (!m || m[1].toLowerCase() !== 'sha-256') continue
    const fp = fromHex(m[2].replace(/:/g, ''))
    if (fp.length !== 32) continue
    if (section === 'session' && !sessionFp) sessionFp = fp
    if (section === 'application' && !appFp) appFp = fp
  }
  const fp = appFp || sessionFp
  if (!fp) throw new Error("the SDP has no sha-256 DTLS fingerprint; it cannot be verified")
  return fp
}

/** BLAKE2b-256 of both DTLS sha-256 fingerprints, sorted and concatenated: the same on both
 *  ends, and different if anyone in between swapped the SDP. */
export function handshakeHash (localFingerprint, remoteFingerprint) {
  const [a, b] = [localFingerprint, remoteFingerprint].sort(compare)
  return blake2b(concat([a, b]))
}

/** Our handshake for one connection (a tab is never the writer, so no writer proof). */
export function makeHandshake (key, hash, initiator) {
  return {
    type: 'handshake',
    capability: replicationCapability(hash, key, initiator),
    seeks: true,
    writerSignature: null,
  }
}

/** Check the peer's handshake (`initiator` is OUR role); resolves true if the peer proved it is
 *  the writer. Rejects with ProofError when the capability or the writer signature is wrong. */
export async function checkHandshake (handshake, key, hash, initiator) {
  const expected = replicationCapability(hash, key, !initiator)
  if (!equal(handshake.capability, expected)) {
    throw new ProofError('handshake capability does not match: the peer does not know the feed key')
  }
  if (handshake.writerSignature == null) return false
  // The writer signs the capability: it is bound to this connection, so it cannot be replayed.
  if (!(await new Ed25519PublicKey(key).verify(handshake.capability, handshake.writerSignature))) {
    throw new ProofError('handshake claims the writer key with a bad signature')
  }
  return true
}

// ---------------------------------------------------------------- the session

export class PeerStats {
  constructor () {
    this.bytes_up = 0
    this.bytes_down = 0
    this.blocks_up = 0
    this.blocks_down = 0
    this.block_bytes_up = 0
    this.block_bytes_down = 0
    this.duplicates = 0 // blocks this peer sent that we already had
    this.refused = 0 // our block requests it declined (busy or missing)
    this.blocks_pushed = 0 // live push (core/relay.py): a tab never pushes
    this.pushes_received = 0 // nor subscribes, so it receives no pushes
  }
}

const HANDSHAKE = 'handshake'
const OPEN = 'open'
const CLOSED = 'closed'

/**
 * Replication with one peer over one ordered, reliable message channel; create it with
 * Replicator.addSession. Feed every received binary data-channel message to receive(data, now);
 * send what datagramsToSend(now, maxBytes) returns, in order; drain nextEvent().
 *
 * Events: {type: 'handshake', remoteIsWriter}, {type: 'synced', length, fork},
 * {type: 'block', index, fromWriter}, {type: 'upgraded', length},
 * {type: 'misbehaved', reason} (closed already: close the channel and ban the peer).
 */
export class Session {
  constructor (replicator, { name = '', handshake = null, verifyHandshake = null, remoteIsWriter = false } = {}) {
    if ((handshake === null) !== (verifyHandshake === null)) {
      throw new Error('give both handshake and verifyHandshake, or neither (already done)')
    }
    this.name = name
    this._rep = replicator
    this._feed = replicator.feed
    this._verifyHandshake = verifyHandshake
    this.remoteIsWriter = remoteIsWriter
    this.remoteLength = 0
    this.remoteFork = 0
    this.remoteCanUpgrade = false
    this.synced = false // a Sync arrived, so remoteLength is meaningful
    this.remoteHas = new RangeSet(MAX_REMOTE_RANGES)
    this.inflight = new Map() // request id -> OutRequest
    this._cancelled = new Map() // request id -> OutRequest, oldest first
    this._nextId = 1
    this._uploads = [] // block requests admitted, answered when sent
    this._parked = [] // waiting requests for blocks we lack, answered when they verify
    this._control = [] // encoded small messages
    this._outbox = [] // chunks of the message being sent
    this._framer = new Framer(replicator.config.chunkSize)
    this._reassembler = new Reassembler()
    this._events = []
    this._announcedLength = 0
    this.announced = new Map() // block -> when the peer announced it (its newest single blocks)
    this._chain = Promise.resolve()
    this._gotFirst = false // the peer's first binary message arrived
    this.stats = new PeerStats()
    this.closeReason = null
    if (handshake !== null) {
      this._state = HANDSHAKE
      this._queue(handshake)
    } else {
      this._state = OPEN
      this._onOpen()
    }
  }

  // ------------------------------------------------------------ public surface

  get isOpen () { return this._state === OPEN }
  get closed () { return this._state === CLOSED }
  /** Part of a message went out: the rest must follow before anything else on this channel. */
  get midMessage () { return this._outbox.length > 0 }
  get uploadsWaiting () { return this._uploads.length }
  get hasEvents () { return this._events.length > 0 }

  /** Take one binary data-channel message; resolves once it (and all before it) is handled. */
  receive (data, now) {
    if (this._state === CLOSED) return this._chain
    this.stats.bytes_down += data.length
    // Reassemble in arrival order now; handle whole messages one after another.
    let messages
    try {
      messages = this._reassembler.feed(data)
    } catch (e) {
      this._chain = this._chain.then(() => this._misbehaved(`undecodable bytes: ${e.message}`))
      return this._chain
    }
    if (this._state === HANDSHAKE && !this._gotFirst) {
      this._gotFirst = true
      if (!messages.length) {
        // The peer's first data-channel message must be its whole handshake (docs/wire.md).
        this._chain = this._chain.then(() => this._misbehaved('bad handshake: its first message is not a handshake (part of a message)'))
        return this._chain
      }
    }
    for (const raw of messages) {
      this._chain = this._chain.then(() => this._handleRaw(raw, now))
    }
    this._chain = this._chain.then(() => this._rep.schedule(now))
    return this._chain
  }

  async _handleRaw (raw, now) {
    if (this._state === CLOSED) return
    try {
      await this._handle(decodeMessage(raw), now)
    } catch (e) {
      if (e instanceof WireError) {
        this._misbehaved(`undecodable bytes: ${e.message}`)
      } else if (e instanceof ProofError || e instanceof ProtocolViolation) {
        this._misbehaved(e.message)
      } else {
        // A peer must never be able to crash the node (a tab has no disk to fail).
        this._misbehaved(`internal error on a message from the peer: ${e.name}: ${e.message}`)
      }
    }
  }

  /** Data-channel messages (each <= 64 KiB) to send now, in order; with maxBytes it stops once
   *  that many bytes are out (the last chunk may overrun it). */
  datagramsToSend (now, maxBytes = Infinity) {
    const out = []
    if (this._state === CLOSED) return out
    let budget = maxBytes
    while (budget > 0) {
      if (!this._outbox.length && !this._nextMessage()) break
      const chunk = this._outbox.shift()
      out.push(chunk)
      budget -= chunk.length
    }
    for (const c of out) this.stats.bytes_up += c.length
    return out
  }

  wantsToSend () {
    return this._state !== CLOSED && (this._outbox.length > 0 || this._control.length > 0 || this._uploads.length > 0)
  }

  nextEvent () {
    return this._events.length ? this._events.shift() : null
  }

  /** `block` verified here: answer the peer's requests that waited for it as if they came now
   * (admission may still say busy); give up those for blocks WAIT_BEHIND older still not here. */
  verified (block, now) {
    if (!this._parked.length || this._state !== OPEN) return
    const parked = this._parked
    this._parked = [] // those answered now no longer count as waiting
    for (const req of parked) {
      if (req.block.index === block) {
        this._onRequest({ ...req, wait: false }, now)
      } else if (req.block.index <= block - WAIT_BEHIND) {
        this._queue({ type: 'noData', request: req.id, reason: NO_DATA_MISSING })
      } else {
        this._parked.push(req)
      }
    }
  }

  /** Stop: nothing more is sent or accepted; our requests to the peer go elsewhere. */
  close (reason = null) {
    if (this._state === CLOSED) return
    this._state = CLOSED
    this.closeReason = reason
    this._outbox = []
    this._control = []
    for (const req of this._uploads) this._rep._uploadDropped(req.block.index)
    this._uploads = []
    this._parked = []
    this._rep._sessionClosed(this)
  }

  // ------------------------------------------------------------ used by the replicator

  /** Send a request for a block and/or an upgrade of our length to upgradeTo. */
  request (now, { block = null, upgradeTo = null, wait = false } = {}) {
    const feed = this._feed
    const id = this._nextId++
    const msg = {
      type: 'request', id, fork: feed.fork, block: null, hash: null, seek: null, upgrade: null,
      manifest: false, priority: 0, wait,
    }
    if (block !== null) msg.block = { index: block, nodes: feed.missingNodes(block) }
    if (upgradeTo !== null) msg.upgrade = { start: feed.length, length: upgradeTo - feed.length }
    const out = { id, block, upgrade: upgradeTo !== null, fork: feed.fork, sentAt: now, checkAt: 0, late: false, wait }
    this.inflight.set(id, out)
    this._queue(msg)
    return out
  }

  /** Withdraw a request; a late answer to it is then accepted quietly, not as unrequested. */
  cancel (out) {
    if (!this.inflight.delete(out.id)) return
    this._cancelled.set(out.id, out)
    while (this._cancelled.size > RECENT_CANCELLED) {
      this._cancelled.delete(this._cancelled.keys().next().value)
    }
    if (this._state === OPEN) this._queue({ type: 'cancel', request: out.id })
  }

  /** Tell the peer we hold verified blocks start..end-1. */
  announce (start, end) {
    if (this._state === OPEN && start < end) this._queue({ type: 'range', start, length: end - start, drop: false })
  }

  /** Tell the peer we no longer hold blocks start..end-1 (evicted from memory). */
  announceDrop (start, end) {
    if (this._state === OPEN && start < end) this._queue({ type: 'range', start, length: end - start, drop: true })
  }

  /** Tell the peer our signed length if it grew since we last did. */
  announceLength () {
    const feed = this._feed
    if (this._state !== OPEN || feed.length <= this._announcedLength) return
    this._announcedLength = feed.length
    this._queue({
      type: 'sync', fork: feed.fork, length: feed.length, remoteLength: this.remoteLength,
      canUpgrade: true, uploading: true, downloading: !feed.writable,
    })
  }

  // ------------------------------------------------------------ internals

  _queue (msg) {
    if (this._state === CLOSED) return
    if (this._control.length >= MAX_CONTROL_MESSAGES) {
      this._misbehaved('the peer stopped reading: too many messages queued for it')
      return
    }
    this._control.push(encodeMessage(msg))
  }

  _emit (event) {
    this._events.push(event)
    if (this._events.length > MAX_EVENTS) this._events.shift()
  }

  _nextMessage () {
    if (this._control.length) {
      this._outbox.push(...this._framer.frame(this._control.shift()))
      return true
    }
    while (this._uploads.length) {
      const msg = this._answer(this._uploads.shift())
      this._outbox.push(...this._framer.frame(encodeMessage(msg)))
      return true
    }
    return false
  }

  /** Build the proof for an admitted request now (our state may have grown meanwhile). */
  _answer (req) {
    this._rep._uploadStarted()
    let data
    try {
      data = this._feed.proof(req)
    } catch (e) {
      // Evicted since it was admitted, or beyond what we can prove: the peer asks someone else.
      if (!(e instanceof BlockNotFoundError)) console.error('swarmcast: cannot answer a request', e)
      return { type: 'noData', request: req.id, reason: NO_DATA_MISSING }
    }
    if (data.block) {
      const size = data.block.value.length
      this.stats.blocks_up += 1
      this.stats.block_bytes_up += size
      this._rep._blockUploaded(this, data.block.index, size)
    }
    return data
  }

  _misbehaved (reason) {
    if (this._state === CLOSED) return
    this._emit({ type: 'misbehaved', reason })
    this._rep.totals.peers_dropped += 1
    this.close(reason)
  }

  _onOpen () {
    this._emit({ type: 'handshake', remoteIsWriter: this.remoteIsWriter })
    this.announceLength()
    if (this._feed.length === 0) {
      // An empty Sync still tells the peer we are here and want its length.
      this._queue({ type: 'sync', fork: this._feed.fork, length: 0, remoteLength: 0 })
    }
    for (const [start, end] of this._feed.presentRanges().slice(0, MAX_REMOTE_RANGES)) this.announce(start, end)
  }

  async _handle (msg, now) {
    if (this._state === HANDSHAKE) {
      if (msg.type !== 'handshake') throw new ProtocolViolation(`expected a handshake, got ${msg.type}`)
      try {
        this.remoteIsWriter = await this._verifyHandshake(msg)
      } catch (e) {
        if (e instanceof ProofError) throw new ProtocolViolation(`bad handshake: ${e.message}`)
        throw e
      }
      if (this._state === CLOSED) return
      this._state = OPEN
      this._onOpen()
      return
    }
    switch (msg.type) {
      case 'sync': return this._onSync(msg)
      case 'request': return this._onRequest(msg, now)
      case 'cancel': return this._onCancel(msg)
      case 'data': return this._onData(msg, now)
      case 'noData': return this._onNoData(msg, now)
      case 'range': return this._onRange(msg, now)
      case 'bitfield': return this._onBitfield(msg)
      case 'want': case 'unwant': case 'extension':
        return // we announce every verified block unasked, so wants need no answer
      case 'subscribe':
        // Live push: a tab only pulls. A subscription (or a stop) is answered "refused / stopped";
        // depth notices and answers to subscriptions we never sent are ignored. A push (data with
        // request id 0) is then data we did not ask for (_onData).
        if (!msg.answer && msg.depth === null) this._queue({ type: 'subscribe', on: false, start: 0, answer: true, depth: null })
        return
      default:
        throw new ProtocolViolation(`unexpected ${msg.type} message after the handshake`)
    }
  }

  _onSync (msg) {
    if (msg.length > MAX_BLOCK_INDEX) throw new ProtocolViolation(`announced length ${msg.length} is beyond any stream`)
    const changed = !this.synced || msg.length !== this.remoteLength || msg.fork !== this.remoteFork
    this.synced = true
    this.remoteLength = msg.length
    this.remoteFork = msg.fork
    this.remoteCanUpgrade = msg.canUpgrade
    if (changed) this._emit({ type: 'synced', length: msg.length, fork: msg.fork })
  }

  _onRequest (msg, now) {
    if (this._uploads.length + this._parked.length >= MAX_REMOTE_REQUESTS) {
      throw new ProtocolViolation(`the peer has more than ${MAX_REMOTE_REQUESTS} requests waiting`)
    }
    const feed = this._feed
    const missing = { type: 'noData', request: msg.id, reason: NO_DATA_MISSING }
    if (msg.hash || msg.seek || msg.manifest || msg.fork !== feed.fork) return this._queue(missing)
    if (!msg.block && !msg.upgrade) return this._queue(missing)
    if (msg.block && !feed.has(msg.block.index)) {
      if (msg.wait && !msg.upgrade && this._parked.length < MAX_WAITING &&
          msg.block.index < feed.length + WAIT_AHEAD) {
        this._parked.push(msg) // answered by verified() when the block is here
        return
      }
      return this._queue(missing)
    }
    if (msg.block && !this._rep._admitUpload(this, msg.block.index, now)) {
      if (!msg.upgrade) return this._queue({ type: 'noData', request: msg.id, reason: NO_DATA_BUSY })
      // Busy for the block, but the upgrade is small: answer that part alone.
      msg = { ...msg, block: null }
    }
    if (!msg.block) {
      try {
        this._queue(feed.proof(msg))
      } catch (e) {
        if (!(e instanceof BlockNotFoundError)) throw e
        this._queue(missing)
      }
      return
    }
    this._uploads.push(msg)
  }

  _onCancel (msg) {
    const p = this._parked.findIndex((r) => r.id === msg.request)
    if (p >= 0) {
      this._parked.splice(p, 1)
      return
    }
    const i = this._uploads.findIndex((r) => r.id === msg.request)
    if (i < 0) return
    const [req] = this._uploads.splice(i, 1)
    this._rep._uploadDropped(req.block.index)
  }

  async _onData (msg, now) {
    let out = this.inflight.get(msg.request)
    const stale = out === undefined
    if (out === undefined) {
      out = this._cancelled.get(msg.request)
      if (out === undefined) {
        if (msg.request > 0 && msg.request < this._nextId) return // given up on long ago: ignore
        throw new ProtocolViolation(`data for request ${msg.request}, which we never sent`)
      }
      this._cancelled.delete(msg.request)
    } else {
      this.inflight.delete(msg.request)
    }
    if (msg.hash || msg.seek || msg.manifest) {
      throw new ProtocolViolation('data carries a hash, seek or manifest proof we never asked for')
    }
    if (msg.block && msg.block.index !== out.block) {
      throw new ProtocolViolation(`data carries block ${msg.block.index}, which we did not ask it for`)
    }
    if (msg.upgrade && !out.upgrade) throw new ProtocolViolation('data carries an upgrade we did not ask for')
    if (!msg.block && !msg.upgrade) throw new ProtocolViolation('data answers nothing')
    if (msg.fork !== out.fork) {
      throw new ProtocolViolation(`data is for fork ${msg.fork}, we asked about fork ${out.fork}`)
    }
    await this._rep._data(this, out, msg, stale, now)
  }

  _onNoData (msg, now) {
    const out = this.inflight.get(msg.request)
    if (out === undefined) {
      this._cancelled.delete(msg.request) // an answer to a request we cancelled: harmless
      return
    }
    this.inflight.delete(msg.request)
    this.stats.refused += 1
    this._rep._refused(this, out, msg.reason === NO_DATA_BUSY, now)
  }

  _onRange (msg, now) {
    const end = msg.start + msg.length
    if (end > MAX_BLOCK_INDEX) throw new ProtocolViolation(`range up to block ${end} is beyond any stream`)
    if (msg.drop) {
      this.remoteHas.remove(msg.start, end)
    } else {
      this.remoteHas.add(msg.start, end)
      if (msg.length === 1) {
        // When it announced each of its newest single blocks: how early it gets new blocks.
        this.announced.set(msg.start, now)
        if (this.announced.size > ANNOUNCED_MEMORY) this.announced.delete(this.announced.keys().next().value)
      }
    }
  }

  _onBitfield (msg) {
    if (msg.start % 32 || msg.bitfield.length > MAX_BITFIELD_WORDS) {
      throw new ProtocolViolation('bitfield message is misaligned or too large')
    }
    if (msg.start + 32 * msg.bitfield.length > MAX_BLOCK_INDEX) {
      throw new ProtocolViolation('bitfield reaches beyond any stream')
    }
    let runStart = -1
    msg.bitfield.forEach((word, n) => {
      for (let bit = 0; bit < 32; bit++) {
        const have = (word >>> bit) & 1
        const index = msg.start + 32 * n + bit
        if (have && runStart < 0) {
          runStart = index
        } else if (!have && runStart >= 0) {
          this.remoteHas.add(runStart, index)
          runStart = -1
        }
      }
    })
    if (runStart >= 0) this.remoteHas.add(runStart, msg.start + 32 * msg.bitfield.length)
  }
}
