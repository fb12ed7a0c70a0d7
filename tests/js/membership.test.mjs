// The membership rules of membership.js, case for case with tests/test_membership.py: who dials,
// who answers, full nodes, making room, bans, announcing.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { ISOLATED_RETRY_S, MAX_BANNED, MAX_FULL_NODES, Membership, newPeerId, PEER_ID } from '../../streamer/web/membership.js'

const id = (c) => c.repeat(32)
const A = id('1') // lower than every other id here
const M = id('7')
const Z = id('f') // the highest
const node = (peerId = M, opts = {}) => new Membership(peerId, { random: () => 0, ...opts })
const posts = (actions) => actions.filter((a) => a.type === 'post').map((a) => a.message)

test('peer ids are 32 lowercase hex digits', () => {
  assert.match(newPeerId(), PEER_ID)
  assert.notEqual(newPeerId(), newPeerId())
})

test('malformed or misaddressed signaling is ignored', () => {
  const n = node()
  for (const msg of [null, [], 'x', { type: 'hello', from: 'nope' }, { type: 'hello', from: A, to: Z }, { type: 'what', from: A }]) {
    const out = n.signal(msg, 0)
    assert.equal(out.length, 1)
    assert.equal(out[0].type, 'ignored')
  }
  assert.deepEqual(n.signal({ type: 'hello', from: M }, 0), []) // our own
  for (const type of ['full', 'offer', 'answer', 'reject']) assert.deepEqual(n.signal({ type, from: A }, 0).map((a) => a.type), ['ignored'])
})

test('the lower id dials; the higher asks to be dialled', () => {
  assert.deepEqual(node(A).signal({ type: 'hello', from: M, n: 1 }, 0), [{ type: 'dial', peer: M, offer: null }])
  const out = node(M).signal({ type: 'hello', from: A, n: 1 }, 0)
  assert.deepEqual(posts(out), [{ type: 'hello', to: A }])
})

test('offers: the lower id is answered, bad SDP and full nodes reject, a neighbour may dial again', () => {
  const n = node(M, { maxPeers: 1 })
  assert.deepEqual(n.signal({ type: 'offer', from: Z, to: M, sdp: 'v=0' }, 0).map((a) => a.type), ['ignored'])
  assert.deepEqual(posts(n.signal({ type: 'offer', from: A, to: M, sdp: 5 }, 0)), [{ type: 'reject', to: A }])
  assert.deepEqual(n.signal({ type: 'offer', from: A, to: M, sdp: 'v=0' }, 0), [{ type: 'dial', peer: A, offer: 'v=0' }])
  n.dialEnded(A)
  n.connected(A, false)
  const b = id('3')
  assert.deepEqual(posts(n.signal({ type: 'offer', from: b, to: M, sdp: 'v=0' }, 0)), [{ type: 'reject', to: b }])
  assert.deepEqual(n.signal({ type: 'offer', from: A, to: M, sdp: 'v=1' }, 0), [{ type: 'dial', peer: A, offer: 'v=1' }])
})

test('answers and rejects reach the dial; bye cancels it', () => {
  const n = node(A)
  n.signal({ type: 'hello', from: M, n: 0 }, 0)
  assert.deepEqual(n.signal({ type: 'answer', from: M, to: A, sdp: 's' }, 0), [{ type: 'answer', peer: M, sdp: 's' }])
  assert.deepEqual(n.signal({ type: 'reject', from: M, to: A }, 0), [{ type: 'answer', peer: M, sdp: null }])
  assert.deepEqual(n.signal({ type: 'bye', from: M }, 0), [{ type: 'cancelDial', peer: M }])
  n.dialEnded(M)
  assert.deepEqual(n.signal({ type: 'bye', from: M }, 0), [])
})

test('a full node promises room only to an isolated newcomer and evicts once it connected', () => {
  const n = node(M, { maxPeers: 2 })
  const [b, c, d] = [id('3'), id('5'), id('6')]
  for (const [p, w] of [[A, true], [b, false]]) {
    n.signal({ type: 'hello', from: p, n: 2 }, 0) // both told us they have another neighbour
    n.connected(p, w)
  }
  // Connecting reports our count to every neighbour.
  assert.deepEqual(posts(n.connected(b, false)), [{ type: 'hello', to: A, n: 2 }, { type: 'hello', to: b, n: 2 }])
  assert.deepEqual(posts(n.signal({ type: 'hello', from: c, n: 0 }, 1)), [{ type: 'full', to: c }])
  assert.deepEqual(n.signal({ type: 'hello', from: c, n: 2 }, 1), [])
  n.signal({ type: 'hello', from: c, n: 0 }, 2)
  // c announced itself isolated: asked for room, we promise it (c < M, so we ask c to dial).
  const out = n.signal({ type: 'hello', from: c, to: M, n: 0, evict: true }, 10)
  assert.deepEqual(posts(out), [{ type: 'hello', to: c }])
  assert.equal(n.neighbours.size, 2) // nobody dropped yet
  assert.equal(n.signal({ type: 'offer', from: c, to: M, sdp: 'v=0' }, 11)[0].type, 'dial')
  const done = n.connected(c, false)
  assert.deepEqual(done[0], { type: 'evict', peer: b }) // never the writer if another will do
  n.dialEnded(c)
  // d never announced itself isolated: no promise (and a cooldown would stop it anyway).
  assert.deepEqual(posts(n.signal({ type: 'hello', from: d, to: M, n: 0, evict: true }, 40)), [{ type: 'full', to: d }])
  // A count report from a neighbour is recorded, not taken as "please dial me".
  assert.deepEqual(n.signal({ type: 'hello', from: A, to: M, n: 1 }, 41), [])
  assert.equal(n.neighbourCount(A), 1)
})

test('no room is promised when every neighbour would be stranded', () => {
  const n = node(M, { maxPeers: 1 })
  n.connected(A, false) // it never said it has another neighbour
  const c = id('5')
  n.signal({ type: 'hello', from: c, n: 0 }, 0)
  assert.deepEqual(posts(n.signal({ type: 'hello', from: c, to: M, n: 0, evict: true }, 1)), [{ type: 'full', to: c }])
})

test('an isolated node that hears full asks one full node for room, then the next', () => {
  const n = node(A)
  n.announced(0)
  n.signal({ type: 'full', from: M, to: A }, 0)
  assert.equal(n.announceDeadline(), -Infinity)
  assert.deepEqual(posts(n.announce()), [{ type: 'hello', to: M, n: 0, evict: true }])
  n.announced(1)
  n.signal({ type: 'full', from: M, to: A }, 1) // it cannot help: ask the next at once
  assert.equal(n.announceDeadline(), -Infinity)
  for (let i = 0; i < MAX_FULL_NODES + 5; i++) n.signal({ type: 'full', from: i.toString(16).padStart(32, 'b'), to: A }, 1)
  assert.equal(n._fullNodes.size, MAX_FULL_NODES)
  n.connected(M, false)
  assert.equal(n._fullNodes.size, 0)
})

test('bans: neither dialled nor answered until they expire; the list is bounded', () => {
  const n = node(A)
  n.ban(M, 0)
  assert.deepEqual(n.signal({ type: 'hello', from: M, n: 1 }, 10), [])
  assert.equal(n.signal({ type: 'hello', from: M, n: 1 }, 61)[0].type, 'dial')
  const m = node(Z)
  m.ban(A, 0)
  assert.deepEqual(posts(m.signal({ type: 'offer', from: A, to: Z, sdp: 'v=0' }, 1)), [{ type: 'reject', to: A }])
  for (let i = 0; i < MAX_BANNED + 3; i++) m.ban(i.toString(16).padStart(32, '0'), 2)
  assert.equal(m._banned.size, MAX_BANNED)
})

test('announcing: at once first, every interval with jitter, sooner while isolated, never when full', () => {
  const n = node(A, { maxPeers: 1 })
  assert.equal(n.announceDeadline(), -Infinity)
  assert.deepEqual(posts(n.announce()), [{ type: 'hello', n: 0 }])
  n.announced(100)
  assert.equal(n.announceDeadline(), 100 + ISOLATED_RETRY_S)
  n.connected(M, false)
  assert.equal(n.announceDeadline(), 100 + 10 * 0.8)
  assert.deepEqual(n.announce(), []) // full
  n.disconnected(M)
  assert.equal(n.announceDeadline(), -Infinity)
})
