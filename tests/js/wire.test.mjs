// Wire messages: the reference encodings, round trips of every message shape, hostile input
// (truncated, trailing, random bytes), data-channel framing and the credit/keepalive rules.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { Reader, Writer, WireError, fromHex, toHex } from '../../streamer/web/encoding.js'
import * as wire from '../../streamer/web/wire.js'
import { vectors } from './helpers.mjs'

const H = new Uint8Array(32).map((_, i) => i)
const NODES = [
  { index: 2, size: 1, hash: H },
  { index: 5, size: 70000, hash: new Uint8Array(32) },
  { index: 2 ** 40, size: Number.MAX_SAFE_INTEGER, hash: new Uint8Array(32).fill(255) },
]

function req (fields) {
  return { type: 'request', block: null, hash: null, seek: null, upgrade: null, manifest: false, priority: 0, wait: false, ...fields }
}
function data (fields) {
  return { type: 'data', block: null, hash: null, seek: null, upgrade: null, manifest: null, ...fields }
}
function sync (fork, length, remoteLength, flags = {}) {
  return {
    type: 'sync', fork, length, remoteLength, canUpgrade: true, uploading: true, downloading: true,
    hasManifest: false, allowPush: false, ...flags,
  }
}

export const SAMPLES = [
  sync(0, 8, 5),
  sync(3, 2 ** 33, 0, { canUpgrade: false, uploading: false, downloading: false, hasManifest: true, allowPush: true }),
  req({ id: 1, fork: 0, block: { index: 2, nodes: 0 }, upgrade: { start: 0, length: 8 } }),
  req({ id: 7, fork: 2, hash: { index: 9, nodes: 3 }, seek: { bytes: 1000, padding: 4 }, manifest: true, priority: 5 }),
  req({ id: 0xffff, fork: 0 }),
  req({ id: 4, fork: 0, block: { index: 12, nodes: 2 }, wait: true }),
  { type: 'cancel', request: 1 },
  { type: 'cancel', request: 2 ** 50 },
  data({ request: 1, fork: 0, block: { index: 3, value: new TextEncoder().encode('hello'), nodes: NODES } }),
  data({
    request: 2, fork: 1, hash: { index: 9, nodes: NODES.slice(0, 1) },
    upgrade: { start: 0, length: 8, nodes: NODES, additionalNodes: NODES.slice(0, 2), signature: new Uint8Array(64) },
  }),
  data({ request: 3, fork: 0, seek: { bytes: 123456, nodes: [] }, upgrade: { start: 4, length: 4, nodes: [], additionalNodes: [], signature: new Uint8Array(0) } }),
  data({ request: 4, fork: 0, block: { index: 0, value: new Uint8Array(70000), nodes: [] } }),
  { type: 'noData', request: 1, reason: null },
  { type: 'noData', request: 2, reason: 3 },
  { type: 'want', start: 0, length: 1024, any: false },
  { type: 'want', start: 5, length: 1, any: true },
  { type: 'unwant', start: 7, length: 300, any: false },
  { type: 'bitfield', start: 0, bitfield: [0xff] },
  { type: 'bitfield', start: 4096, bitfield: [0, 0xffffffff, 12345] },
  { type: 'range', start: 0, length: 8, drop: false },
  { type: 'range', start: 9, length: 1, drop: true },
  { type: 'extension', name: 'swarmcast/hello', message: new Uint8Array([0, 1, 2]) },
  { type: 'extension', name: '', message: new Uint8Array(0) },
  { type: 'handshake', capability: H, seeks: true, writerSignature: null },
  { type: 'handshake', capability: H, seeks: false, writerSignature: new Uint8Array(64).map((_, i) => i) },
  data({ request: 5, fork: 0, manifest: new Uint8Array([1, 0, 0]) }),
]

test('reference payload encodings of hypercore messages', () => {
  const ex = vectors.wire_examples
  const cases = {
    sync: sync(0, 8, 5),
    request_block_upgrade: req({ id: 1, fork: 0, block: { index: 2, nodes: 0 }, upgrade: { start: 0, length: 8 } }),
    want: { type: 'want', start: 0, length: 1024, any: false },
    range: { type: 'range', start: 0, length: 8, drop: false },
    bitfield: { type: 'bitfield', start: 0, bitfield: [0xff] },
    noData: { type: 'noData', request: 1, reason: null },
    handshake: { type: 'handshake', capability: fromHex(vectors.replication_capability.initiator), seeks: true, writerSignature: null },
  }
  for (const [name, msg] of Object.entries(cases)) {
    assert.equal(toHex(wire.encodePayload(msg)), ex[name], name)
    assert.deepEqual(wire.decodePayload(wire.TYPE_NAMES.indexOf(msg.type), fromHex(ex[name])), msg, name)
  }
})

test('every sample round-trips, and every truncation or extra byte is a WireError', () => {
  for (const msg of SAMPLES) {
    const bytes = wire.encodeMessage(msg)
    assert.deepEqual(wire.decodeMessage(bytes), msg, msg.type)
    if (bytes.length > 5000) continue
    for (let cut = 0; cut < bytes.length; cut++) {
      let decoded = null
      try {
        decoded = wire.decodeMessage(bytes.slice(0, cut))
      } catch (e) {
        assert.ok(e instanceof WireError, `${msg.type} cut at ${cut}: ${e}`)
        continue
      }
      // Messages whose last field is optional or opaque may still decode when cut.
      assert.ok(['want', 'unwant', 'extension', 'data'].includes(decoded.type), `${msg.type} cut at ${cut}`)
    }
    const longer = new Uint8Array([...bytes, 0])
    if (!['extension', 'want', 'unwant'].includes(msg.type) && !(msg.type === 'data' && msg.manifest)) {
      assert.throws(() => wire.decodeMessage(longer), WireError, `${msg.type} + 1 byte`)
    }
  }
})

test('random bytes never throw anything but WireError', () => {
  let seed = 12345
  const rand = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed >>> 16 }
  for (let i = 0; i < 5000; i++) {
    const b = new Uint8Array(1 + (rand() % 80)).map(() => rand() & 255)
    b[0] %= 12
    try {
      wire.decodeMessage(b)
    } catch (e) {
      assert.ok(e instanceof WireError, String(e))
    }
  }
  assert.throws(() => wire.decodeMessage(new Uint8Array([11])), WireError)
  assert.throws(() => wire.decodeMessage('text'), WireError)
  // a node count the message cannot hold is refused before anything is allocated
  assert.throws(() => wire.decodeMessage(new Uint8Array([3, 2, 1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0x0f])), WireError)
})

test('uints: every width, the 2^53 bound, and refusal of negative or fractional values', () => {
  for (const n of [0, 0xfc, 0xfd, 0xffff, 0x10000, 0xffffffff, 2 ** 32, Number.MAX_SAFE_INTEGER]) {
    const w = new Writer(1)
    w.uint(n)
    const bytes = w.finish()
    assert.equal(bytes.length, n <= 0xfc ? 1 : n <= 0xffff ? 3 : n <= 0xffffffff ? 5 : 9)
    assert.equal(new Reader(bytes).uint(), n)
  }
  assert.throws(() => new Reader(fromHex('ff0000000000002000')).uint(), WireError) // 2^53
  assert.throws(() => new Writer().uint(-1), RangeError)
  assert.throws(() => new Writer().uint(1.5), RangeError)
})

test('framing: chunks of at most 64 KiB that reassemble, with the 8 MiB cap', () => {
  const framer = new wire.Framer()
  const re = new wire.Reassembler()
  for (const size of [0, 1, 65534, 65535, 65536, 200000]) {
    const msg = new Uint8Array(size).map((_, i) => i & 255)
    const chunks = framer.frame(msg)
    assert.equal(chunks.length, Math.max(1, Math.ceil(size / 65535)))
    let out = []
    chunks.forEach((c, i) => {
      assert.ok(c.length <= wire.MAX_CHUNK)
      assert.equal(c[0], i === chunks.length - 1 ? 0 : 1)
      out = re.feed(c)
      if (i < chunks.length - 1) assert.deepEqual(out, [])
    })
    assert.deepEqual(out, [msg])
  }
  assert.throws(() => re.feed(new Uint8Array(0)), WireError)
  assert.throws(() => re.feed(new Uint8Array([2, 0])), WireError)
  assert.throws(() => re.feed(new Uint8Array(65537)), WireError)
  const small = new wire.Reassembler(wire.MAX_CHUNK, 100)
  small.feed(new Uint8Array(60).fill(1))
  assert.throws(() => small.feed(new Uint8Array(60).fill(1)), WireError)
  assert.deepEqual(small.feed(new Uint8Array([0, 7])), [new Uint8Array([7])]) // starts afresh
  assert.throws(() => framer.frame(new Uint8Array(wire.MAX_MESSAGE + 1)), RangeError)
})

test('flow control: credits, grants, overruns, bad grants, keepalive and idleness', () => {
  const W = 200000
  assert.throws(() => new wire.FlowControl({ window: 1000 }), RangeError)
  const a = new wire.FlowControl({ window: W, now: 0 })
  assert.equal(a.canSend(W - 64), true)
  assert.equal(a.canSend(W - 63), false)
  a.sent(W / 2 - 64, 1)
  a.sent(W / 2 - 64, 1)
  assert.equal(a.canSend(0), false)
  assert.equal(a.control('c100000', 2), null)
  assert.equal(a.canSend(100000 - 64), true)
  assert.equal(a.canSend(100000 - 63), false)
  assert.ok(a.control('c0', 2) instanceof Error)
  assert.ok(a.control(`c${W + 1}`, 2) instanceof Error)
  assert.ok(a.control('cx', 2) instanceof Error)
  assert.equal(a.control('p', 2), null)

  const b = new wire.FlowControl({ window: W, now: 0 })
  assert.equal(b.received(20000 - 64, 1), null)
  assert.equal(b.consumed(20000 - 64), null) // 20000 < W / 4
  assert.equal(b.received(30000 - 64, 1), null)
  assert.equal(b.consumed(30000 - 64), 'c50000')
  assert.equal(b.received(W - 64, 1), null) // W - 50000 + 50000 granted back = W allowed
  assert.ok(b.received(0, 1) instanceof Error) // overran

  const c = new wire.FlowControl({ now: 0 })
  assert.equal(c.window, wire.DEFAULT_WINDOW)
  assert.equal(c.tick(4.9), null)
  assert.equal(c.tick(5), 'p')
  c.sentText(5)
  assert.equal(c.tick(9), null)
  assert.equal(c.tick(10), 'p')
  c.sentText(10)
  assert.equal(c.tick(15), 'p')
  c.sentText(15)
  assert.equal(c.tick(20.5), 'idle')

  // A tab held up from 5 (its keepalive due) to 60: only the 5 s it was awake count as silence.
  const d = new wire.FlowControl({ now: 0 })
  assert.equal(d.tick(60), 'p')
  d.sentText(60)
  for (const t of [65, 70]) {
    assert.equal(d.tick(t), 'p')
    d.sentText(t)
  }
  assert.equal(d.tick(75), 'p') // 20 s of counted silence: not yet over the idle timeout
  d.sentText(75)
  assert.equal(d.tick(75.1), 'idle')

  // A keepalive owed but not yet sent (a channel that does not drain) is no stall of ours: a
  // dead peer is still closed after the idle timeout.
  const e = new wire.FlowControl({ now: 0 })
  let verdict = null
  for (let t = 2.5; t <= 30 && verdict !== 'idle'; t += 2.5) verdict = e.tick(t)
  assert.equal(verdict, 'idle')
})
