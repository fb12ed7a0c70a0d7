// compact-encoding primitives (the byte layer of Hypercore's wire) and small byte helpers.
//
// One job: read and write uint varints, fixed-size buffers, length-prefixed buffers and strings,
// arrays and little-endian integers, checking every bound of untrusted input.
// Integers are JavaScript Numbers: values above 2^53 - 1 are refused (no stream gets near them;
// Python's decoder accepts up to 2^64 - 1 but rejects such values one step later anyway).

export class WireError extends Error {
  constructor (message) {
    super(message)
    this.name = 'WireError'
  }
}

const TWO32 = 0x100000000
const BAD = '; the peer sent a bad message'

/** A growable output buffer with compact-encoding writers. */
export class Writer {
  constructor (capacity = 64) {
    this.buf = new Uint8Array(capacity)
    this.pos = 0
  }

  _room (n) {
    if (this.pos + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.pos + n) size *= 2
    const next = new Uint8Array(size)
    next.set(this.buf.subarray(0, this.pos))
    this.buf = next
  }

  u8 (n) {
    this._room(1)
    this.buf[this.pos++] = n
  }

  /** compact-encoding uint: 1, 3, 5 or 9 bytes. */
  uint (n) {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`cannot encode ${n} as a uint`)
    if (n <= 0xfc) {
      this.u8(n)
    } else if (n <= 0xffff) {
      this.u8(0xfd)
      this.uint16le(n)
    } else if (n <= 0xffffffff) {
      this.u8(0xfe)
      this.uint32le(n)
    } else {
      this.u8(0xff)
      this.uint64le(n)
    }
  }

  uint16le (n) {
    this._room(2)
    this.buf[this.pos++] = n & 0xff
    this.buf[this.pos++] = (n >>> 8) & 0xff
  }

  uint32le (n) {
    this._room(4)
    writeUint32LE(this.buf, this.pos, n)
    this.pos += 4
  }

  uint64le (n) {
    this._room(8)
    writeUint64LE(this.buf, this.pos, n)
    this.pos += 8
  }

  /** Exactly n bytes (compact-encoding fixed32 / fixed64 and the like). */
  fixed (bytes, n) {
    if (bytes.length !== n) throw new RangeError(`expected ${n} bytes, got ${bytes.length}`)
    this.raw(bytes)
  }

  /** Bytes with no length prefix. */
  raw (bytes) {
    this._room(bytes.length)
    this.buf.set(bytes, this.pos)
    this.pos += bytes.length
  }

  /** uint length | bytes. */
  buffer (bytes) {
    this.uint(bytes.length)
    this.raw(bytes)
  }

  /** uint length | utf-8 bytes. */
  string (s) {
    this.buffer(new TextEncoder().encode(s))
  }

  /** uint count | items, each written by write(writer, item). */
  array (items, write) {
    this.uint(items.length)
    for (const item of items) write(this, item)
  }

  finish () {
    return this.buf.slice(0, this.pos)
  }
}

/** A cursor over untrusted bytes; every read checks its bounds and throws WireError. */
export class Reader {
  constructor (buf, start = 0, end = buf.length) {
    this.buf = buf
    this.pos = start
    this.end = end
  }

  get remaining () {
    return this.end - this.pos
  }

  u8 () {
    if (this.pos >= this.end) throw new WireError('message truncated: expected a byte' + BAD)
    return this.buf[this.pos++]
  }

  uint () {
    const buf = this.buf
    const pos = this.pos
    if (pos >= this.end) throw new WireError('message truncated: expected an integer' + BAD)
    const a = buf[pos]
    if (a <= 0xfc) {
      this.pos = pos + 1
      return a
    }
    const width = a === 0xfd ? 2 : a === 0xfe ? 4 : 8
    if (pos + 1 + width > this.end) throw new WireError('message truncated inside an integer' + BAD)
    this.pos = pos + 1 + width
    if (width === 2) return buf[pos + 1] | (buf[pos + 2] << 8)
    if (width === 4) return readUint32LE(buf, pos + 1)
    const hi = readUint32LE(buf, pos + 5)
    if (hi > 0x1fffff) throw new WireError('integer beyond 2^53' + BAD)
    return hi * TWO32 + readUint32LE(buf, pos + 1)
  }

  uint32le () {
    if (this.end - this.pos < 4) throw new WireError('message truncated inside an integer' + BAD)
    const n = readUint32LE(this.buf, this.pos)
    this.pos += 4
    return n
  }

  /** Exactly n bytes (a copy, so the input buffer can be reused). */
  fixed (n) {
    if (this.end - this.pos < n) {
      throw new WireError(`message truncated: expected ${n} more bytes` + BAD)
    }
    const b = this.buf.slice(this.pos, this.pos + n)
    this.pos += n
    return b
  }

  buffer () {
    const n = this.uint()
    if (n > this.end - this.pos) throw new WireError('buffer length exceeds the message' + BAD)
    return this.fixed(n)
  }

  string () {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(this.buffer())
    } catch (e) {
      if (e instanceof WireError) throw e
      throw new WireError('string is not UTF-8' + BAD)
    }
  }

  /** An array count, refused when the remaining bytes cannot hold that many items. */
  count (itemMinBytes) {
    const n = this.uint()
    if (n * itemMinBytes > this.end - this.pos) {
      throw new WireError(`array of ${n} items cannot fit in the message` + BAD)
    }
    return n
  }

  /** uint count | items, each read by read(reader); itemMinBytes bounds the count. */
  array (read, itemMinBytes = 1) {
    const n = this.count(itemMinBytes)
    const out = new Array(n)
    for (let i = 0; i < n; i++) out[i] = read(this)
    return out
  }

  /** Every byte left. */
  rest () {
    const b = this.buf.slice(this.pos, this.end)
    this.pos = this.end
    return b
  }

  done () {
    if (this.pos !== this.end) {
      throw new WireError(`${this.end - this.pos} unexpected trailing bytes` + BAD)
    }
  }
}

// ---------------------------------------------------------------- byte helpers

export function readUint32LE (b, o) {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0
}

export function writeUint32LE (b, o, n) {
  b[o] = n & 0xff
  b[o + 1] = (n >>> 8) & 0xff
  b[o + 2] = (n >>> 16) & 0xff
  b[o + 3] = (n >>> 24) & 0xff
}

/** A Number up to 2^53 - 1 as 8 little-endian bytes. */
export function writeUint64LE (b, o, n) {
  writeUint32LE(b, o, n >>> 0)
  writeUint32LE(b, o + 4, Math.floor(n / TWO32) >>> 0)
}

export function uint64le (n) {
  const b = new Uint8Array(8)
  writeUint64LE(b, 0, n)
  return b
}

export function concat (parts) {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

export function equal (a, b) {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i]
  return diff === 0
}

/** Byte-wise comparison, like Python's ordering of bytes (for sorting). */
export function compare (a, b) {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] - b[i]
  }
  return a.length - b.length
}

export function toHex (b) {
  let s = ''
  for (let i = 0; i < b.length; i++) s += (b[i] < 16 ? '0' : '') + b[i].toString(16)
  return s
}

export function fromHex (s) {
  if (s.length % 2 || /[^0-9a-fA-F]/.test(s)) throw new Error('not a hex string')
  const out = new Uint8Array(s.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16)
  return out
}
