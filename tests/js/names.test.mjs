// Stream-name records: syntax, signable bytes and signature checks (keys made with WebCrypto).

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { toHex } from '../../streamer/web/encoding.js'
import { ProofError } from '../../streamer/web/merkle.js'
import { isValidName, nameSignable, verifyNameRecord } from '../../streamer/web/names.js'

test('name syntax: 1-63 of a-z 0-9 . _ - starting with a letter or digit', () => {
  for (const ok of ['a', 'my-stream', 'x.y_z', '0abc', 'a'.repeat(63)]) assert.equal(isValidName(ok), true, ok)
  for (const bad of ['', '-a', 'A', 'a b', 'a'.repeat(64), 'é', null, 5]) assert.equal(isValidName(bad), false, String(bad))
})

test('signable bytes: namespace, name, NUL, key, big-endian time', () => {
  const key = new Uint8Array(32).fill(1)
  const b = nameSignable('ab', key, 258)
  assert.equal(toHex(b), toHex(new TextEncoder().encode('swarmcast/name/v1\0ab\0')) + '01'.repeat(32) + '0000000000000102')
})

test('records signed by the stream key verify; anything altered does not', async () => {
  const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])
  const key = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey))
  const sign = async (name, time) => new Uint8Array(
    await crypto.subtle.sign({ name: 'Ed25519' }, pair.privateKey, nameSignable(name, key, time)))
  const good = { name: 'live', key: toHex(key), time: 1700000000, signature: toHex(await sign('live', 1700000000)) }
  const got = await verifyNameRecord(good)
  assert.equal(got.name, 'live')
  assert.deepEqual(got.key, key)
  for (const bad of [
    { ...good, time: good.time + 1 }, { ...good, name: 'live2' }, { ...good, key: '00'.repeat(32) },
    { ...good, signature: 'zz'.repeat(64) }, { ...good, time: 1.5 }, { ...good, name: 'Live' }, null, [],
  ]) {
    await assert.rejects(verifyNameRecord(bad), ProofError, JSON.stringify(bad))
  }
})
