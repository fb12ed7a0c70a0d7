// The tab's proof verification speed (streamer/web/*.js in node), driven by bench_js_verify.py.
// Usage: node bench/bench_js_verify.mjs WORKDIR PUBLIC_KEY_HEX  -> one JSON line of rates per second.
// WORKDIR holds verify.bin, first.bin and apply.bin: u32le-length-prefixed encoded Data messages.

import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { blake2b } from '../streamer/web/blake2b.js'
import { Ed25519PublicKey, leafHash } from '../streamer/web/crypto.js'
import { fromHex } from '../streamer/web/encoding.js'
import { CompatVerifier, MemoryNodeStore, MerkleTree } from '../streamer/web/merkle.js'
import { decodeMessage } from '../streamer/web/wire.js'

const [work, keyHex] = process.argv.slice(2)
const key = fromHex(keyHex)

function messages (name) {
  const buf = new Uint8Array(readFileSync(join(work, name)))
  const out = []
  for (let o = 0; o < buf.length;) {
    const n = buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] * 2 ** 24)
    out.push(buf.subarray(o + 4, o + 4 + n))
    o += 4 + n
  }
  return out
}

const verifyRaw = messages('verify.bin')
const [firstRaw] = messages('first.bin')
const applyRaw = messages('apply.bin')
const verifier = new CompatVerifier(key)
const out = {}

// block + upgrade from an empty reader: one leaf hash, the tree climb and one signature each
{
  for (const raw of verifyRaw.slice(0, 50)) await new MerkleTree(new MemoryNodeStore(), verifier).verify(decodeMessage(raw)) // warm up
  const t0 = performance.now()
  for (const raw of verifyRaw) await new MerkleTree(new MemoryNodeStore(), verifier).verify(decodeMessage(raw))
  out.proof_verify = verifyRaw.length / ((performance.now() - t0) / 1000)
  // the same with many checks in flight at once (WebCrypto may verify in parallel)
  const t1 = performance.now()
  for (let i = 0; i < verifyRaw.length; i += 64) {
    await Promise.all(verifyRaw.slice(i, i + 64).map((raw) =>
      new MerkleTree(new MemoryNodeStore(), verifier).verify(decodeMessage(raw))))
  }
  out.proof_verify_concurrent = verifyRaw.length / ((performance.now() - t1) / 1000)
}

// block-only proofs into a sparse reader that stores what verified (how a tab takes blocks)
{
  const store = new MemoryNodeStore()
  const reader = new MerkleTree(store, verifier)
  const batch = await reader.verify(decodeMessage(firstRaw))
  store.put(batch.nodes)
  reader.commit(batch)
  const t0 = performance.now()
  for (const raw of applyRaw) store.put((await reader.verify(decodeMessage(raw))).nodes)
  out.proof_apply = applyRaw.length / ((performance.now() - t0) / 1000)
}

// the crypto floor: one signature check, and BLAKE2b throughput
{
  const ed = new Ed25519PublicKey(key)
  const msg = fromHex(process.argv[4] || '')
  const sig = fromHex(process.argv[5] || '')
  if (msg.length) {
    const n = 2000
    const t0 = performance.now()
    for (let i = 0; i < n; i++) await ed.verify(msg, sig)
    out.ed25519_verify = n / ((performance.now() - t0) / 1000)
  }
  const block = new Uint8Array(65536).map((_, i) => i & 255)
  for (let i = 0; i < 50; i++) leafHash(block)
  const t0 = performance.now()
  let n = 0
  while (performance.now() - t0 < 1000) { blake2b(block); n++ }
  out.blake2b_mb_s = (n * block.length) / 1e6 / ((performance.now() - t0) / 1000)
}
process.stdout.write(JSON.stringify(out) + '\n')
