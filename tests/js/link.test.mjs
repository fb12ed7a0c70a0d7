// A session over a simulated data channel with rtc.py's credit window and keepalive: blocks flow
// within the window, grants come back, and peers that overrun, send bad grants or go silent are
// closed.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { blake2b } from '../../streamer/web/blake2b.js'
import { MemoryFeed } from '../../streamer/web/feed.js'
import { Link } from '../../streamer/web/link.js'
import { PRIORITY_HIGH, Replicator } from '../../streamer/web/replicator.js'
import { checkHandshake, makeHandshake } from '../../streamer/web/session.js'
import { messageCost } from '../../streamer/web/wire.js'
import { blockValues, publicKey as key, seededFeed } from './helpers.mjs'

const W = 2 * messageCost(65536) // the smallest window rtc.py allows

function pair (seedRep, readRep, opts) {
  const hh = blake2b(new TextEncoder().encode('link'))
  const side = (rep, initiator) => new Link(rep.addSession({
    handshake: makeHandshake(key, hh, initiator),
    verifyHandshake: (h) => checkHandshake(h, key, hh, initiator),
  }), opts)
  return [side(readRep, true), side(seedRep, false)]
}

/** Deliver everything both ways, recording the largest receive-window use seen. */
async function pump (links, now, stats) {
  for (let round = 0; round < 1000; round++) {
    let moved = false
    for (const [from, to] of [[links[0], links[1]], [links[1], links[0]]]) {
      for (const m of from.outgoing(now)) {
        moved = true
        if (typeof m === 'string') stats.texts.push(m)
        else stats.binary += m.length
        await to.receive(m, now)
        stats.maxUse = Math.max(stats.maxUse, to.flow.window - to.flow.allowance)
      }
    }
    if (!moved) return
  }
  throw new Error('never quiet')
}

test('blocks flow within a small window; grants return consumed credit', async () => {
  const seeder = new Replicator(seededFeed(), { seed: 1 })
  const reader = new Replicator(new MemoryFeed(key), { seed: 2 })
  const links = pair(seeder, reader, { window: W, now: 0 })
  const stats = { texts: [], binary: 0, maxUse: 0 }
  let now = 0
  // Fetch everything three times over (evicting in between): more than a window's worth.
  for (let cycle = 0; cycle < 3; cycle++) {
    if (cycle) reader.evict(0, 8)
    reader.want(0, 8, PRIORITY_HIGH, now)
    for (let i = 0; i < 100 && reader.feed.contiguousLength < 8; i++) {
      await pump(links, now, stats)
      now += 0.1
      for (const rep of [seeder, reader]) {
        const t = rep.getTimer()
        if (t !== null && t <= now) rep.handleTimer(now)
      }
    }
    assert.equal(reader.feed.contiguousLength, 8, `cycle ${cycle}`)
  }
  const values = blockValues()
  assert.equal(reader.feed.contiguousLength, 8)
  for (let i = 0; i < 8; i++) assert.deepEqual(reader.feed.get(i), values[i])
  assert.ok(stats.binary > W, 'more bytes crossed than one window holds')
  assert.ok(stats.texts.some((t) => /^c\d+$/.test(t)), 'grants were sent')
  assert.ok(stats.maxUse <= W, `window overrun: ${stats.maxUse} > ${W}`)
  assert.equal(links[0].closed || links[1].closed, false)
})

test('a peer that overruns the window or sends a bad grant is closed', async () => {
  const rep = new Replicator(new MemoryFeed(key))
  const over = new Link(rep.addSession(), { window: W })
  await over.receive(new Uint8Array(W - 64), 0) // exactly the window: allowed (it is garbage, though)
  const fresh = new Link(new Replicator(new MemoryFeed(key)).addSession(), { window: W })
  await fresh.receive(new Uint8Array([0, 8, 0, 0, 1]), 0) // a whole Range message: fine
  assert.equal(fresh.closed, false)
  await fresh.receive(new Uint8Array(W), 0)
  assert.equal(fresh.closed, true)
  assert.match(fresh.closeReason, /overran/)
  const bad = new Link(new Replicator(new MemoryFeed(key)).addSession(), { window: W })
  await bad.receive(`c${W + 1}`, 0)
  assert.equal(bad.closed, true)
  assert.match(bad.closeReason, /grant/)
  assert.equal(bad.session.closed, true)
})

test('keepalives when quiet; a silent peer is closed after 20 s', async () => {
  const link = new Link(new Replicator(new MemoryFeed(key)).addSession(), { window: W, now: 0 })
  link.outgoing(0) // the initial Sync
  link.tick(2.5)
  assert.deepEqual(link.outgoing(2.5), [])
  link.tick(5.1)
  assert.deepEqual(link.outgoing(5.1), ['p'])
  await link.receive('p', 6)
  for (let t = 7.5; t <= 25; t += 2.5) { // polled every TICK_S, as the page does
    link.tick(t)
    link.outgoing(t)
  }
  assert.equal(link.closed, false)
  link.tick(26.5)
  assert.equal(link.closed, true)
  assert.equal(link.closeReason, 'peer silent')
})
