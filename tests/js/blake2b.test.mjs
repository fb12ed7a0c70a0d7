// BLAKE2b against RFC 7693 Appendix A, the hypercore vectors and keyed/length edge cases.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { Blake2b, backend, blake2b, setBackend } from '../../streamer/web/blake2b.js'
import * as c from '../../streamer/web/crypto.js'
import { fromHex, toHex } from '../../streamer/web/encoding.js'
import { blockValues, vectors } from './helpers.mjs'

const te = new TextEncoder()

test('WebAssembly is used where available (node has it)', () => {
  assert.equal(backend(), 'wasm')
})

// Every check runs with both compressors: WebAssembly and the JavaScript fallback.
for (const name of ['wasm', 'js']) {
  const it = (title, fn) => test(`[${name}] ${title}`, (t) => {
    setBackend(name)
    try {
      return fn(t)
    } finally {
      setBackend('wasm')
    }
  })
  suite(it)
}

function suite (test) {

test('RFC 7693 Appendix A: BLAKE2b-512("abc")', () => {
  assert.equal(toHex(blake2b(te.encode('abc'), 64)),
    'ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1' +
    '7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923')
})

test('RFC 7693 Appendix E self-test: the grand hash of all lengths, keyed and unkeyed', () => {
  // selftest_seq of RFC 7693 Appendix E: a deterministic byte sequence from a Fibonacci-like LCG
  function seq (len, seed) {
    const out = new Uint8Array(len)
    let a = Math.imul(0xdead4bad, seed) >>> 0
    let b = 1
    for (let i = 0; i < len; i++) {
      const t = (a + b) >>> 0
      a = b
      b = t
      out[i] = (t >>> 24) & 0xff
    }
    return out
  }
  const grand = new Blake2b(32)
  for (const outlen of [20, 32, 48, 64]) {
    for (const inlen of [0, 3, 128, 129, 255, 1024]) {
      const input = seq(inlen, inlen)
      grand.update(blake2b(input, outlen))
      grand.update(blake2b(input, outlen, seq(outlen, outlen)))
    }
  }
  assert.equal(toHex(grand.digest()),
    'c23a7800d98123bd10f506c61e29da5603d763b8bbad2e737f5e765a7bccd475')
})

test('hypercore constants: namespaces and the keyed hash of "hypercore"', () => {
  for (const name of ['TREE', 'REPLICATE_INITIATOR', 'REPLICATE_RESPONDER', 'MANIFEST',
    'DEFAULT_NAMESPACE', 'DEFAULT_ENCRYPTION']) {
    assert.equal(toHex(c[name]), vectors.constants[name], name)
  }
  assert.equal(toHex(blake2b(te.encode('hypercore'))), vectors.constants.blake2b_hypercore)
  assert.equal(toHex(c.discoveryKey(fromHex(vectors.keys.publicKey))),
    vectors.keys.discoveryKey_of_publicKey)
})

test('leaf hashes of the reference blocks (one of 64 KiB)', () => {
  const values = blockValues()
  vectors.blocks.forEach((b, i) => {
    assert.equal(toHex(c.leafHash(values[i])), b.leaf_hash, b.desc)
  })
})

test('incremental updates equal one-shot hashing at every split', () => {
  const data = new Uint8Array(300).map((_, i) => (i * 7 + 3) & 255)
  const whole = toHex(blake2b(data, 64))
  for (let split = 0; split <= data.length; split += 13) {
    const h = new Blake2b(64)
    h.update(data.subarray(0, split)).update(data.subarray(split))
    assert.equal(toHex(h.digest()), whole, `split at ${split}`)
  }
})

test('bad lengths and keys are refused; a digest is taken once', () => {
  assert.throws(() => new Blake2b(0), RangeError)
  assert.throws(() => new Blake2b(65), RangeError)
  assert.throws(() => new Blake2b(32, new Uint8Array(65)), RangeError)
  const h = new Blake2b(32)
  h.digest()
  assert.throws(() => h.digest())
  assert.throws(() => h.update(new Uint8Array(1)))
})

  test('inputs crossing the WebAssembly input area (over 64 KiB at once)', () => {
    const big = new Uint8Array(200000).map((_, i) => (i * 13) & 255)
    const h = new Blake2b(32)
    h.update(big.subarray(0, 5)).update(big.subarray(5, 150000)).update(big.subarray(150000))
    assert.deepEqual(h.digest(), blake2b(big))
    assert.equal(toHex(blake2b(big)), BIG_DIGEST)
  })
}

// hashlib.blake2b(bytes((i * 13) & 255 for i in range(200000)), digest_size=32).hexdigest()
const BIG_DIGEST = 'e125bab2daf6abe1d7dcbd5bf26498d70f41b316856848c2baa50fc2745732c9'
