// The measuring loops of bench_js_verify: browser-compatible (no node imports), so the same code
// runs in node (bench_js_verify.mjs) and in headless Chromium (bench_js_verify.py --browser).

import { blake2b } from '../streamer/web/blake2b.js'
import { Ed25519PublicKey, leafHash } from '../streamer/web/crypto.js'
import { CompatVerifier, MemoryNodeStore, MerkleTree } from '../streamer/web/merkle.js'
import { decodeMessage } from '../streamer/web/wire.js'

/** Split u32le-length-prefixed messages. */
export function messages (buf) {
  const out = []
  for (let o = 0; o < buf.length;) {
    const n = buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] * 2 ** 24)
    out.push(buf.subarray(o + 4, o + 4 + n))
    o += 4 + n
  }
  return out
}

/** Rates per second: proof_verify (block + upgrade from an empty reader, one at a time and 64 in
 *  flight), proof_apply (block-only proofs into a sparse reader), ed25519_verify, blake2b_mb_s. */
export async function measure ({ verifyRaw, firstRaw, applyRaw, key, msg, sig }) {
  const verifier = new CompatVerifier(key)
  const out = {}
  const fresh = () => new MerkleTree(new MemoryNodeStore(), verifier)
  for (const raw of verifyRaw.slice(0, 50)) await fresh().verify(decodeMessage(raw)) // warm up
  let t0 = performance.now()
  for (const raw of verifyRaw) await fresh().verify(decodeMessage(raw))
  out.proof_verify = verifyRaw.length / ((performance.now() - t0) / 1000)
  t0 = performance.now()
  for (let i = 0; i < verifyRaw.length; i += 64) {
    await Promise.all(verifyRaw.slice(i, i + 64).map((raw) => fresh().verify(decodeMessage(raw))))
  }
  out.proof_verify_concurrent = verifyRaw.length / ((performance.now() - t0) / 1000)

  const store = new MemoryNodeStore()
  const reader = new MerkleTree(store, verifier)
  const batch = await reader.verify(decodeMessage(firstRaw))
  store.put(batch.nodes)
  reader.commit(batch)
  t0 = performance.now()
  for (const raw of applyRaw) store.put((await reader.verify(decodeMessage(raw))).nodes)
  out.proof_apply = applyRaw.length / ((performance.now() - t0) / 1000)

  const ed = new Ed25519PublicKey(key)
  t0 = performance.now()
  for (let i = 0; i < 2000; i++) await ed.verify(msg, sig)
  out.ed25519_verify = 2000 / ((performance.now() - t0) / 1000)

  const block = new Uint8Array(65536).map((_, i) => i & 255)
  for (let i = 0; i < 50; i++) leafHash(block)
  t0 = performance.now()
  let n = 0
  while (performance.now() - t0 < 1000) { blake2b(block); n++ }
  out.blake2b_mb_s = (n * block.length) / 1e6 / ((performance.now() - t0) / 1000)
  return out
}
