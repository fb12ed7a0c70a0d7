// Reference figures for bench/bench_feed.py: the same workloads on npm hypercore 11 (compat mode).
// Usage: node reference_feed.js NODE_MODULES_DIR WORK_DIR JSON_PARAMS  -> prints one JSON object.
// It measures only; bench_feed.py prints it beside our figures.
'use strict'

const path = require('path')
const fs = require('fs')

const [nodeModulesArg, workDir, paramsJson] = process.argv.slice(2)
const nodeModules = path.resolve(nodeModulesArg)
const params = JSON.parse(paramsJson)
const req = (m) => require(path.join(nodeModules, m))

const Hypercore = req('hypercore')
const hcrypto = req('hypercore-crypto')
const b4a = req('b4a')
const { MerkleTree } = req('hypercore/lib/merkle-tree')

const now = () => Number(process.hrtime.bigint()) / 1e9

async function openCore(name, opts) {
  const dir = path.join(workDir, name)
  fs.rmSync(dir, { recursive: true, force: true })
  const core = new Hypercore(dir, opts)
  await core.ready()
  return core
}

function blocksOf(count, size) {
  const out = []
  for (let i = 0; i < count; i++) {
    const b = b4a.alloc(size)
    b.writeUInt32LE(i, 0) // distinct blocks, like a real stream
    out.push(b)
  }
  return out
}

async function appendRate(keyPair, name, count, size, perCall) {
  const core = await openCore(name, { keyPair, compat: true })
  const blocks = blocksOf(count, size)
  const t0 = now()
  for (let i = 0; i < count; i += perCall) await core.append(blocks.slice(i, i + perCall))
  const elapsed = now() - t0
  return { core, rate: count / elapsed }
}

// Full verify: read every block, rehash it against its stored leaf, rebuild the tree hash from
// the stored roots and check the signature (what `streamer feed verify` does).
async function fullVerify(core) {
  const t0 = now()
  for (let i = 0; i < core.length; i++) {
    const block = await core.get(i)
    const leaf = await MerkleTree.get(core.state, 2 * i)
    if (!b4a.equals(hcrypto.data(block), leaf.hash)) throw new Error('bad block ' + i)
  }
  const roots = await MerkleTree.getRoots(core.state, core.length)
  const signable = b4a.concat([
    hcrypto.namespace('hypercore', 1)[0],
    hcrypto.tree(roots),
    u64(core.length),
    u64(0)
  ])
  if (!hcrypto.verify(signable, core.state.signature, core.key)) throw new Error('bad signature')
  return core.length / (now() - t0)
}

function u64(n) {
  const b = b4a.alloc(8)
  b.writeBigUInt64LE(BigInt(n))
  return b
}

async function proofRates(writer, samples) {
  const count = writer.length
  const picks = []
  for (let i = 0; i < samples; i++) picks.push((i * 7919) % count)

  // What a fresh reader asks for: the block plus an upgrade to the writer's length.
  let t0 = now()
  const proofs = []
  for (const index of picks) {
    proofs.push(await writer.proof({ block: { index, nodes: 0 }, upgrade: { start: 0, length: count } }))
  }
  const build = samples / (now() - t0)

  const reader = await openCore('proof-reader', { key: writer.key, compat: true })
  t0 = now()
  for (const proof of proofs) await reader.verifyFullyRemote(proof)
  const verify = samples / (now() - t0)

  // Sparse download into a reader: the first proof upgrades, the rest carry their missing nodes.
  const first = await writer.proof({ block: { index: 0, nodes: 0 }, upgrade: { start: 0, length: count } })
  await reader.applyProof(first)
  const applyProofs = []
  for (const index of new Set(picks)) {
    if (index === 0) continue
    const nodes = await reader.missingNodes(index)
    applyProofs.push(await writer.proof({ block: { index, nodes } }))
  }
  t0 = now()
  for (const proof of applyProofs) {
    if (!(await reader.applyProof(proof))) throw new Error('proof not applied')
  }
  const apply = applyProofs.length / (now() - t0)
  await reader.close()
  return { proof_build: build, proof_verify: verify, proof_apply: apply }
}

async function main() {
  const keyPair = hcrypto.keyPair(b4a.alloc(32, 7))
  const out = { version: req('hypercore/package.json').version }
  const one = await appendRate(keyPair, 'append-1', params.append_1_blocks, params.block_size, 1)
  out.append_1 = one.rate
  await one.core.close()
  const many = await appendRate(keyPair, 'append-16', params.feed_blocks, params.block_size, 16)
  out.append_16 = many.rate
  out.verify_all = await fullVerify(many.core)
  Object.assign(out, await proofRates(many.core, params.proof_samples))
  await many.core.close()
  fs.rmSync(workDir, { recursive: true, force: true })
  process.stdout.write(JSON.stringify(out) + '\n')
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
})
