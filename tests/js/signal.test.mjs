// Signed signaling (signal.js) against the worked value of docs/signaling.md ("Signed messages"),
// and the receiver's checks in their order.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { discoveryKey } from '../../streamer/web/crypto.js'
import { toHex } from '../../streamer/web/encoding.js'
import { SignalAuth, signalKey, macInput } from '../../streamer/web/signal.js'

const streamKey = Uint8Array.from({ length: 32 }, (_, i) => i)
const dk = discoveryKey(streamKey)
const T = 1700000000000

test('the worked value: keys, peer id, S, mac and sig', async () => {
  assert.equal(toHex(dk), 'b74b6d642892501cca569ff03d3bd21d9db9768a3c12a5516a4a80a7bebad901')
  assert.equal(toHex(signalKey(streamKey)), 'f4d018d5b340318dc8dc012e7352d220888e470f323a01d25a30449a75682719')
  const auth = await SignalAuth.create(streamKey, dk, { seed: new Uint8Array(32).fill(1) })
  assert.equal(auth.publicKeyHex, '8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c')
  assert.equal(auth.peerId, '0c87d52deb8d60032fb2600c05c1f651')
  const sealed = await auth.seal({ type: 'hello', n: 2 }, T, '00112233aabbccdd')
  assert.equal(sealed.mac, 'ced694c6d2dd721c6ab3eb6086b0d40edc1b77fb83a6972bc6b3f7555a697ef3')
  assert.equal(sealed.sig, 'f3c92ac2f4096e95e318a6fcfb38059b4cde03a48c5356ec63ff0b12e4b54f09' +
    'f4dff16193db863acbdee412669de5265ba2f3da1366bdaaec1339217069d20d')
  const s = macInput(dk, sealed)
  assert.equal(toHex(s.subarray(0, 4)), '00000013')
  assert.equal(s.at(-1), 0) // no sdp
})

test('checks: no proof, bad mac, not the sender, bad signature, stale, replay', async () => {
  const a = await SignalAuth.create(streamKey, dk)
  const b = await SignalAuth.create(streamKey, dk)
  const msg = await a.seal({ type: 'offer', to: b.peerId, sdp: 'v=0' }, T)
  assert.equal(await b.check(msg, T + 1000), 'ok')
  assert.equal(await b.check(msg, T + 1000), 'replay')
  assert.equal(await b.check({ ...msg, mac: undefined }, T), 'no_proof')
  assert.equal(await b.check({ ...msg, sdp: 'v=1' }, T), 'bad_mac')
  const other = await SignalAuth.create(new Uint8Array(32).fill(9), dk)
  assert.equal(await b.check(await other.seal({ type: 'hello', n: 0 }, T), T), 'bad_mac')
  const c = await SignalAuth.create(streamKey, dk)
  const forged = await a.seal({ type: 'bye' }, T)
  assert.equal(await b.check({ ...forged, pk: c.publicKeyHex }, T), 'not_sender')
  assert.equal(await b.check({ ...forged, sig: forged.sig.replace(/^./, (x) => (x === '0' ? '1' : '0')) }, T), 'bad_signature')
  assert.equal(await b.check(await a.seal({ type: 'bye' }, T - 61_000), T), 'stale')
  await assert.rejects(a.seal({ type: 'hello', n: 1.5 }, T), /not a string, integer or boolean/)
})
