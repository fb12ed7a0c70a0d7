// The per-message rules of a session (replication.py's), driven by hand-made messages: what a
// peer announces, what it may ask, what we answer, and what gets it dropped.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { MemoryFeed } from '../../streamer/web/feed.js'
import { RangeSet } from '../../streamer/web/ranges.js'
import { Replicator } from '../../streamer/web/replicator.js'
import { MAX_BLOCK_INDEX, MAX_REMOTE_REQUESTS, NO_DATA_BUSY, NO_DATA_MISSING } from '../../streamer/web/session.js'
import * as wire from '../../streamer/web/wire.js'
import { publicKey as key, seededFeed } from './helpers.mjs'

function frame (msg) {
  return new wire.Framer().frame(wire.encodeMessage(msg))
}

/** A session already past its handshake, and a helper to feed it messages and read its replies. */
function open (feed = seededFeed(), config = {}) {
  const rep = new Replicator(feed, { seed: 1, ...config })
  const s = rep.addSession({ name: 'peer' })
  const re = new wire.Reassembler()
  const replies = () => s.datagramsToSend(0).flatMap((c) => re.feed(c)).map(wire.decodeMessage)
  const send = async (msg) => { for (const c of frame(msg)) await s.receive(c, 0) }
  return { rep, s, send, replies }
}

const request = (id, fields) => ({ type: 'request', id, fork: 0, block: null, hash: null, seek: null, upgrade: null, manifest: false, priority: 0, ...fields })

test('on open we announce our length and every run of blocks we hold', () => {
  const { replies } = open()
  const sent = replies()
  assert.deepEqual(sent.map((m) => m.type), ['sync', 'range'])
  assert.equal(sent[0].length, 8)
  assert.deepEqual([sent[1].start, sent[1].length], [0, 8])
  const empty = open(new MemoryFeed(key)).replies()
  assert.deepEqual(empty.map((m) => [m.type, m.length]), [['sync', 0]])
})

test('ranges, drops and bitfields update what we know the peer holds', async () => {
  const { s, send } = open(new MemoryFeed(key))
  await send({ type: 'range', start: 10, length: 5, drop: false })
  await send({ type: 'range', start: 12, length: 1, drop: true })
  await send({ type: 'bitfield', start: 64, bitfield: [0b1011, 0, 0x80000000] })
  const has = (i) => s.remoteHas.has(i)
  assert.deepEqual([9, 10, 11, 12, 13, 14, 15].map(has), [false, true, true, false, true, true, false])
  assert.deepEqual([64, 65, 66, 67, 68, 159, 160].map(has), [true, true, false, true, false, true, false])
  assert.equal(s.isOpen, true)
})

test('RangeSet.firstFrom: the first held index at or after an index', () => {
  const r = new RangeSet()
  assert.equal(r.firstFrom(0), null)
  r.add(3, 5)
  r.add(8, 9)
  assert.deepEqual([0, 3, 4, 5, 8, 9].map((i) => r.firstFrom(i)), [3, 3, 4, 8, 8, null])
})

test('heldFrom: the first block at or after an index that an open neighbour announced', async () => {
  const { rep, send } = open(new MemoryFeed(key))
  const sync = { type: 'sync', fork: 0, length: 40, remoteLength: 0, canUpgrade: true, uploading: true, downloading: true }
  await send(sync)
  await send({ type: 'range', start: 10, length: 5, drop: false })
  await send({ type: 'range', start: 30, length: 10, drop: false })
  assert.deepEqual([0, 10, 14, 15, 29, 39, 40].map((i) => rep.heldFrom(i)), [10, 10, 14, 30, 30, 39, null])
  const other = rep.addSession({ name: 'other' })
  other.remoteHas.add(20, 21) // not synced: a length of 0, so what it announced counts for nothing
  assert.equal(rep.heldFrom(15), 30)
})

test('sync: the peer\'s length and fork, one event per change', async () => {
  const { s, send } = open(new MemoryFeed(key))
  const sync = (length) => ({ type: 'sync', fork: 0, length, remoteLength: 0, canUpgrade: true, uploading: true, downloading: true })
  await send(sync(5))
  await send(sync(5))
  await send(sync(9))
  const events = []
  let e
  while ((e = s.nextEvent())) events.push(e)
  assert.deepEqual(events.filter((x) => x.type === 'synced').map((x) => x.length), [5, 9])
  assert.equal(s.remoteLength, 9)
})

test('requests: served with proofs, NoData when missing, busy beyond the upload queue', async () => {
  const { s, send, replies, rep } = open(seededFeed(), { maxQueuedHistory: 1, maxQueuedRelays: 2 })
  replies()
  await send(request(1, { block: { index: 1, nodes: 0 } })) // history: queue of 1
  await send(request(2, { block: { index: 2, nodes: 0 } })) // busy
  await send(request(3, { block: { index: 9, nodes: 0 } })) // beyond our length
  await send(request(4, { hash: { index: 3, nodes: 0 } })) // hash requests are not served
  await send(request(5, { block: { index: 3, nodes: 0 }, upgrade: { start: 0, length: 8 } })) // busy: upgrade alone
  const sent = replies()
  const by = Object.fromEntries(sent.map((m) => [m.request, m]))
  assert.equal(by[2].type, 'noData')
  assert.equal(by[2].reason, NO_DATA_BUSY)
  // "missing" (0) travels as no reason at all, as hypercore peers send it
  assert.equal(by[3].reason ?? NO_DATA_MISSING, NO_DATA_MISSING)
  assert.equal(by[4].type, 'noData')
  assert.equal(by[4].reason, null)
  assert.equal(by[5].type, 'data')
  assert.equal(by[5].block, null)
  assert.equal(by[5].upgrade.length, 8)
  assert.equal(by[1].type, 'data') // the admitted upload goes out last, built when sent
  assert.equal(by[1].block.index, 1)
  assert.equal(rep.stats().uploads_refused, 2)
})

test('a cancelled upload is not sent', async () => {
  const { send, replies } = open()
  replies()
  await send(request(1, { block: { index: 1, nodes: 0 } }))
  await send({ type: 'cancel', request: 1 })
  assert.deepEqual(replies(), [])
})

test('wants, unwants and extensions are accepted and ignored', async () => {
  const { s, send, replies } = open()
  replies()
  await send({ type: 'want', start: 0, length: 8, any: false })
  await send({ type: 'unwant', start: 0, length: 8, any: false })
  await send({ type: 'extension', name: 'x', message: new Uint8Array([1]) })
  assert.equal(s.isOpen, true)
  assert.deepEqual(replies(), [])
})

test('data answering a request we gave up on long ago is ignored; never-sent ids drop the peer', async () => {
  const { s, send } = open(new MemoryFeed(key))
  const out = s.request(0, { block: 3 })
  s.inflight.delete(out.id) // as if forgotten beyond the cancelled memory
  const data = seededFeed().proof(request(out.id, { block: { index: 3, nodes: 0 }, upgrade: { start: 0, length: 8 } }))
  await send(data)
  assert.equal(s.isOpen, true)
  await send({ ...data, request: 77 })
  assert.equal(s.closed, true)
  assert.match(s.closeReason, /never sent/)
})

for (const [name, msg, reason] of [
  ['a length beyond any stream', { type: 'sync', fork: 0, length: MAX_BLOCK_INDEX + 1, remoteLength: 0 }, /beyond any stream/],
  ['a range beyond any stream', { type: 'range', start: MAX_BLOCK_INDEX, length: 2, drop: false }, /beyond any stream/],
  ['a misaligned bitfield', { type: 'bitfield', start: 3, bitfield: [1] }, /misaligned/],
  ['a handshake after the handshake', { type: 'handshake', capability: new Uint8Array(32), seeks: true, writerSignature: null }, /unexpected handshake/],
]) {
  test(`${name} gets the peer dropped`, async () => {
    const { s, send, rep } = open()
    await send(msg)
    assert.equal(s.closed, true)
    assert.match(s.closeReason, reason)
    assert.equal(rep.stats().peers_dropped, 1)
    const events = []
    let e
    while ((e = s.nextEvent())) events.push(e)
    assert.equal(events.at(-1).type, 'misbehaved')
  })
}

test('more requests waiting than allowed gets the peer dropped', async () => {
  const { s, send } = open(seededFeed(), { maxQueuedHistory: 1000, maxQueuedRelays: 1000 })
  for (let i = 0; i <= MAX_REMOTE_REQUESTS && !s.closed; i++) await send(request(i + 1, { block: { index: 1, nodes: 0 } }))
  assert.equal(s.closed, true)
  assert.match(s.closeReason, /requests waiting/)
})

test('data with a block or upgrade we did not ask for gets the peer dropped', async () => {
  for (const [asked, sent, reason] of [
    [{ block: 3 }, { block: { index: 4, nodes: 0 } }, /did not ask it for/],
    [{ block: 3 }, { block: { index: 3, nodes: 0 }, upgrade: { start: 0, length: 8 } }, /upgrade we did not ask for/],
  ]) {
    const { s, send } = open(new MemoryFeed(key))
    const out = s.request(0, asked)
    await send(seededFeed().proof(request(out.id, sent)))
    assert.equal(s.closed, true)
    assert.match(s.closeReason, reason)
  }
})

test('a handshake split over two chunks is refused: the first message must be whole', async () => {
  const rep = new Replicator(new MemoryFeed(key))
  const hs = { type: 'handshake', capability: new Uint8Array(32), seeks: true, writerSignature: null }
  const s = rep.addSession({ handshake: hs, verifyHandshake: async () => false })
  const chunks = new wire.Framer(20).frame(wire.encodeMessage(hs))
  assert.ok(chunks.length > 1)
  for (const c of chunks) await s.receive(c, 0)
  assert.equal(s.closed, true)
  assert.match(s.closeReason, /first message is not a handshake/)
})

test('live push (type 11, the relay extension): a tab declines subscriptions and bans unasked pushes', async () => {
  // The examples of docs/wire.md "11. subscribe".
  const hex = (m) => Buffer.from(wire.encodeMessage(m)).toString('hex')
  const sub = (fields) => ({ type: 'subscribe', on: false, start: 0, answer: false, depth: null, ...fields })
  assert.equal(hex(sub({ on: true, start: 5 })), '0b0105')
  assert.equal(hex(sub({ on: true, start: 300, answer: true })), '0b03fd2c01')
  assert.equal(hex(sub({})), '0b0000')
  assert.equal(hex(sub({ answer: true })), '0b0200')
  assert.equal(hex(sub({ depth: 2 })), '0b0402')
  for (const h of ['0b0105', '0b03fd2c01', '0b0000', '0b0200', '0b0402']) {
    assert.equal(hex(wire.decodeMessage(Buffer.from(h, 'hex'))), h)
  }
  for (const h of ['0b0500', '0b0001', '0b01']) assert.throws(() => wire.decodeMessage(Buffer.from(h, 'hex')), wire.WireError)

  const { s, send, replies } = open()
  replies()
  await send(sub({ depth: 0 })) // a depth notice: nothing to say
  await send(sub({ on: true, start: 5 }))
  assert.deepEqual(replies().map(hex), ['0b0200']) // refused: a tab only pulls
  assert.equal(s.closed, false)
  await send({ type: 'data', request: 0, fork: 0, block: { index: 9, value: new Uint8Array(1), nodes: [] }, hash: null, seek: null, upgrade: null, manifest: null })
  assert.equal(s.closed, true) // a push without our subscription is data we did not ask for
})

test('a waiting request for a block we lack is kept and answered when the block verifies', async () => {
  const feed = seededFeed()
  const has = feed.has.bind(feed)
  let lacking = true
  feed.has = (i) => (i === 5 && lacking ? false : has(i))
  const { s, send, replies } = open(feed, { waitRequests: false }) // we only answer here
  replies()
  await send(request(1, { block: { index: 5, nodes: 0 }, wait: true }))
  await send(request(2, { block: { index: 5, nodes: 0 } })) // not waiting: missing at once
  await send(request(3, { block: { index: 7, nodes: 0 }, wait: true })) // held: answered as usual
  await send(request(4, { block: { index: 40, nodes: 0 }, wait: true })) // too far ahead: missing
  let sent = replies()
  assert.deepEqual(sent.map((m) => [m.request, m.type]), [[2, 'noData'], [4, 'noData'], [3, 'data']])
  lacking = false
  s.verified(5, 0)
  sent = replies()
  assert.deepEqual(sent.map((m) => [m.request, m.type, m.block && m.block.index]), [[1, 'data', 5]])
  await send(request(5, { block: { index: 6, nodes: 0 }, wait: true }))
  await send({ type: 'cancel', request: 5 }) // a cancelled wait is never answered
  s.verified(6, 0)
  assert.deepEqual(replies(), [])
})

test('rarest first: a new block no other viewer near us holds takes one queue place more', async () => {
  const { rep, s, send, replies } = open(seededFeed(), { maxQueuedRelays: 1 })
  const other = rep.addSession({ name: 'other' })
  other.remoteHas.add(6, 7) // a neighbour holds block 6, nobody else holds 7
  replies()
  await send(request(1, { block: { index: 6, nodes: 0 } })) // hot, admitted: the queue is full
  await send(request(2, { block: { index: 6, nodes: 0 } })) // busy: the other neighbour has it
  await send(request(3, { block: { index: 7, nodes: 0 } })) // only we hold 7: one place more
  await send(request(4, { block: { index: 7, nodes: 0 } })) // but only one
  const by = Object.fromEntries(replies().map((m) => [m.request, m]))
  assert.equal(by[2].reason, NO_DATA_BUSY)
  assert.equal(by[4].reason, NO_DATA_BUSY)
  assert.equal(by[1].type, 'data')
  assert.equal(by[3].type, 'data')
  assert.equal(s.isOpen, true)
})

async function waitingSetup (names, waitPeers = null) {
  const feed = seededFeed()
  const has = feed.has.bind(feed)
  feed.has = (i) => (i === 7 ? false : has(i)) // we know block 7 exists (length 8) but lack it
  const rep = new Replicator(feed, waitPeers === null ? { seed: 1 } : { seed: 1, waitPeers })
  const peers = names.map((name) => {
    const s = rep.addSession({ name })
    const re = new wire.Reassembler()
    const out = () => s.datagramsToSend(0).flatMap((c) => re.feed(c)).map(wire.decodeMessage)
    const send = async (msg) => { for (const c of frame(msg)) await s.receive(c, 0) }
    return { s, out, send }
  })
  const sync = { type: 'sync', fork: 0, length: 8, remoteLength: 8, canUpgrade: true, uploading: true, downloading: true }
  for (const p of peers) p.out()
  for (const p of peers) {
    await p.send(sync)
    await p.send({ type: 'range', start: 0, length: 7, drop: false })
  }
  rep.schedule(0) // as the page does after each message
  const asked = peers.map((p) => p.out().filter((m) => m.type === 'request'))
  return { rep, peers, asked }
}

test('waiting requests: by default a new block nobody near holds waits at one neighbour', async () => {
  const { asked } = await waitingSetup(['a', 'b', 'c'])
  assert.deepEqual(asked.flat().map((m) => [m.block.index, m.wait]), [[7, true]])
})

test('waiting requests (waitPeers 2): a new block nobody near holds waits at two neighbours, and moves to one that announces it first', async () => {
  const { rep, peers, asked } = await waitingSetup(['a', 'b', 'c'], 2)
  assert.deepEqual(asked.flat().map((m) => [m.block.index, m.wait]), [[7, true], [7, true]]) // two neighbours
  assert.deepEqual(asked.map((a) => a.length).sort(), [0, 1, 1]) // each at its own
  const third = peers[asked.findIndex((a) => !a.length)]
  await third.send({ type: 'range', start: 7, length: 1, drop: false }) // the third one has it first
  rep.schedule(0)
  peers.forEach((p, i) => {
    if (p === third) return
    assert.deepEqual(p.out().map((m) => [m.type, m.request]), [['cancel', asked[i][0].id]])
  })
  assert.deepEqual(third.out().filter((m) => m.type === 'request').map((m) => [m.block.index, m.wait]), [[7, false]])
})

test('waiting requests (waitPeers 2): when one of the two waited neighbours announces the block, the other wait is cancelled', async () => {
  const { rep, peers, asked } = await waitingSetup(['a', 'b'], 2)
  assert.deepEqual(asked.map((a) => a.length), [1, 1])
  await peers[0].send({ type: 'range', start: 7, length: 1, drop: false }) // its answer is coming
  rep.schedule(0)
  assert.deepEqual(peers[0].out(), []) // nothing more asked of it
  assert.deepEqual(peers[1].out().map((m) => [m.type, m.request]), [['cancel', asked[1][0].id]])
})
