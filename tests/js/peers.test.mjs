// The tab's neighbour set: handshakes bound to SDP fingerprints, bans, handshake timeouts and the
// memory window, with two PeerSets wired together in memory.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { concat } from '../../streamer/web/encoding.js'
import { MemoryFeed } from '../../streamer/web/feed.js'
import { PeerSet } from '../../streamer/web/peers.js'
import { PRIORITY_HIGH } from '../../streamer/web/replicator.js'
import * as wire from '../../streamer/web/wire.js'
import { blockValues, publicKey as key, seededFeed } from './helpers.mjs'

function sdp (byte) {
  const fp = Array.from({ length: 32 }, () => byte.toString(16).padStart(2, '0').toUpperCase()).join(':')
  return `v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=fingerprint:sha-256 ${fp}\r\n`
}

/** Connect peer ids 'r' (in reader) and 's' (in seeder); `theirSdp` lets a man in the middle
 *  show the seeder another SDP than the reader sent. */
function connect (reader, seeder, now, { theirSdp = sdp(1), tamper = null } = {}) {
  reader.open('s', { localSdp: sdp(1), remoteSdp: sdp(2), initiator: true, now })
  seeder.open('r', { localSdp: sdp(2), remoteSdp: theirSdp, initiator: false, now })
  return { reader, seeder, tamper, fromReader: [] }
}

async function pump (net, now) {
  for (let round = 0; round < 2000; round++) {
    let moved = false
    for (const [from, fid, to, tid, tamper] of [
      [net.reader, 's', net.seeder, 'r', null], [net.seeder, 'r', net.reader, 's', net.tamper]]) {
      for (let m of from.outgoing(fid, now, 1 << 20)) {
        moved = true
        if (tamper && typeof m !== 'string') m = tamper(m)
        if (from === net.reader && typeof m !== 'string' && m[0] === 0) {
          try { net.fromReader.push(wire.decodeMessage(m.subarray(1))) } catch {}
        }
        await to.receive(tid, m, now)
      }
    }
    if (!moved) return
  }
}

async function run (net, from, seconds) {
  let now = from
  for (; now < from + seconds; now += 0.25) {
    await pump(net, now)
    net.reader.tick(now)
    net.seeder.tick(now)
  }
  await pump(net, now)
  return now
}

test('two neighbours handshake over their SDP fingerprints and replicate', async () => {
  const events = []
  const reader = new PeerSet(new MemoryFeed(key), { config: { seed: 2 }, onEvent: (e) => events.push(e) })
  const seeder = new PeerSet(seededFeed(), { config: { seed: 1 } })
  const net = connect(reader, seeder, 0)
  reader.replicator.want(0, 8, PRIORITY_HIGH)
  await run(net, 0, 3)
  assert.equal(reader.feed.contiguousLength, 8)
  const values = blockValues()
  for (let i = 0; i < 8; i++) assert.deepEqual(reader.feed.get(i), values[i])
  assert.ok(events.some((e) => e.type === 'handshake' && e.peer === 's'))
  assert.equal(events.filter((e) => e.type === 'block').length, 8)
  const stats = reader.stats(3)
  assert.deepEqual(Object.keys(stats), [
    'key', 'length', 'blocks_have', 'byte_length', 'live_delay_s', 'ended', 'peers',
    'writer_connected', 'bytes_up', 'bytes_down', 'up_rate', 'down_rate', 'blocks_up',
    'block_bytes_up', 'blocks_from_writer', 'blocks_from_peers', 'block_bytes_from_writer',
    'block_bytes_from_peers', 'duplicates', 'duplicate_bytes', 'rerequests', 'timeouts',
    'uploads_refused', 'writer_copies_alone', 'writer_copies_demanded', 'peers_dropped', 'inflight', 'unavailable', 'keep', 'replicated_share', 'rarest_copies',
    'unreplicated_blocks', 'backfill_requests', 'evicted', 'pushes_sent', 'pushes_received',
    'push_children', 'push_parent', 'parent_switches', 'swarm_short', 'upload_capacity_ratio',
    'share_from_peers',
    'neighbours', 'block_bytes_held', 'blocks_evicted', 'banned',
  ])
  assert.equal(stats.peers, 1)
  assert.equal(stats.neighbours.length, 1)
  assert.equal(stats.blocks_have, 8)
  assert.equal(stats.blocks_from_peers, 8)
  assert.equal(stats.share_from_peers, 1)
  assert.ok(stats.down_rate > 0)
})

test('memory stays bounded: far blocks are evicted, block 0 and wanted blocks kept', async () => {
  const reader = new PeerSet(new MemoryFeed(key), { config: { seed: 2, liveWindow: 2 } })
  const seeder = new PeerSet(seededFeed(), { config: { seed: 1 } })
  const net = connect(reader, seeder, 0)
  reader.replicator.want(0, 8, PRIORITY_HIGH)
  let now = await run(net, 0, 3)
  assert.equal(reader.feed.contiguousLength, 8)
  // The viewer watches from block 2 on: the rest may go once memory is short.
  reader.replicator.unwant(0, 8)
  reader.setPlayhead(2, now)
  reader.maxBlockBytes = 20
  reader.tick(now)
  now = await run(net, now, 3)
  const held = [...reader.feed.blocks.keys()].sort((a, b) => a - b)
  // block 0 (header), the playback window 2..7 (8 blocks from 2) and the live edge 6, 7 stay
  assert.deepEqual(held, [0, 2, 3, 4, 5, 6, 7])
  assert.equal(reader.stats().blocks_evicted, 1)
  reader.setPlayhead(7, now) // moving on frees the 64 KiB block 4, farthest first until within
  reader.tick(now)
  now = await run(net, now, 3)
  assert.deepEqual([...reader.feed.blocks.keys()].sort((a, b) => a - b), [0, 5, 6, 7])
  assert.ok(reader.feed.blockBytes <= 20)
  assert.equal(reader.stats().blocks_from_peers, 8) // nothing evicted was fetched again
  const drops = net.fromReader.filter((m) => m.type === 'range' && m.drop).map((m) => m.start)
  assert.deepEqual(drops.sort((a, b) => a - b), [1, 2, 3, 4]) // and every drop was announced
})

test('a neighbour that forges a block is banned; it may come back after the ban', async () => {
  const events = []
  const reader = new PeerSet(new MemoryFeed(key), { config: { seed: 2 }, banSeconds: 60, onEvent: (e) => events.push(e) })
  const seeder = new PeerSet(seededFeed(), { config: { seed: 1 } })
  const forge = (chunk) => {
    try {
      const msg = wire.decodeMessage(chunk.subarray(1))
      if (msg.type === 'data' && msg.block) {
        msg.block.value = new Uint8Array([...msg.block.value, 1])
        return concat([new Uint8Array([0]), wire.encodeMessage(msg)])
      }
    } catch {}
    return chunk
  }
  const net = connect(reader, seeder, 0, { tamper: forge })
  await run(net, 0, 2)
  assert.ok(events.some((e) => e.type === 'misbehaved' && e.peer === 's'))
  assert.equal(reader.isClosed('s'), true)
  assert.equal(reader.isBanned('s', 2), true)
  assert.equal(reader.open('s', { localSdp: sdp(1), remoteSdp: sdp(2), initiator: true, now: 10 }), null)
  assert.notEqual(reader.open('s', { localSdp: sdp(1), remoteSdp: sdp(2), initiator: true, now: 61 }), null)
  for (const i of reader.feed.blocks.keys()) assert.deepEqual(reader.feed.get(i), blockValues()[i])
})

test('a swapped SDP (someone in the middle) fails the handshake and is banned', async () => {
  const reader = new PeerSet(new MemoryFeed(key))
  const seeder = new PeerSet(seededFeed())
  const net = connect(reader, seeder, 0, { theirSdp: sdp(3) })
  await run(net, 0, 1)
  assert.equal(reader.feed.length, 0)
  assert.equal(seeder.isBanned('r', 1) || reader.isBanned('s', 1), true)
})

test('a channel whose peer never sends its handshake is closed without a ban', async () => {
  const reader = new PeerSet(new MemoryFeed(key))
  reader.open('s', { localSdp: sdp(1), remoteSdp: sdp(2), initiator: true, now: 0 })
  reader.outgoing('s', 0, 1 << 20)
  reader.tick(5)
  assert.equal(reader.isClosed('s'), false)
  reader.tick(10.5)
  assert.equal(reader.isClosed('s'), true)
  assert.equal(reader.isBanned('s', 11), false)
  assert.throws(() => reader.open('x', { localSdp: 'v=0', remoteSdp: sdp(2), initiator: true, now: 0 }), /fingerprint/)
})

test('a neighbour that connects again replaces its link only once the new handshake verified', async () => {
  const events = []
  const reader = new PeerSet(new MemoryFeed(key), { config: { seed: 2 }, onEvent: (e) => events.push(e) })
  const seeder = new PeerSet(seededFeed(), { config: { seed: 1 } })
  const net = connect(reader, seeder, 0)
  await run(net, 0, 1)
  const first = reader.links.get('s').link
  assert.equal(first.session.isOpen, true)
  // A second channel from the same peer id (say, a forged offer): it waits beside the first.
  const second = reader.open('s', { localSdp: sdp(1), remoteSdp: sdp(2), initiator: true, now: 2 })
  assert.equal(reader.links.get('s').link, first)
  assert.equal(reader.pending.get('s').link, second)
  // It never completes its handshake: it is closed, the first link stays.
  reader.tick(13)
  assert.equal(reader.pending.has('s'), false)
  assert.equal(reader.links.get('s').link, first)
  assert.equal(first.closed, false)
  assert.ok(events.some((e) => e.type === 'closed' && e.link === second))
  // A real reconnection: the seeder's side runs the handshake on the new link, which then
  // replaces the first one.
  const third = reader.open('s', { localSdp: sdp(1), remoteSdp: sdp(2), initiator: true, now: 14 })
  const theirs = seeder.open('r', { localSdp: sdp(2), remoteSdp: sdp(1), initiator: false, now: 14 })
  for (let round = 0; round < 50; round++) {
    for (const m of reader.outgoing('s', 14, 1 << 20, third)) await seeder.receive('r', m, 14, theirs)
    for (const m of seeder.outgoing('r', 14, 1 << 20, theirs)) await reader.receive('s', m, 14, third)
  }
  assert.equal(seeder.links.get('r').link, theirs)
  assert.equal(reader.links.get('s').link, third)
  assert.equal(first.closed, true)
  assert.equal(third.session.isOpen, true)
})

test('the scheduler windows are seconds of media, whatever the block size', () => {
  const whole = new PeerSet(new MemoryFeed(key), { config: { seed: 3 } }).replicator
  assert.equal(whole.blocks(whole.config.playbackWindow), 8)
  const parts = new PeerSet(new MemoryFeed(key), { config: { seed: 3, blockDuration: 0.2 } }).replicator
  assert.equal(parts.blocks(parts.config.playbackWindow), 40) // 8 s of 0.2 s parts
  assert.equal(parts.blocks(parts.config.liveWindow), 20)
  assert.equal(parts.blocks(0.05), 1) // never less than one block
})
