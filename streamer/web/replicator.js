// The tab's Replicator: which block to ask from which peer, and when (streamer/core/scheduler.py).
//
// One job: coordinate the sessions of one feed. It asks for what matters most first (the
// playback window from the playhead, then the live edge, then explicit wants), never asks two
// peers for one block unless the first is late, caps what is in flight per peer and what waits
// for our uplink, verifies every answer through the feed before anything is announced, and
// re-shares what it holds. Sans-IO like the sessions: time (seconds) is passed in. A tab is never
// the writer, so the writer's upload budget of the Python scheduler has no counterpart here.

import { Session } from './session.js'
import { RateMeter, shareFromPeers } from './stats.js'
import { MAX_CHUNK } from './wire.js'

export const PRIORITY_HIGH = 2 // want(): after the playback window, before the live edge
export const PRIORITY_LOW = 0 // want(): after the live edge

const MAX_WANTS = 64
const MAX_REFUSALS = 4096
const REVEALED_MEMORY = 64

export const DEFAULT_CONFIG = Object.freeze({
  maxInflightPerPeer: 16, // our requests waiting at one peer
  maxQueuedRelays: 2, // answers of new blocks waiting for our uplink (more: NoData busy)
  maxQueuedHistory: 1, // answers of older blocks waiting for our uplink
  // Windows are seconds of media, turned into blocks with blockDuration (blocks()), as in
  // core/scheduler.py's ReplicatorConfig.
  hotWindow: 4, // seconds this close to the live edge are "new"
  playbackWindow: 8, // seconds from the playhead fetched first
  liveWindow: 4, // seconds of the newest media fetched while following the live edge
  live: true,
  blockDuration: 1.0, // seconds of media per block (the player sets it from the header)
  deadlineMargin: 0.5,
  lateAfter: 2.0, // a request unanswered this long goes to a second peer too
  requestTimeout: 8.0, // a request unanswered this long is given up, the peer avoided
  busyBackoff: 0.25,
  missingBackoff: 2.0,
  // Waiting requests (core/scheduler.py wait_requests): a new block we know exists but no
  // neighbour announced yet is asked of the neighbour that usually gets new blocks first, which
  // answers when it verifies it; moved to a neighbour that announces it first.
  waitRequests: true,
  waitPeers: 1, // neighbours a new block waits at, at once (core/scheduler.py wait_peers)
  scanLimit: 256,
  chunkSize: MAX_CHUNK,
  seed: null,
})

function rng (seed) {
  if (seed === null || seed === undefined) return Math.random
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const WAIT_KEY = -2 // refusal key: the peer answered a waiting request missing (it keeps none now)
const LEAD_WEIGHT = 0.2 // moving-average weight of each new block in a neighbour's lead

function lexLess (a, b) {
  for (let i = 0; i < a.length; i++) {
    if (a[i] < b[i]) return true
    if (a[i] > b[i]) return false
  }
  return false
}

export class Replicator {
  constructor (feed, config = {}) {
    this.feed = feed
    this.config = { ...DEFAULT_CONFIG, ...config }
    this.sessions = []
    this.totals = {
      blocks_from_writer: 0, blocks_from_peers: 0, block_bytes_from_writer: 0,
      block_bytes_from_peers: 0, duplicates: 0, duplicate_bytes: 0, rerequests: 0, timeouts: 0,
      uploads_refused: 0, peers_dropped: 0,
    }
    this._closed = { bytes_up: 0, bytes_down: 0, blocks_up: 0, block_bytes_up: 0 } // closed sessions'
    this._rates = new RateMeter()
    this._rand = rng(this.config.seed)
    this._inflight = new Map() // block -> [[session, out], ...]
    this._upgrade = null // [session, out]
    this._refusals = new Map() // session -> Map(block, -1 = upgrade or WAIT_KEY -> until)
    this._lead = new Map() // session -> how much earlier than us it usually gets new blocks
    this._refusalCount = 0
    this._playhead = null
    this._playheadAt = 0
    this._wants = []
    this._wantSeq = 0
    this._uploadsWaiting = 0
    this._revealed = new Map() // recent blocks -> when an upgrade revealed them
    this._unavailable = 0
    this._answerTime = 0.5
  }

  // ------------------------------------------------------------ sessions

  /** A session for a new channel (see Session); with handshake + verifyHandshake it sends our
   *  handshake first and checks the peer's. */
  addSession (opts = {}) {
    const s = new Session(this, opts)
    if (!s.closed) this.sessions.push(s)
    return s
  }

  removeSession (session) {
    session.close('channel closed')
  }

  // ------------------------------------------------------------ what to fetch

  want (start, end, priority = PRIORITY_LOW, now = null) {
    if (start >= end) return
    this._wants.push({ start, end, priority, seq: ++this._wantSeq })
    if (this._wants.length > MAX_WANTS) this._wants.shift()
    this._wants.sort((a, b) => b.priority - a.priority || a.seq - b.seq)
    if (now !== null) this.schedule(now)
  }

  unwant (start, end) {
    this._wants = this._wants.filter((w) => !(start <= w.start && w.end <= end))
  }

  /** The block being played (null: not playing); the window after it is fetched first. */
  setPlayhead (block, now) {
    this._playhead = block
    this._playheadAt = now
    this.schedule(now)
  }

  get playhead () {
    return this._playhead
  }

  /** Blocks that hold `seconds` of media (at least one): core.admission.blocks_of. */
  blocks (seconds) {
    return Math.max(1, Math.ceil(seconds / this.config.blockDuration - 1e-9))
  }

  * _wanted () {
    const cfg = this.config
    const length = this.feed.length
    if (this._playhead !== null) {
      const end = Math.min(this._playhead + this.blocks(cfg.playbackWindow), length)
      for (let b = Math.max(this._playhead, 0); b < end; b++) yield b
    }
    for (const w of this._wants) {
      if (w.priority >= PRIORITY_HIGH) for (let b = w.start; b < Math.min(w.end, length); b++) yield b
    }
    if (cfg.live) for (let b = Math.max(0, length - this.blocks(cfg.liveWindow)); b < length; b++) yield b
    for (const w of this._wants) {
      if (w.priority < PRIORITY_HIGH) for (let b = w.start; b < Math.min(w.end, length); b++) yield b
    }
  }

  /** The first block at or after `index` that an open neighbour announced, or null: where the
   *  stream can go on when the blocks before it are held by no one we know. */
  heldFrom (index) {
    let best = null
    for (const s of this.sessions) {
      if (!s.isOpen || s.remoteFork !== this.feed.fork) continue
      const at = s.remoteHas.firstFrom(index)
      if (at !== null && at < s.remoteLength && (best === null || at < best)) best = at
    }
    return best
  }

  /** Whether the scheduler would fetch `block` if it were missing (playback window, wants, live
   *  edge): memory bounds must not evict such a block, or it would be fetched again at once. */
  isWanted (block) {
    const cfg = this.config
    const length = this.feed.length
    if (this._playhead !== null && block >= this._playhead && block < this._playhead + this.blocks(cfg.playbackWindow)) return true
    if (cfg.live && block >= length - this.blocks(cfg.liveWindow) && block < length) return true
    return this._wants.some((w) => block >= w.start && block < w.end)
  }

  _deadline (block) {
    const head = this._playhead
    if (head === null || !(head <= block && block < head + this.blocks(this.config.playbackWindow))) return null
    const base = Math.max(this._playheadAt, this._revealed.get(block) || 0)
    return base + (block - head + 1) * this.config.blockDuration
  }

  // ------------------------------------------------------------ scheduling

  /** Send the requests that should be in flight now (run after every input). */
  schedule (now) {
    this._sample(now)
    this._requestUpgrade(now)
    this._requestBlocks(now)
  }

  _capacity (s) {
    return s.isOpen && s.inflight.size < this.config.maxInflightPerPeer
  }

  _refusedUntil (s, key) {
    const m = this._refusals.get(s)
    return m ? m.get(key) : undefined
  }

  _blocked (s, key, now) {
    const until = this._refusedUntil(s, key)
    return until !== undefined && until > now
  }

  _refuse (s, key, until) {
    if (this._refusalCount >= MAX_REFUSALS) return
    let m = this._refusals.get(s)
    if (!m) this._refusals.set(s, (m = new Map()))
    if (!m.has(key)) this._refusalCount++
    m.set(key, until)
  }

  _requestUpgrade (now) {
    if (this._upgrade !== null) return
    const feed = this.feed
    let best = null
    let bestKey = null
    for (const s of this.sessions) {
      if (!(s.synced && s.remoteCanUpgrade && s.remoteFork === feed.fork)) continue
      if (s.remoteLength <= feed.length || !this._capacity(s) || this._blocked(s, -1, now)) continue
      const key = [s.remoteLength, s.remoteIsWriter ? 0 : 1, -s.inflight.size, this._rand()]
      if (bestKey === null || lexLess(bestKey, key)) {
        best = s
        bestKey = key
      }
    }
    if (best === null) return
    const out = best.request(now, { upgradeTo: best.remoteLength })
    out.checkAt = now + this.config.requestTimeout
    this._upgrade = [best, out]
  }

  _requestBlocks (now) {
    const limit = this.config.maxInflightPerPeer
    const feed = this.feed
    const ready = this.sessions.filter((s) => s.isOpen && s.inflight.size < limit && s.remoteFork === feed.fork)
    if (!ready.length) return
    const cfg = this.config
    const waitFrom = cfg.waitRequests ? feed.length - this.blocks(cfg.liveWindow) : feed.length
    let scanned = 0
    let unavailable = 0
    for (const block of this._wanted()) {
      if (++scanned > cfg.scanLimit) break
      if (feed.has(block)) continue
      const entries = this._inflight.get(block)
      let waiting = []
      if (entries) {
        // Asked already, unless all we have is waiting requests at peers that still lack the
        // block: then one more may wait elsewhere, or all of them move to a peer that announced
        // the block meanwhile.
        if (entries.some(([, o]) => !o.wait) || this._oneWaiterHolds(block, entries)) continue
        waiting = entries
      }
      const s = this._pick(block, now, ready)
      let asks = [s]
      let wait = false
      if (s !== null) {
        this._withdraw(block, waiting)
      } else {
        if (!waiting.length && !this.sessions.some((t) => t.remoteHas.has(block))) unavailable++
        if (block < waitFrom || waiting.length >= cfg.waitPeers) continue
        asks = this._pickWaits(block, now, ready, waiting.map(([t]) => t), cfg.waitPeers - waiting.length)
        wait = true
      }
      for (const t of asks) {
        const out = t.request(now, { block, wait })
        const asked = this._inflight.get(block)
        if (asked) asked.push([t, out])
        else this._inflight.set(block, [[t, out]])
        this._markChecks(out)
        if (t.inflight.size >= limit) {
          ready.splice(ready.indexOf(t), 1)
          if (!ready.length) return
        }
      }
    }
    this._unavailable = unavailable
  }

  /** The peer to ask for a block among those with room: one that has it, viewers before the
   *  writer (that keeps the writer's upload flat), then the least loaded; random among equals. */
  _pick (block, now, ready, exclude = null) {
    let best = null
    let bestKey = null
    for (const s of ready) {
      if (s === exclude || !s.remoteHas.has(block)) continue
      if (this._blocked(s, block, now)) continue
      const key = [s.remoteIsWriter ? 1 : 0, s.inflight.size, this._rand()]
      if (bestKey === null || lexLess(key, bestKey)) {
        best = s
        bestKey = key
      }
    }
    return best
  }

  /** Whether a peer keeping one of our waiting requests for `block` announced it: its answer is
   *  coming, so our waiting requests at the others are cancelled (core/scheduler.py). */
  _oneWaiterHolds (block, entries) {
    const kept = entries.find(([t]) => t.remoteHas.has(block))
    if (!kept) return false
    this._withdraw(block, entries, kept[1])
    return true
  }

  /** Cancel and forget these requests for `block`, all but `kept`. */
  _withdraw (block, entries, kept = null) {
    for (const [t, o] of entries) {
      if (o !== kept) {
        t.cancel(o)
        this._forget(block, t, o)
      }
    }
  }

  /** The peers to ask for a block nobody near holds yet, to wait for it there: the `count` that
   *  usually get new blocks earliest, among those with room that did not refuse it lately and do
   *  not keep a waiting request of ours for it already; random among equals. */
  _pickWaits (block, now, ready, waiting, count) {
    const keyed = []
    for (const s of ready) {
      if (waiting.includes(s) || this._blocked(s, block, now) || this._blocked(s, WAIT_KEY, now)) continue
      keyed.push([[-(this._lead.get(s) || 0), this._rand()], s])
    }
    keyed.sort((x, y) => (lexLess(x[0], y[0]) ? -1 : lexLess(y[0], x[0]) ? 1 : 0))
    return keyed.slice(0, count).map(([, s]) => s)
  }

  _markChecks (out) {
    const cfg = this.config
    const usual = this._answerTime
    out.checkAt = out.sentAt + Math.max(cfg.lateAfter, 3 * usual)
    if (out.block !== null) {
      const deadline = this._deadline(out.block)
      if (deadline !== null) {
        const soon = Math.max(out.sentAt + 2 * usual, deadline - cfg.deadlineMargin)
        out.checkAt = Math.min(out.checkAt, soon)
      }
    }
  }

  _forget (block, s, out) {
    const entries = this._inflight.get(block)
    if (!entries) return []
    const rest = entries.filter(([, o]) => o !== out)
    if (rest.length) this._inflight.set(block, rest)
    else this._inflight.delete(block)
    return rest
  }

  // ------------------------------------------------------------ timers

  /** When handleTimer must run next (seconds), or null. */
  getTimer () {
    const timeout = this.config.requestTimeout
    let best = null
    const consider = (t) => { if (best === null || t < best) best = t }
    for (const entries of this._inflight.values()) {
      for (const [, out] of entries) {
        consider(out.late ? out.sentAt + timeout : Math.min(out.checkAt, out.sentAt + timeout))
      }
    }
    if (this._upgrade !== null) consider(this._upgrade[1].sentAt + timeout)
    for (const m of this._refusals.values()) {
      for (const [key, until] of m) if (key < 0 || !this.feed.has(key)) consider(until)
    }
    return best
  }

  handleTimer (now) {
    const timeout = this.config.requestTimeout
    for (const [block, entries] of [...this._inflight]) {
      for (const [s, out] of [...entries]) {
        if (now >= out.sentAt + timeout) {
          this.totals.timeouts++
          s.cancel(out)
          this._forget(block, s, out)
          if (this._upgrade !== null && this._upgrade[1] === out) this._upgrade = null
          this._refuse(s, block, now + timeout)
        } else if (!out.late && now >= out.checkAt) {
          this._rerequest(block, s, out, now)
        }
      }
    }
    if (this._upgrade !== null) {
      const [s, out] = this._upgrade
      if (now >= out.sentAt + timeout) {
        this.totals.timeouts++
        s.cancel(out)
        this._upgrade = null
        this._refuse(s, -1, now + timeout)
      }
    }
    for (const [s, m] of [...this._refusals]) {
      for (const [key, until] of [...m]) {
        if (until <= now) {
          m.delete(key)
          this._refusalCount--
        }
      }
      if (!m.size) this._refusals.delete(s)
    }
    this.schedule(now)
  }

  _rerequest (block, s, out, now) {
    if (this.feed.has(block) || block >= this.feed.length) {
      out.late = true
      return
    }
    const ready = this.sessions.filter((t) => this._capacity(t) && t.remoteFork === this.feed.fork)
    const other = this._pick(block, now, ready, s)
    if (other === null) {
      out.checkAt = now + this.config.busyBackoff // nobody else has it yet: look again shortly
      return
    }
    out.late = true
    const second = other.request(now, { block })
    second.late = true
    if (!this._inflight.has(block)) this._inflight.set(block, [])
    this._inflight.get(block).push([other, second])
    this.totals.rerequests++
  }

  // ------------------------------------------------------------ called by sessions

  /** May we answer a block request now? false: the session answers busy. A new block no other
   *  viewer near us holds may take one queue place more (rarest first, as core/admission.py). */
  _admitUpload (s, block, now) {
    const cfg = this.config
    const queued = this._uploadsWaiting
    const hot = block >= this.feed.length - this.blocks(cfg.hotWindow)
    const limit = hot ? cfg.maxQueuedRelays : cfg.maxQueuedHistory
    const rarest = hot && queued === limit && !this.sessions.some(
      (t) => t !== s && !t.remoteIsWriter && t.remoteHas.has(block))
    if (queued >= limit && !rarest) {
      this.totals.uploads_refused++
      return false
    }
    this._uploadsWaiting++
    return true
  }

  _uploadStarted () { this._uploadsWaiting-- }
  _uploadDropped (block) { this._uploadsWaiting-- }

  _blockUploaded (s, block, size) {}

  /** A Data answering one of our requests: verified (ProofError drops the peer), then stored,
   *  then announced to every other peer. */
  async _data (s, out, data, stale, now) {
    const feed = this.feed
    if (this._upgrade !== null && this._upgrade[1] === out) this._upgrade = null
    if (out.block !== null) this._forget(out.block, s, out)
    if (stale && data.upgrade && data.upgrade.start !== feed.length) return // overtaken
    const oldLength = feed.length
    const result = await feed.verifyAndApply(data)
    if (result.outdated) return
    if (feed.length > oldLength) {
      for (let b = Math.max(oldLength, feed.length - REVEALED_MEMORY); b < feed.length; b++) this._revealed.set(b, now)
      while (this._revealed.size > REVEALED_MEMORY) this._revealed.delete(this._revealed.keys().next().value)
      s._emit({ type: 'upgraded', length: feed.length })
      for (const t of this.sessions) t.announceLength()
    }
    if (!data.block) {
      if (out.block !== null) {
        // The peer sent the upgrade but declined the block: it is busy.
        s.stats.refused++
        this._refuse(s, out.block, now + this.config.busyBackoff)
      }
      return
    }
    const block = data.block.index
    const size = data.block.value.length
    if (!stale) this._answerTime += 0.1 * (now - out.sentAt - this._answerTime)
    if (result.block === null) {
      this.totals.duplicates++
      this.totals.duplicate_bytes += size
      s.stats.duplicates++
      return
    }
    s.stats.blocks_down++
    s.stats.block_bytes_down += size
    if (s.remoteIsWriter) {
      this.totals.blocks_from_writer++
      this.totals.block_bytes_from_writer += size
    } else {
      this.totals.blocks_from_peers++
      this.totals.block_bytes_from_peers += size
    }
    s._emit({ type: 'block', index: block, fromWriter: s.remoteIsWriter })
    for (const [t, other] of this._inflight.get(block) || []) {
      t.cancel(other)
      if (this._upgrade !== null && this._upgrade[1] === other) this._upgrade = null
    }
    this._inflight.delete(block)
    for (const t of this.sessions) {
      if (t !== s && !t.remoteHas.has(block)) t.announce(block, block + 1)
      t.verified(block, now)
      // Who gets new blocks early: how long before us each neighbour announced this one.
      const at = t.announced.get(block)
      const value = at === undefined ? 0 : now - at
      const old = this._lead.get(t)
      this._lead.set(t, old === undefined ? value : old + LEAD_WEIGHT * (value - old))
    }
  }

  _refused (s, out, busy, now) {
    const backoff = busy ? this.config.busyBackoff : this.config.missingBackoff
    if (this._upgrade !== null && this._upgrade[1] === out) {
      this._upgrade = null
      this._refuse(s, -1, now + backoff)
    }
    if (out.block !== null) {
      this._forget(out.block, s, out)
      if (out.wait && !busy) {
        // It keeps no waiting requests (or gave this one up): none to it for a while, but the
        // block may still be asked of it normally once it announces it.
        this._refuse(s, WAIT_KEY, now + backoff)
      } else {
        this._refuse(s, out.block, now + backoff)
        if (!busy) s.remoteHas.remove(out.block, out.block + 1)
      }
    }
  }

  _sessionClosed (s) {
    const i = this.sessions.indexOf(s)
    if (i >= 0) this.sessions.splice(i, 1)
    for (const k of ['bytes_up', 'bytes_down', 'blocks_up', 'block_bytes_up']) this._closed[k] += s.stats[k]
    for (const [block, entries] of [...this._inflight]) {
      for (const [t, out] of entries) if (t === s) this._forget(block, t, out)
    }
    if (this._upgrade !== null && this._upgrade[0] === s) this._upgrade = null
    this._lead.delete(s)
    const m = this._refusals.get(s)
    if (m) {
      this._refusalCount -= m.size
      this._refusals.delete(s)
    }
  }

  /** Forget block values start..end-1 to bound memory, and tell every peer. */
  evict (start, end) {
    this.feed.evict(start, end)
    for (const s of this.sessions) s.announceDrop(start, end)
  }

  // ------------------------------------------------------------ stats

  /** Neighbours with an open session. */
  get peers () {
    return this.sessions.filter((s) => s.isOpen).length
  }

  get writerConnected () {
    return this.sessions.some((s) => s.isOpen && s.remoteIsWriter)
  }

  _traffic () {
    let up = this._closed.bytes_up
    let down = this._closed.bytes_down
    for (const s of this.sessions) {
      up += s.stats.bytes_up
      down += s.stats.bytes_down
    }
    return [up, down]
  }

  _sample (now) {
    if (this._rates.due(now)) this._rates.sample(now, ...this._traffic())
  }

  /** What this node replicated so far, as core/stats.py's ReplicationStats.as_json(). */
  stats (now = null) {
    if (now !== null) this._sample(now)
    const t = this.totals
    const out = {
      peers: this.peers,
      writer_connected: this.writerConnected,
      bytes_up: this._closed.bytes_up,
      bytes_down: this._closed.bytes_down,
      up_rate: 0,
      down_rate: 0,
      blocks_up: this._closed.blocks_up,
      block_bytes_up: this._closed.block_bytes_up,
      blocks_from_writer: t.blocks_from_writer,
      blocks_from_peers: t.blocks_from_peers,
      block_bytes_from_writer: t.block_bytes_from_writer,
      block_bytes_from_peers: t.block_bytes_from_peers,
      duplicates: t.duplicates,
      duplicate_bytes: t.duplicate_bytes,
      rerequests: t.rerequests,
      timeouts: t.timeouts,
      uploads_refused: t.uploads_refused,
      // A broadcaster's copies past its budget (core/admission.py): a tab is never the writer.
      writer_copies_alone: 0,
      writer_copies_demanded: 0,
      peers_dropped: t.peers_dropped,
      inflight: [...this._inflight.values()].reduce((n, e) => n + e.length, 0),
      unavailable: this._unavailable,
      // The swarm-safety figures of core/stats.py (backfill): a tab keeps no history for the
      // swarm's sake, so it reports none; `evicted` is filled in by the PeerSet.
      keep: 0,
      replicated_share: 0,
      rarest_copies: 0,
      unreplicated_blocks: 0,
      backfill_requests: 0,
      evicted: 0,
      // core/stats.py's live push keys (core/relay.py): a tab neither pushes nor subscribes.
      pushes_sent: 0,
      pushes_received: 0,
      push_children: 0,
      push_parent: false,
      parent_switches: 0,
      swarm_short: false,
      upload_capacity_ratio: null,
      share_from_peers: shareFromPeers(t.block_bytes_from_writer, t.block_bytes_from_peers),
      neighbours: [],
    }
    ;[out.up_rate, out.down_rate] = this._rates.rates
    for (const s of this.sessions) {
      for (const k of ['bytes_up', 'bytes_down', 'blocks_up', 'block_bytes_up']) out[k] += s.stats[k]
      out.neighbours.push({ name: s.name, is_writer: s.remoteIsWriter, remote_length: s.remoteLength, ...s.stats })
    }
    return out
  }
}
