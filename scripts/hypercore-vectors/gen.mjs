// Writes tests/data/hypercore-vectors.json: reference values for the feed format, taken from the
// pinned npm modules in ./node_modules (installed by ./regenerate). Every value the file states is
// either read from a real Hypercore or recomputed here from hypercore-crypto and flat-tree, and the
// two are checked against each other before anything is written.
//
// Usage: node gen.mjs [output-path]   (default: <repo>/tests/data/hypercore-vectors.json)

import { createRequire } from 'node:module'
import { strict as assert } from 'node:assert'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const REPO = path.resolve(HERE, '..', '..')
const OUTPUT = process.argv[2]
  ? path.resolve(process.argv[2])
  : path.join(REPO, 'tests', 'data', 'hypercore-vectors.json')

// The reference modules are CommonJS and some of what we need lives in hypercore/lib.
const load = createRequire(path.join(HERE, 'package.json'))
const Hypercore = load('hypercore')
const caps = load('hypercore/lib/caps')
const messages = load('hypercore/lib/messages')
const Verifier = load('hypercore/lib/verifier')
const { MerkleTree } = load('hypercore/lib/merkle-tree')
const crypto = load('hypercore-crypto')
const ft = load('flat-tree')
const enc = load('compact-encoding')

// ------------------------------------------------------------------------------ inputs

const SEED = Buffer.alloc(32, 1)
const HANDSHAKE_HASH = Buffer.alloc(64, 2)
const BIG_FILL = 0xab
const SHORT_LIMIT = 64 // blocks longer than this are described, not spelled out
const WIRE_LIMIT = 4096 // wire messages longer than this are given by length only

// [value, how the JSON describes it]
const INPUT_BLOCKS = [
  [Buffer.from('a'), "'a'"],
  [Buffer.from('b'), "'b'"],
  [Buffer.from('c'), "'c'"],
  [Buffer.from('hello world'), "'hello world'"],
  [Buffer.alloc(65536, BIG_FILL), '65536 x 0xab'],
  [Buffer.from('f'), "'f'"],
  [Buffer.from('g'), "'g'"],
  [Buffer.from('h'), "'h'"]
]
const BLOCKS = INPUT_BLOCKS.map(([value]) => value)

const FLAVOURS = {
  compat: { options: '{ keyPair, compat: true }', extra: { compat: true } },
  legacy: { options: '{ keyPair, compat: true, legacy: true }', extra: { compat: true, legacy: true } },
  default: { options: '{ keyPair }  (v11 default: compat false)', extra: {} }
}

// Proof requests answered once every block is appended (the cores are at length 8).
const FINAL_PROOFS = [
  ['block2_full_upgrade', 'default',
    { block: { index: 2, nodes: 0 }, upgrade: { start: 0, length: 8 } },
    'receiver has nothing (length 0); block 2 plus upgrade to length 8'],
  ['block5_nodes3_no_upgrade', 'default',
    { block: { index: 5, nodes: 3 } },
    'receiver already has the length-8 tree roots (node 7) but not the path; nodes=3 levels of siblings'],
  ['block6_upgrade_4_to_8', 'default',
    { block: { index: 6, nodes: 0 }, upgrade: { start: 4, length: 4 } },
    'receiver is at length 4 (root 3); block 6 inside the upgraded range'],
  ['block1_upgrade_0_to_5_additional', 'compat',
    { block: { index: 1, nodes: 0 }, upgrade: { start: 0, length: 5 } },
    'sender is at length 8; upgrade asks for length 5 so additionalNodes extend it to 8 (signature is for length 8)'],
  ['hash_node_9_full_upgrade', 'compat',
    { hash: { index: 9, nodes: 0 }, upgrade: { start: 0, length: 8 } },
    'a "hash" request for tree node 9 (no block value)']
]

// The proof a fresh reader (knowing only the compat key) is given to apply.
const READER_PROOF = 'block1_upgrade_0_to_5_additional'

// Proof requests answered while the cores are at length 7 (the root set is then 3, 9, 12).
const LENGTH_7_PROOFS = [
  ['len7_block0_upgrade_0_to_4_additional_nonsibling', 'compat',
    { block: { index: 0, nodes: 0 }, upgrade: { start: 0, length: 4 } },
    'sender at length 7 (roots 3,9,12); additionalNodes [9,12] are not siblings of root 3'],
  ['len7_upgrade_only_2_to_4', 'default',
    { upgrade: { start: 2, length: 2 } },
    'upgrade-only proof, receiver at length 2 (root 1), sender at length 7']
]

// ------------------------------------------------------------------------------ helpers

const hex = (buf) => (buf === null || buf === undefined ? null : Buffer.from(buf).toString('hex'))
const u64 = (n) => Buffer.from(enc.encode(enc.uint64, n))
const nodeOut = ({ index, size, hash }) => ({ index, size, hash: hex(hash) })
const clone = (obj) => JSON.parse(JSON.stringify(obj))
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0

function versionOf (name) {
  return load(`${name}/package.json`).version
}

// The merkle tree over the first `count` blocks, worked out from the hash rules alone: a node
// exists once every leaf it spans exists; leaves hash their block, parents their two children.
function expectedTree (blocks) {
  const lastLeaf = 2 * (blocks.length - 1)
  const tree = new Map()
  const build = (index) => {
    if (tree.has(index)) return tree.get(index)
    let node
    if (index % 2 === 0) {
      const block = blocks[index / 2]
      node = { index, size: block.byteLength, hash: crypto.data(block) }
    } else {
      const [left, right] = ft.children(index).map(build)
      node = { index, size: left.size + right.size, hash: crypto.parent(left, right) }
    }
    tree.set(index, node)
    return node
  }
  const present = []
  for (let index = 0; index <= lastLeaf; index++) {
    if (ft.spans(index)[1] <= lastLeaf) present.push(build(index))
  }
  return { present, at: (index) => tree.get(index) }
}

async function openCore (root, name, options) {
  const dir = path.join(root, name)
  const core = new Hypercore(dir, options)
  await core.ready()
  return core
}

// ------------------------------------------------------------------------------ sections

function constantsSection () {
  const [tree, initiator, responder, manifest, namespace, encryption] = crypto.namespace('hypercore', 6)
  assert.ok(same(caps.MANIFEST, manifest) && same(caps.DEFAULT_NAMESPACE, namespace))
  return {
    namespace_input: "hypercore-crypto.namespace('hypercore', 6)",
    TREE: hex(tree),
    REPLICATE_INITIATOR: hex(initiator),
    REPLICATE_RESPONDER: hex(responder),
    MANIFEST: hex(manifest),
    DEFAULT_NAMESPACE: hex(namespace),
    DEFAULT_ENCRYPTION: hex(encryption),
    blake2b_hypercore: hex(crypto.hash(Buffer.from('hypercore')))
  }
}

function flatTreeSection () {
  const nodes = Array.from({ length: 31 }, (_, index) => ({
    index,
    depth: ft.depth(index),
    offset: ft.offset(index),
    parent: ft.parent(index),
    sibling: ft.sibling(index),
    children: ft.children(index),
    spans: ft.spans(index),
    count: ft.count(index)
  }))
  const roots = {}
  for (let length = 0; length <= 16; length++) roots[length] = ft.fullRoots(2 * length)
  return { nodes, full_roots_by_length: roots }
}

function keysSection (keyPair) {
  const manifest = Verifier.createManifest(Verifier.defaultSignerManifest(keyPair.publicKey))
  const encoded = Verifier.encodeManifest(manifest)
  const preimage = Buffer.concat([caps.MANIFEST, encoded])
  const manifestKey = crypto.hash(preimage)
  assert.ok(same(manifestKey, Verifier.manifestHash(manifest)))
  assert.ok(same(manifestKey, Hypercore.key(keyPair.publicKey)))
  return {
    manifestKey,
    section: {
      seed: hex(SEED),
      publicKey: hex(keyPair.publicKey),
      secretKey: hex(keyPair.secretKey),
      discoveryKey_of_publicKey: hex(crypto.discoveryKey(keyPair.publicKey)),
      default_manifest: {
        version: 1,
        hash: 'blake2b',
        allowPatch: false,
        quorum: 1,
        signers: [{
          signature: 'ed25519',
          namespace: hex(caps.DEFAULT_NAMESPACE),
          publicKey: hex(keyPair.publicKey)
        }],
        prologue: null,
        linked: null,
        userData: null
      },
      default_manifest_encoded: hex(encoded),
      manifest_hash_preimage: hex(preimage),
      manifest_hash_key: hex(manifestKey),
      discoveryKey_of_manifest_hash_key: hex(crypto.discoveryKey(manifestKey)),
      Hypercore_key_of_publicKey: hex(Hypercore.key(keyPair.publicKey)),
      Hypercore_key_of_publicKey_compat: hex(Hypercore.key(keyPair.publicKey, { compat: true }))
    }
  }
}

function capabilitySection (keyPair) {
  return {
    note: 'caps.replicate(isInitiator, key, handshakeHash) = keyed BLAKE2b-256(key=handshakeHash, msg=REPLICATE_{INITIATOR|RESPONDER} || coreKey)',
    handshakeHash: hex(HANDSHAKE_HASH),
    key: hex(keyPair.publicKey),
    initiator: hex(caps.replicate(true, keyPair.publicKey, HANDSHAKE_HASH)),
    responder: hex(caps.replicate(false, keyPair.publicKey, HANDSHAKE_HASH))
  }
}

function blocksSection () {
  return INPUT_BLOCKS.map(([value, desc], index) => {
    const entry = { index, desc, byteLength: value.byteLength }
    if (value.byteLength <= SHORT_LIMIT) {
      entry.value_hex = hex(value)
    } else {
      assert.ok(value.every((byte) => byte === BIG_FILL))
      entry.value_hex = null
      entry.fill_byte = '0x' + BIG_FILL.toString(16)
    }
    entry.leaf_preimage_prefix = hex(Buffer.concat([Buffer.from([0]), u64(value.byteLength)]))
    entry.leaf_hash = hex(crypto.data(value))
    return entry
  })
}

function parentExample () {
  const left = { index: 0, size: 1, hash: crypto.data(BLOCKS[0]) }
  const right = { index: 2, size: 1, hash: crypto.data(BLOCKS[1]) }
  return {
    index: 1,
    preimage: hex(Buffer.concat([Buffer.from([1]), u64(left.size + right.size), left.hash, right.hash])),
    hash: hex(crypto.parent(left, right))
  }
}

// What each flavour signs for a tree of `length` with root hash `treeHash`.
function signableFor (flavour, treeHash, length, fork, manifestKey) {
  if (flavour === 'default') return caps.treeSignable(manifestKey, treeHash, length, fork)
  return caps.treeSignableCompat(treeHash, length, fork, flavour === 'legacy')
}

// One length of one core: its signature is recreated with the secret key and must match.
async function lengthEntry (flavour, core, length, roots, treeHash, keyPair, manifestKey) {
  assert.equal(core.length, length)
  assert.ok(same(await core.treeHash(length), treeHash), `${flavour}: tree hash at ${length}`)
  const signable = signableFor(flavour, treeHash, length, 0, manifestKey)
  const stored = core.state.signature
  let ed25519 = stored
  if (flavour === 'default') {
    // Non-compat cores store a multisignature wrapping the single ed25519 signature.
    const multi = enc.decode(messages.multiSignature, stored)
    assert.equal(multi.proofs.length, 1)
    assert.equal(multi.proofs[0].signer, 0)
    assert.equal(multi.proofs[0].patch, 0)
    assert.equal(multi.patch.length, 0)
    assert.ok(same(await core.signable(length, 0), signable))
    ed25519 = multi.proofs[0].signature
  }
  assert.ok(same(ed25519, crypto.sign(signable, keyPair.secretKey)), `${flavour}: signature at ${length}`)
  assert.ok(crypto.verify(signable, ed25519, keyPair.publicKey))

  const entry = {
    length,
    fork: 0,
    byteLength: core.byteLength,
    signable: hex(signable),
    signature: hex(stored)
  }
  if (flavour === 'default') entry.raw_ed25519_signature = hex(ed25519)
  if (flavour === 'compat') {
    const preimage = [Buffer.from([2])]
    for (const root of roots) preimage.push(Buffer.from(root.hash), u64(root.index), u64(root.size))
    entry.roots = roots.map(nodeOut)
    entry.tree_hash = hex(treeHash)
    entry.tree_hash_preimage = hex(Buffer.concat(preimage))
  }
  return entry
}

async function proofEntry ([name, flavour, request, note], core) {
  const proof = await core.proof(clone(request))
  const wire = enc.encode(messages.wire.data, {
    request: 1,
    fork: proof.fork,
    block: proof.block,
    hash: proof.hash,
    seek: proof.seek,
    upgrade: proof.upgrade,
    manifest: null
  })
  const { block, hash, upgrade } = proof
  return {
    name,
    core: flavour,
    core_key: hex(core.key),
    request,
    note,
    fork: proof.fork,
    block: block ? { index: block.index, value_hex: hex(block.value), nodes: block.nodes.map(nodeOut) } : null,
    hash: hash ? { index: hash.index, nodes: hash.nodes.map(nodeOut) } : null,
    upgrade: upgrade
      ? {
          start: upgrade.start,
          length: upgrade.length,
          nodes: upgrade.nodes.map(nodeOut),
          additionalNodes: upgrade.additionalNodes.map(nodeOut),
          signature: hex(upgrade.signature)
        }
      : null,
    wire_data_message_hex: wire.byteLength <= WIRE_LIMIT ? hex(wire) : null,
    wire_data_message_len: wire.byteLength
  }
}

function wireExamples (keyPair) {
  const w = messages.wire
  const encode = (type, value) => hex(enc.encode(type, value))
  return {
    sync: encode(w.sync, {
      fork: 0, length: 8, remoteLength: 5, canUpgrade: true, uploading: true, downloading: true,
      hasManifest: false, allowPush: false
    }),
    request_block_upgrade: encode(w.request, {
      id: 1, fork: 0, block: { index: 2, nodes: 0 }, hash: null, seek: null,
      upgrade: { start: 0, length: 8 }, manifest: false, priority: 0
    }),
    want: encode(w.want, { start: 0, length: 1024, any: false }),
    range: encode(w.range, { drop: false, start: 0, length: 8 }),
    bitfield: encode(w.bitfield, { start: 0, bitfield: new Uint32Array([0xff]) }),
    noData: encode(w.noData, { request: 1, reason: 0 }),
    handshake: encode(w.handshake, {
      seeks: true, capability: caps.replicate(true, keyPair.publicKey, HANDSHAKE_HASH)
    })
  }
}

// A truncation bumps the fork id, and the fork id is part of what gets signed.
async function truncationSection (core, keyPair) {
  const steps = []
  const record = async (op) => {
    const treeHash = await core.treeHash()
    const signable = caps.treeSignableCompat(treeHash, core.length, core.fork, false)
    assert.ok(crypto.verify(signable, core.state.signature, keyPair.publicKey), op)
    steps.push({
      op,
      length: core.length,
      fork: core.fork,
      tree_hash: hex(treeHash),
      signable: hex(signable),
      signature: hex(core.state.signature)
    })
  }
  await core.truncate(6)
  await record('truncate(6)')
  await core.append(Buffer.from('X'))
  await record("append('X')")
  return { core: 'compat', steps }
}

// ------------------------------------------------------------------------------ main

async function generate (storage) {
  const keyPair = crypto.keyPair(SEED)
  const { manifestKey, section: keys } = keysSection(keyPair)

  const out = {
    description: 'Hypercore test vectors generated with the reference JS modules (see "versions"). All binary values are lowercase hex.',
    versions: {
      hypercore: versionOf('hypercore'),
      'hypercore-crypto': versionOf('hypercore-crypto'),
      'flat-tree': versionOf('flat-tree'),
      'compact-encoding': versionOf('compact-encoding'),
      'sodium-universal': versionOf('sodium-universal'),
      node: process.version
    },
    constants: constantsSection(),
    flat_tree: flatTreeSection(),
    keys,
    replication_capability: capabilitySection(keyPair),
    blocks: blocksSection()
  }

  const cores = {}
  out.cores = {}
  for (const [flavour, { options, extra }] of Object.entries(FLAVOURS)) {
    const core = await openCore(storage, flavour, { keyPair, ...extra })
    cores[flavour] = core
    out.cores[flavour] = {
      open_options: options,
      key: hex(core.key),
      discoveryKey: hex(core.discoveryKey),
      core_compat_flag: core.core.compat,
      manifest_version: core.manifest ? core.manifest.version : null,
      lengths: []
    }
  }
  assert.ok(same(cores.compat.key, keyPair.publicKey))
  assert.ok(same(cores.default.key, manifestKey))

  // Grow all three cores one block at a time, checking each length against the recomputation.
  const treeNodes = []
  const proofs = []
  for (let length = 1; length <= BLOCKS.length; length++) {
    for (const core of Object.values(cores)) await core.append(BLOCKS[length - 1])
    const tree = expectedTree(BLOCKS.slice(0, length))

    for (const node of tree.present) {
      for (const flavour of ['compat', 'default']) {
        const stored = await MerkleTree.get(cores[flavour].state, node.index)
        assert.ok(stored, `${flavour}: node ${node.index} missing at length ${length}`)
        assert.equal(stored.size, node.size)
        assert.ok(same(stored.hash, node.hash), `${flavour}: node ${node.index} at length ${length}`)
      }
    }
    treeNodes.push({ length, nodes: tree.present.map(nodeOut) })

    if (length === 7) {
      for (const request of LENGTH_7_PROOFS) proofs.push(await proofEntry(request, cores[request[1]]))
    }

    const roots = ft.fullRoots(2 * length).map(tree.at)
    const treeHash = crypto.tree(roots)
    for (const [flavour, core] of Object.entries(cores)) {
      out.cores[flavour].lengths.push(
        await lengthEntry(flavour, core, length, roots, treeHash, keyPair, manifestKey))
    }
  }
  out.tree_nodes_by_length = treeNodes
  out.empty_tree_hash = hex(crypto.tree([]))
  out.parent_example = parentExample()

  for (const request of FINAL_PROOFS) proofs.push(await proofEntry(request, cores[request[1]]))
  out.proofs = proofs

  // A fresh reader that knows only the key must accept one of the proofs above.
  {
    const [name, , request] = FINAL_PROOFS.find(([proofName]) => proofName === READER_PROOF)
    const reader = await openCore(storage, 'reader', { key: cores.compat.key, compat: true })
    const applied = await reader.applyProof(await cores.compat.proof(clone(request)))
    out.reader_apply_check = {
      core: 'compat',
      proof: name,
      applied: Boolean(applied),
      reader_length_after: reader.length
    }
    await reader.close()
  }

  out.wire_examples = wireExamples(keyPair)
  out.truncation = await truncationSection(cores.compat, keyPair)

  for (const core of Object.values(cores)) await core.close()
  return out
}

const storage = fs.mkdtempSync(path.join(os.tmpdir(), 'hypercore-vectors-'))
try {
  const vectors = await generate(storage)
  fs.writeFileSync(OUTPUT, JSON.stringify(vectors, null, 1) + '\n')
  console.log(`wrote ${OUTPUT} (${fs.statSync(OUTPUT).size} bytes)`)
} catch (err) {
  console.error(`gen.mjs: ${err && err.stack ? err.stack : err}`)
  process.exitCode = 1
} finally {
  fs.rmSync(storage, { recursive: true, force: true })
}
