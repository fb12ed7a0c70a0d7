// Replication sessions between in-memory JS peers on a virtual clock: handshake, live fetching,
// re-sharing, and dropping peers that send bad proofs, unrequested data or garbage.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { blake2b } from '../../streamer/web/blake2b.js'
import { concat, fromHex, toHex } from '../../streamer/web/encoding.js'
import { MemoryFeed } from '../../streamer/web/feed.js'
import { PRIORITY_HIGH, Replicator } from '../../streamer/web/replicator.js'
import {
  checkHandshake, handshakeHash, makeHandshake, sdpFingerprint,
} from '../../streamer/web/session.js'
import * as wire from '../../streamer/web/wire.js'
import { blockValues, publicKey, seededFeed, vectors } from './helpers.mjs'

const values = blockValues()
const key = publicKey

class Net {
  constructor () {
    this.now = 0
    this.links = []
    this.events = new Map()
  }

  link (x, y, { tamperAB = null, tamperBA = null, writerA = false } = {}) {
    const hh = blake2b(new TextEncoder().encode('fingerprints'))
    const side = (rep, initiator, isWriter) => rep.addSession({
      handshake: makeHandshake(key, hh, initiator),
      verifyHandshake: (h) => checkHandshake(h, key, hh, initiator),
      name: isWriter ? 'writer' : '',
    })
    const a = side(x, true)
    const b = side(y, false)
    const link = { a, b, tamperAB, tamperBA }
    this.links.push(link)
    return link
  }

  async settle (rounds = 200) {
    for (let i = 0; i < rounds; i++) {
      let moved = false
      for (const l of this.links) {
        for (const [from, to, tamper] of [[l.a, l.b, l.tamperAB], [l.b, l.a, l.tamperBA]]) {
          for (let chunk of from.datagramsToSend(this.now)) {
            moved = true
            if (tamper) chunk = tamper(chunk)
            if (chunk) await to.receive(chunk, this.now)
          }
        }
      }
      for (const l of this.links) {
        for (const s of [l.a, l.b]) {
          let e
          while ((e = s.nextEvent())) {
            if (!this.events.has(s)) this.events.set(s, [])
            this.events.get(s).push(e)
          }
        }
      }
      if (!moved) return
    }
  }

  /** Advance the virtual clock through every replicator's timers for `seconds`. */
  async run (seconds, reps) {
    const end = this.now + seconds
    await this.settle()
    for (let i = 0; i < 10000; i++) {
      const timers = reps.map((r) => r.getTimer()).filter((t) => t !== null)
      const next = timers.length ? Math.min(...timers) : null
      if (next === null || next > end) break
      this.now = Math.max(this.now, next)
      for (const r of reps) {
        const t = r.getTimer()
        if (t !== null && t <= this.now) r.handleTimer(this.now)
      }
      await this.settle()
    }
    this.now = end
  }

  of (s, type) {
    return (this.events.get(s) || []).filter((e) => e.type === type)
  }
}

function held (rep) {
  return [...rep.feed.blocks.keys()].sort((a, b) => a - b)
}

test('a reader fetches the live edge and wanted history from a seeder, verified', async () => {
  const net = new Net()
  const seeder = new Replicator(seededFeed(), { seed: 1 })
  const reader = new Replicator(new MemoryFeed(key), { seed: 2 })
  const l = net.link(reader, seeder)
  await net.run(2, [seeder, reader])
  assert.equal(net.of(l.a, 'handshake').length, 1)
  assert.equal(reader.feed.length, 8)
  assert.deepEqual(held(reader), [4, 5, 6, 7]) // the live window
  reader.want(0, 8, PRIORITY_HIGH, net.now)
  await net.run(2, [seeder, reader])
  assert.deepEqual(held(reader), [0, 1, 2, 3, 4, 5, 6, 7])
  for (let i = 0; i < 8; i++) assert.deepEqual(reader.feed.get(i), values[i])
  assert.equal(net.of(l.a, 'block').length, 8)
  assert.equal(net.of(l.a, 'upgraded').length, 1)
  assert.equal(reader.stats().blocks_from_peers, 8)
  assert.equal(seeder.stats().blocks_up, 8)
})

test('a reader re-shares what it verified; a third peer fetches from it', async () => {
  const net = new Net()
  const seeder = new Replicator(seededFeed(), { seed: 1 })
  const middle = new Replicator(new MemoryFeed(key), { seed: 2 })
  const last = new Replicator(new MemoryFeed(key), { seed: 3 })
  net.link(middle, seeder)
  net.link(last, middle)
  middle.want(0, 8, PRIORITY_HIGH)
  last.want(0, 8, PRIORITY_HIGH)
  await net.run(5, [seeder, middle, last])
  assert.deepEqual(held(last), [0, 1, 2, 3, 4, 5, 6, 7])
  assert.equal(middle.stats().blocks_up, 8)
  const proofOf = (rep, i) => rep.feed.proof({ type: 'request', id: 1, fork: 0, block: { index: i, nodes: 0 }, upgrade: null })
  assert.equal(toHex(wire.encodeMessage(proofOf(last, 3))), toHex(wire.encodeMessage(proofOf(seeder, 3))))
})

function corruptBlockValue (chunk) {
  // Flip a byte of a data message's block value (of blocks sent in one chunk).
  let msg
  try {
    msg = wire.decodeMessage(chunk.subarray(1))
  } catch {
    return chunk
  }
  if (msg.type !== 'data' || !msg.block) return chunk
  msg.block.value = msg.block.value.slice()
  msg.block.value[0] ^= 1
  return concat([new Uint8Array([0]), wire.encodeMessage(msg)])
}

test('a peer sending a tampered proof is dropped and nothing forged is stored', async () => {
  const net = new Net()
  const seeder = new Replicator(seededFeed(), { seed: 1 })
  const reader = new Replicator(new MemoryFeed(key), { seed: 2 })
  const l = net.link(reader, seeder, { tamperBA: corruptBlockValue })
  await net.settle()
  const dropped = net.of(l.a, 'misbehaved')
  assert.equal(dropped.length, 1)
  assert.match(dropped[0].reason, /bad proof|does not match/)
  assert.equal(l.a.closed, true)
  // Only the 64 KiB block 4 (two chunks, left alone by the tamperer) may have arrived first.
  for (const i of held(reader)) assert.deepEqual(reader.feed.get(i), values[i])
  assert.ok(held(reader).every((i) => i === 4))
  assert.equal(reader.stats().peers_dropped, 1)
})

test('unrequested data and undecodable bytes get the peer dropped', async () => {
  for (const bad of ['unrequested', 'garbage', 'header']) {
    const net = new Net()
    const seeder = new Replicator(seededFeed(), { seed: 1 })
    const reader = new Replicator(new MemoryFeed(key), { seed: 2 })
    const l = net.link(reader, seeder)
    await net.settle()
    assert.equal(l.a.isOpen, true)
    let chunk
    if (bad === 'unrequested') {
      const data = seeder.feed.proof({ type: 'request', id: 999, fork: 0, block: { index: 1, nodes: 0 }, upgrade: null })
      chunk = concat([new Uint8Array([0]), wire.encodeMessage(data)])
    } else if (bad === 'garbage') {
      chunk = new Uint8Array([0, 3, 0xff])
    } else {
      chunk = new Uint8Array([7, 1])
    }
    await l.a.receive(chunk, net.now)
    assert.equal(l.a.closed, true, bad)
    assert.equal(reader.stats().peers_dropped, 1, bad)
  }
})

test('handshakes: capability bound to the fingerprints, writer proof checked', async () => {
  const cap = vectors.replication_capability
  const hh = fromHex(cap.handshakeHash)
  const k = fromHex(cap.key)
  const ours = makeHandshake(k, hh, true)
  assert.equal(toHex(ours.capability), cap.initiator)
  assert.equal(toHex(wire.encodePayload(ours)), vectors.wire_examples.handshake)
  assert.equal(await checkHandshake(ours, k, hh, false), false)
  await assert.rejects(checkHandshake(ours, k, hh, true)) // a responder's capability differs
  const forged = { ...ours, writerSignature: new Uint8Array(64) }
  await assert.rejects(checkHandshake(forged, k, hh, false), /bad signature/)
  const otherHash = handshakeHash(new Uint8Array(32), new Uint8Array(32).fill(1))
  await assert.rejects(checkHandshake(ours, k, otherHash, false), /capability/)

  // a peer whose capability is for another connection is dropped before anything else happens
  const net = new Net()
  const a = new Replicator(new MemoryFeed(key))
  const b = new Replicator(seededFeed())
  const sa = a.addSession({
    handshake: makeHandshake(key, hh, true),
    verifyHandshake: (h) => checkHandshake(h, key, hh, true),
  })
  const sb = b.addSession({
    handshake: makeHandshake(key, otherHash, false),
    verifyHandshake: (h) => checkHandshake(h, key, otherHash, false),
  })
  net.links.push({ a: sa, b: sb })
  await net.settle()
  assert.equal(sb.closed, true)
  assert.equal(sa.isOpen, false) // it never heard back; the adapter's handshake timeout ends it
  assert.match(net.of(sb, 'misbehaved')[0].reason, /bad handshake/)
  assert.equal(a.feed.length, 0)
})

test('SDP fingerprints and the handshake hash', () => {
  const fpA = 'AB:'.repeat(31) + 'CD'
  const fpB = '01:'.repeat(31) + '02'
  const sdp = (fp) => [
    'v=0', 'o=- 1 2 IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=fingerprint:sha-1 00:11',
    'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0',
    `a=fingerprint:sha-256 ${fp}`, 'a=sctp-port:5000', '',
  ].join('\r\n')
  const a = sdpFingerprint(sdp(fpA))
  const b = sdpFingerprint(sdp(fpB))
  assert.equal(toHex(a), 'ab'.repeat(31) + 'cd')
  const h = handshakeHash(a, b)
  assert.deepEqual(h, handshakeHash(b, a)) // the same on both ends
  assert.deepEqual(h, blake2b(concat([b, a]))) // sorted: 01.. before ab..
  assert.throws(() => sdpFingerprint('v=0\r\nm=application 9 x\r\n'), /fingerprint/)
  // a session-level fingerprint counts when the section has none
  assert.deepEqual(sdpFingerprint(`v=0\r\na=fingerprint:sha-256 ${fpB}\r\nm=application 9 x\r\n`), b)
})

test('evicted blocks are announced as dropped and no longer served', async () => {
  const net = new Net()
  const seeder = new Replicator(seededFeed(), { seed: 1 })
  const reader = new Replicator(new MemoryFeed(key), { seed: 2 })
  const l = net.link(reader, seeder)
  await net.settle()
  assert.equal(l.a.remoteHas.has(2), true)
  seeder.evict(0, 4)
  await net.settle()
  assert.equal(l.a.remoteHas.has(2), false)
  assert.equal(l.a.remoteHas.has(5), true)
  assert.equal(seeder.feed.has(2), false)
  assert.equal(seeder.feed.blockBytes, values.slice(4).reduce((n, v) => n + v.length, 0))
})
