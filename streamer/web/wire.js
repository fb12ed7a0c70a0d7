// Our replication wire, byte for byte as streamer/core/wire.py and streamer/net/rtc.py speak it.
//
// One job: messages <-> bytes. A message is `uint type | payload` (hypercore's channel messages,
// types 0-9, plus 10 = our handshake with an optional writer signature); a data-channel binary
// message is `u8 more | bytes` (at most 64 KiB, reassembled up to 8 MiB); data-channel *text*
// messages are flow control ("c<n>" grants n bytes of receive window, "p" is a keepalive).
// Messages are plain objects with a `type` name; byte fields are Uint8Arrays.

import { Reader, WireError, Writer } from './encoding.js'

export { WireError }

export const SYNC = 0
export const REQUEST = 1
export const CANCEL = 2
export const DATA = 3
export const NO_DATA = 4
export const WANT = 5
export const UNWANT = 6
export const BITFIELD = 7
export const RANGE = 8
export const EXTENSION = 9
export const HANDSHAKE = 10
export const SUBSCRIBE = 11 // live push (our extension): docs/wire.md "11. subscribe"

export const TYPE_NAMES = [
  'sync', 'request', 'cancel', 'data', 'noData', 'want', 'unwant', 'bitfield', 'range',
  'extension', 'handshake', 'subscribe',
]

const MAX_NAME = 256 // bytes of an extension name
const NODE_MIN_BYTES = 34 // uint index + uint size + 32-byte hash: bounds node array counts
const BAD = '; the peer sent a bad message'

// ---------------------------------------------------------------- encoders

function writeNodes (w, nodes) {
  w.uint(nodes.length)
  for (const n of nodes) {
    w.uint(n.index)
    w.uint(n.size)
    w.fixed(n.hash, 32)
  }
}

const ENCODERS = {
  sync (w, m) {
    w.uint((m.canUpgrade !== false ? 1 : 0) | (m.uploading !== false ? 2 : 0) |
      (m.downloading !== false ? 4 : 0) | (m.hasManifest ? 8 : 0) | (m.allowPush ? 16 : 0))
    w.uint(m.fork)
    w.uint(m.length)
    w.uint(m.remoteLength)
  },
  request (w, m) {
    w.uint((m.block ? 1 : 0) | (m.hash ? 2 : 0) | (m.seek ? 4 : 0) | (m.upgrade ? 8 : 0) |
      (m.manifest ? 16 : 0) | (m.priority ? 32 : 0) | (m.wait ? 64 : 0))
    w.uint(m.id)
    w.uint(m.fork)
    if (m.block) { w.uint(m.block.index); w.uint(m.block.nodes) }
    if (m.hash) { w.uint(m.hash.index); w.uint(m.hash.nodes) }
    if (m.seek) { w.uint(m.seek.bytes); w.uint(m.seek.padding || 0) }
    if (m.upgrade) { w.uint(m.upgrade.start); w.uint(m.upgrade.length) }
    if (m.priority) w.uint(m.priority)
  },
  cancel (w, m) {
    w.uint(m.request)
  },
  data (w, m) {
    w.uint((m.block ? 1 : 0) | (m.hash ? 2 : 0) | (m.seek ? 4 : 0) | (m.upgrade ? 8 : 0) |
      (m.manifest && m.manifest.length ? 16 : 0))
    w.uint(m.request)
    w.uint(m.fork)
    if (m.block) {
      w.uint(m.block.index)
      w.buffer(m.block.value)
      writeNodes(w, m.block.nodes)
    }
    if (m.hash) { w.uint(m.hash.index); writeNodes(w, m.hash.nodes) }
    if (m.seek) { w.uint(m.seek.bytes); writeNodes(w, m.seek.nodes) }
    if (m.upgrade) {
      const u = m.upgrade
      w.uint(u.start)
      w.uint(u.length)
      writeNodes(w, u.nodes)
      writeNodes(w, u.additionalNodes)
      w.buffer(u.signature || new Uint8Array(0))
    }
    if (m.manifest && m.manifest.length) w.raw(m.manifest)
  },
  noData (w, m) {
    w.uint(m.request)
    if (m.reason) {
      w.uint(1)
      w.uint(m.reason)
    } else {
      w.uint(0)
    }
  },
  want (w, m) {
    w.uint(m.start)
    w.uint(m.length)
    if (m.any) w.uint(1)
  },
  bitfield (w, m) {
    w.uint(m.start)
    w.uint(m.bitfield.length)
    for (const word of m.bitfield) w.uint32le(word)
  },
  range (w, m) {
    const one = m.length === 1
    w.uint((m.drop ? 1 : 0) | (one ? 2 : 0))
    w.uint(m.start)
    if (!one) w.uint(m.length)
  },
  extension (w, m) {
    const name = new TextEncoder().encode(m.name)
    if (name.length > MAX_NAME) throw new RangeError(`extension name longer than ${MAX_NAME} bytes`)
    w.buffer(name)
    w.raw(m.message)
  },
  handshake (w, m) {
    const writer = m.writerSignature != null
    w.uint((m.seeks !== false ? 1 : 0) | (writer ? 2 : 0))
    w.fixed(m.capability, 32)
    if (writer) w.fixed(m.writerSignature, 64)
  },
}
// subscribe: {on, start, answer, depth}: flags 1 subscribe from start, 0 stop, 3 accepted from
// start, 2 refused or stopped, 4 depth notice (value = depth).
ENCODERS.subscribe = (w, m) => {
  if (m.depth !== null && m.depth !== undefined) {
    w.uint(4)
    w.uint(m.depth)
  } else {
    w.uint((m.on ? 1 : 0) | (m.answer ? 2 : 0))
    w.uint(m.on ? m.start : 0)
  }
}
ENCODERS.unwant = ENCODERS.want

/** The message body without the type prefix. */
export function encodePayload (msg) {
  const enc = ENCODERS[msg.type]
  if (!enc) throw new TypeError(`not a wire message: ${msg.type}`)
  const size = msg.type === 'data' && msg.block ? msg.block.value.length + 512 : 64
  const w = new Writer(size)
  enc(w, msg)
  return w.finish()
}

/** `uint type | payload` for one message on our channel. */
export function encodeMessage (msg) {
  const enc = ENCODERS[msg.type]
  if (!enc) throw new TypeError(`not a wire message: ${msg.type}`)
  const size = msg.type === 'data' && msg.block ? msg.block.value.length + 512 : 64
  const w = new Writer(size)
  w.uint(TYPE_NAMES.indexOf(msg.type))
  enc(w, msg)
  return w.finish()
}

// ---------------------------------------------------------------- decoders

function readNodes (r) {
  const n = r.count(NODE_MIN_BYTES)
  const out = new Array(n)
  for (let i = 0; i < n; i++) {
    const index = r.uint()
    const size = r.uint()
    out[i] = { index, size, hash: r.fixed(32) }
  }
  return out
}

function readWant (r, type) {
  const start = r.uint()
  const length = r.uint()
  // The flags field is only present when non-zero (older peers never send it).
  const flags = r.remaining > 0 ? r.uint() : 0
  return { type, start, length, any: Boolean(flags & 1) }
}

const DECODERS = [
  function sync (r) {
    const flags = r.uint()
    return {
      type: 'sync',
      fork: r.uint(),
      length: r.uint(),
      remoteLength: r.uint(),
      canUpgrade: Boolean(flags & 1),
      uploading: Boolean(flags & 2),
      downloading: Boolean(flags & 4),
      hasManifest: Boolean(flags & 8),
      allowPush: Boolean(flags & 16),
    }
  },
  function request (r) {
    const flags = r.uint()
    const m = {
      type: 'request', id: r.uint(), fork: r.uint(), block: null, hash: null, seek: null,
      upgrade: null, manifest: false, priority: 0, wait: false,
    }
    if (flags & 1) m.block = { index: r.uint(), nodes: r.uint() }
    if (flags & 2) m.hash = { index: r.uint(), nodes: r.uint() }
    if (flags & 4) m.seek = { bytes: r.uint(), padding: r.uint() }
    if (flags & 8) m.upgrade = { start: r.uint(), length: r.uint() }
    m.manifest = Boolean(flags & 16)
    if (flags & 32) m.priority = r.uint()
    // A waiting request (flag 64): kept until the block verifies here (session.js, verified).
    m.wait = Boolean(flags & 64)
    return m
  },
  function cancel (r) {
    return { type: 'cancel', request: r.uint() }
  },
  function data (r) {
    const flags = r.uint()
    const m = {
      type: 'data', request: r.uint(), fork: r.uint(), block: null, hash: null, seek: null,
      upgrade: null, manifest: null,
    }
    if (flags & 1) {
      const index = r.uint()
      const value = r.buffer()
      m.block = { index, value, nodes: readNodes(r) }
    }
    if (flags & 2) m.hash = { index: r.uint(), nodes: readNodes(r) }
    if (flags & 4) m.seek = { bytes: r.uint(), nodes: readNodes(r) }
    if (flags & 8) {
      const start = r.uint()
      const length = r.uint()
      const nodes = readNodes(r)
      const additionalNodes = readNodes(r)
      m.upgrade = { start, length, nodes, additionalNodes, signature: r.buffer() }
    }
    if (flags & 16) {
      // The manifest is the last field; we carry its encoding opaquely.
      m.manifest = r.rest()
      if (!m.manifest.length) throw new WireError('data message flags a manifest but carries none' + BAD)
    }
    return m
  },
  function noData (r) {
    const request = r.uint()
    const flags = r.uint()
    return { type: 'noData', request, reason: flags & 1 ? r.uint() : null }
  },
  (r) => readWant(r, 'want'),
  (r) => readWant(r, 'unwant'),
  function bitfield (r) {
    const start = r.uint()
    const n = r.count(4)
    const words = new Array(n)
    for (let i = 0; i < n; i++) words[i] = r.uint32le()
    return { type: 'bitfield', start, bitfield: words }
  },
  function range (r) {
    const flags = r.uint()
    const start = r.uint()
    const length = flags & 2 ? 1 : r.uint()
    return { type: 'range', start, length, drop: Boolean(flags & 1) }
  },
  function extension (r) {
    const raw = r.buffer()
    if (raw.length > MAX_NAME) throw new WireError(`extension name longer than ${MAX_NAME} bytes` + BAD)
    let name
    try {
      name = new TextDecoder('utf-8', { fatal: true }).decode(raw)
    } catch {
      throw new WireError('extension name is not UTF-8' + BAD)
    }
    return { type: 'extension', name, message: r.rest() }
  },
  function handshake (r) {
    const flags = r.uint()
    const capability = r.fixed(32)
    const writerSignature = flags & 2 ? r.fixed(64) : null
    return { type: 'handshake', capability, seeks: Boolean(flags & 1), writerSignature }
  },
  function subscribe (r) {
    const flags = r.uint()
    const value = r.uint()
    if (flags === 4) return { type: 'subscribe', on: false, start: 0, answer: false, depth: value }
    if (flags > 3 || (!(flags & 1) && value !== 0)) throw new WireError(`bad subscribe flags ${flags}` + BAD)
    return { type: 'subscribe', on: Boolean(flags & 1), start: flags & 1 ? value : 0, answer: Boolean(flags & 2), depth: null }
  },
]

/** Decode one message body of a known type; WireError on anything malformed. */
export function decodePayload (type, bytes, start = 0) {
  if (!(type >= 0 && type < DECODERS.length)) {
    throw new WireError(`unknown message type ${type}; the peer speaks another protocol version`)
  }
  const r = new Reader(bytes, start)
  const msg = DECODERS[type](r)
  r.done()
  return msg
}

/** Decode `uint type | payload`; WireError on anything malformed, never another exception. */
export function decodeMessage (bytes) {
  if (!(bytes instanceof Uint8Array)) throw new WireError('a wire message must be bytes')
  const r = new Reader(bytes)
  const type = r.uint()
  return decodePayload(type, bytes, r.pos)
}

// ---------------------------------------------------------------- framing

export const MAX_CHUNK = 64 * 1024 // bytes per data-channel message, header included
export const MAX_MESSAGE = 8 * 1024 * 1024
const MORE = 0x01 // chunk header: more chunks of this message follow
const LAST = 0x00 // chunk header: this chunk completes the message

/** Splits encoded messages into data-channel chunks of at most chunkSize bytes each. */
export class Framer {
  constructor (chunkSize = MAX_CHUNK, maxMessage = MAX_MESSAGE) {
    if (chunkSize < 2) throw new RangeError('chunkSize must allow at least one payload byte')
    this.chunkSize = chunkSize
    this.maxMessage = maxMessage
  }

  frame (message) {
    if (message.length > this.maxMessage) {
      throw new RangeError(`message of ${message.length} bytes exceeds ${this.maxMessage}`)
    }
    const step = this.chunkSize - 1
    const chunks = []
    for (let off = 0; off === 0 || off < message.length; off += step) {
      const end = Math.min(off + step, message.length)
      const chunk = new Uint8Array(1 + end - off)
      chunk[0] = end < message.length ? MORE : LAST
      chunk.set(message.subarray(off, end), 1)
      chunks.push(chunk)
    }
    return chunks
  }
}

/** Joins chunks back into whole messages; WireError on a bad header or an oversized message. */
export class Reassembler {
  constructor (chunkSize = MAX_CHUNK, maxMessage = MAX_MESSAGE) {
    this.chunkSize = chunkSize
    this.maxMessage = maxMessage
    this._parts = []
    this._size = 0
  }

  /** Take one data-channel message; return the messages it completes (zero or one).
   *  After a WireError the partial message is dropped, so the next chunk starts afresh. */
  feed (chunk) {
    try {
      return this._feed(chunk)
    } catch (e) {
      this._parts = []
      this._size = 0
      throw e
    }
  }

  _feed (chunk) {
    if (!chunk.length) throw new WireError('empty data-channel chunk' + BAD)
    if (chunk.length > this.chunkSize) {
      throw new WireError(`chunk of ${chunk.length} bytes exceeds ${this.chunkSize}` + BAD)
    }
    const head = chunk[0]
    if (head !== MORE && head !== LAST) {
      throw new WireError(`unknown chunk header ${head}; the peer speaks another protocol version`)
    }
    this._size += chunk.length - 1
    if (this._size > this.maxMessage) {
      throw new WireError(`message exceeds ${this.maxMessage} bytes` + BAD)
    }
    this._parts.push(chunk.slice(1))
    if (head === MORE) return []
    const parts = this._parts
    this._parts = []
    this._size = 0
    if (parts.length === 1) return [parts[0]]
    const msg = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
    let o = 0
    for (const p of parts) { msg.set(p, o); o += p.length }
    return [msg]
  }
}

// ---------------------------------------------------------------- flow control (rtc.py)

export const MESSAGE_OVERHEAD = 64 // credit charged per binary message on top of its length
export const DEFAULT_WINDOW = 4 * 1024 * 1024 // bytes a receiver buffers before its sender waits
export const KEEPALIVE_S = 5
export const IDLE_TIMEOUT_S = 20
export const HIGH_WATER_DEFAULT = 1024 * 1024 // transport bytes queued above which senders wait

/** What one binary message of `size` bytes counts against a receive window (both ends agree). */
export function messageCost (size) {
  return size + MESSAGE_OVERHEAD
}

/**
 * The credit and keepalive rules of one data channel, sans-IO (time in seconds passed in).
 * Binary messages cost messageCost(size) of the window; the receiver grants consumed bytes back
 * with a text "c<n>" once a quarter of the window is consumed; "p" keeps an idle channel alive;
 * a channel silent for IDLE_TIMEOUT_S is dead.
 */
export class FlowControl {
  constructor ({ window = DEFAULT_WINDOW, keepalive = KEEPALIVE_S, idleTimeout = IDLE_TIMEOUT_S, now = 0 } = {}) {
    if (window < 2 * messageCost(MAX_CHUNK)) {
      throw new RangeError('the receive window must hold at least two full messages')
    }
    this.window = window
    this.credit = window // bytes we may still send
    this.allowance = window // bytes the peer may still send before we grant more
    this.unreported = 0 // bytes we consumed and have not granted back
    this.keepalive = keepalive
    this.idleTimeout = idleTimeout
    this.lastRecv = now
    this.lastSend = now
  }

  /** Whether a binary message of `size` bytes may be sent now. */
  canSend (size) {
    return messageCost(size) <= this.credit
  }

  /** Record a binary message we sent. */
  sent (size, now) {
    this.credit -= messageCost(size)
    this.lastSend = now
  }

  /** Record a text message we sent (a grant or a keepalive). */
  sentText (now) {
    this.lastSend = now
  }

  /** Record a binary message from the peer; an Error if it overran its window (drop it). */
  received (size, now) {
    this.lastRecv = now
    this.allowance -= messageCost(size)
    return this.allowance < 0 ? new Error('peer overran its receive window') : null
  }

  /** Our reader took a message of `size` bytes: the grant text to send now, or null. */
  consumed (size) {
    this.unreported += messageCost(size)
    if (this.unreported < this.window / 4) return null
    const grant = this.unreported
    this.unreported = 0
    this.allowance += grant
    return `c${grant}`
  }

  /** A text message from the peer; an Error if it is a bad grant (drop the peer). */
  control (text, now) {
    this.lastRecv = now
    if (text.startsWith('c')) {
      const grant = /^c[0-9]+$/.test(text) ? Number(text.slice(1)) : -1
      if (!(grant > 0 && grant <= this.window)) return new Error('peer sent a bad window grant')
      this.credit += grant
    }
    return null // "p" and anything else only prove the peer is alive
  }

  /**
   * Periodic check: 'idle' if the peer is dead, 'p' if a keepalive is due, else null. Silence is
   * counted in time we were awake (as core/credit.py): a keepalive of ours overdue by more than a
   * whole interval means this tab was held up (a background tab's throttled timers, a busy main
   * thread), and the overdue time is not held against the peer.
   */
  tick (now) {
    const overdue = now - this.lastSend - this.keepalive
    if (overdue > this.keepalive) this.lastRecv = Math.min(now, this.lastRecv + overdue)
    if (now - this.lastRecv > this.idleTimeout) return 'idle'
    if (now - this.lastSend >= this.keepalive) {
      this.lastSend = now // owed from now (as core/credit.py): a keepalive still queued is no stall
      return 'p'
    }
    return null
  }
}
