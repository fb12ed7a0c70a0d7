// Flat-tree, tree hashes, signatures and the seven reference proofs (generation, wire bytes,
// verification), plus every single-change forgery of them, against the hypercore vectors.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import * as c from '../../streamer/web/crypto.js'
import { fromHex, toHex } from '../../streamer/web/encoding.js'
import * as ft from '../../streamer/web/flat-tree.js'
import { ForkMismatchError, MemoryNodeStore, MerkleTree, ProofError } from '../../streamer/web/merkle.js'
import { DATA, decodePayload, encodePayload } from '../../streamer/web/wire.js'
import {
  blockValues, clone, fullTree, node, nodesAt, publicKey, readerAt, verifierFor, vectors,
} from './helpers.mjs'

const values = blockValues()

test('flat-tree arithmetic of the reference nodes and roots', () => {
  for (const n of vectors.flat_tree.nodes) {
    assert.equal(ft.depth(n.index), n.depth)
    assert.equal(ft.offset(n.index), n.offset)
    assert.equal(ft.parent(n.index), n.parent)
    assert.equal(ft.sibling(n.index), n.sibling)
    assert.deepEqual(ft.children(n.index), n.children)
    assert.deepEqual(ft.spans(n.index), n.spans)
    assert.equal(ft.count(n.index), n.count)
  }
  for (const [length, roots] of Object.entries(vectors.flat_tree.full_roots_by_length)) {
    assert.deepEqual(ft.fullRoots(2 * Number(length)), roots)
  }
  // beyond 2^31, where bit operators would wrap
  const big = 2 ** 40 - 1 // depth 40
  assert.equal(ft.depth(big), 40)
  assert.equal(ft.parent(big), 2 ** 41 - 1)
  assert.equal(ft.sibling(big), 3 * 2 ** 40 - 1)
  assert.deepEqual(ft.fullRoots(2 * (2 ** 33 + 1)), [2 ** 33 - 1, 2 ** 34])
})

test('parent and tree hashes, empty tree, capabilities', () => {
  const p = vectors.parent_example
  const nodes = nodesAt(2)
  const parent = nodes.find((n) => n.index === p.index)
  const [l, r] = [nodes.find((n) => n.index === 0), nodes.find((n) => n.index === 2)]
  assert.equal(toHex(c.parentHash(r, l)), p.hash)
  assert.equal(toHex(parent.hash), p.hash)
  assert.equal(toHex(c.treeHash([])), vectors.empty_tree_hash)
  for (const t of vectors.tree_nodes_by_length) {
    const store = new MemoryNodeStore(t.nodes.map(node))
    for (const n of t.nodes) {
      if (n.index % 2 === 0) continue
      const [a, b] = ft.children(n.index)
      assert.equal(toHex(c.parentHash(store.get(a), store.get(b))), n.hash)
    }
  }
  const cap = vectors.replication_capability
  const hh = fromHex(cap.handshakeHash)
  assert.equal(toHex(c.replicationCapability(hh, fromHex(cap.key), true)), cap.initiator)
  assert.equal(toHex(c.replicationCapability(hh, fromHex(cap.key), false)), cap.responder)
  assert.equal(toHex(c.manifestHash(c.defaultManifest(publicKey))), vectors.keys.manifest_hash_key)
  assert.equal(toHex(c.defaultManifest(publicKey)), vectors.keys.default_manifest_encoded)
})

test('signatures of every length: compat, legacy and default, and their signable bytes', async () => {
  const checks = []
  for (const kind of ['compat', 'legacy', 'default']) {
    const verifier = verifierFor(kind)
    assert.equal(toHex(verifier.key), vectors.cores[kind].key)
    vectors.cores[kind].lengths.forEach((L, i) => {
      // the tree is the same for every kind of core; only compat lists its roots
      const C = vectors.cores.compat.lengths[i]
      assert.equal(C.length, L.length)
      const th = c.treeHash(C.roots.map(node))
      assert.equal(toHex(th), C.tree_hash)
      const signable = kind === 'compat'
        ? c.signable(th, L.length, L.fork)
        : kind === 'legacy'
          ? c.signableLegacy(th, L.length, L.fork)
          : c.signableManifest(verifier.key, th, L.length, L.fork)
      assert.equal(toHex(signable), L.signable)
      checks.push((async () => {
        const sig = fromHex(L.signature)
        assert.equal(await verifier.verify(th, L.length, L.fork, sig), true, `${kind} ${L.length}`)
        assert.equal(await verifier.verify(th, L.length + 1, L.fork, sig), false)
        const bad = sig.slice()
        bad[bad.length > 64 ? 10 : 0] ^= 1
        assert.equal(await verifier.verify(th, L.length, L.fork, bad), false)
      })())
    })
  }
  await Promise.all(checks)
  for (const step of vectors.truncation.steps) {
    const ok = await c.ed25519Verify(publicKey, fromHex(step.signable), fromHex(step.signature))
    assert.equal(ok, true, step.op)
  }
})

function treeFor (p) {
  return fullTree(p.core, p.name.startsWith('len7') ? 7 : 8)
}

function readerFor (p, sender) {
  const up = p.request.upgrade
  return readerAt(p.core, up ? up.start : sender.length)
}

function requestOf (j) {
  return {
    type: 'request', id: 1, fork: 0, block: j.block || null, hash: j.hash || null, seek: null,
    upgrade: j.upgrade || null, manifest: false, priority: 0,
  }
}

function madeProof (p) {
  const tree = treeFor(p)
  const data = tree.proof(requestOf(p.request))
  if (data.block) data.block.value = values[data.block.index]
  return { tree, data }
}

for (const p of vectors.proofs) {
  test(`reference proof ${p.name}: generated byte for byte`, () => {
    const { data } = madeProof(p)
    assert.equal(toHex(encodePayload(data)), p.wire_data_message_hex)
  })

  test(`reference proof ${p.name}: verifies and upgrades the reader`, async () => {
    const sender = treeFor(p)
    const data = decodePayload(DATA, fromHex(p.wire_data_message_hex))
    const { tree, store } = readerFor(p, sender)
    const batch = await tree.verify(data)
    for (const n of batch.nodes) {
      const want = sender.getNode(n.index)
      assert.ok(want && toHex(want.hash) === toHex(n.hash) && want.size === n.size, `node ${n.index}`)
    }
    store.put(batch.nodes)
    tree.commit(batch)
    if (p.upgrade) {
      assert.equal(batch.upgraded, true)
      assert.equal(tree.length, sender.length)
      assert.equal(toHex(tree.treeHash()), toHex(sender.treeHash()))
    } else {
      assert.equal(batch.upgraded, false)
    }
    if (p.block) {
      const i = p.block.index
      assert.equal(batch.block, i)
      assert.deepEqual(batch.value, values[i])
      assert.equal(tree.missingNodes(i), 0)
    }
    if (p.hash) assert.equal(batch.hashIndex, p.hash.index)
  })

  test(`reference proof ${p.name}: every forgery is rejected and changes nothing`, async () => {
    const { tree: sender, data } = madeProof(p)
    const cases = tampered(data)
    assert.ok(cases.length >= 8)
    for (const [name, bad] of cases) {
      const { tree, store } = readerFor(p, sender)
      const before = [tree.length, tree.fork, tree.roots.length, store.size]
      await assert.rejects(tree.verify(bad), ProofError, name)
      assert.deepEqual([tree.length, tree.fork, tree.roots.length, store.size], before, name)
      await tree.verify(data) // the genuine proof still verifies on the same reader
    }
  })
}

function tampered (data) {
  const out = []
  const extra = { index: 2, size: 1, hash: new Uint8Array(32) }
  const lists = (d) => {
    const l = []
    if (d.block) l.push(d.block.nodes)
    if (d.hash) l.push(d.hash.nodes)
    if (d.upgrade) l.push(d.upgrade.nodes, d.upgrade.additionalNodes)
    return l
  }
  const variant = (name, change) => {
    const d = clone(data)
    change(d)
    out.push([name, d])
  }
  if (data.block) {
    variant('value', (d) => { d.block.value[d.block.value.length - 1] ^= 1 })
    variant('value+', (d) => { d.block.value = new Uint8Array([...d.block.value, 0]) })
    variant('index', (d) => { d.block.index ^= 1 })
  }
  lists(data).forEach((nodes, li) => {
    nodes.forEach((n, ni) => {
      variant(`hash ${li}/${ni}`, (d) => { lists(d)[li][ni].hash[0] ^= 1 })
      variant(`size ${li}/${ni}`, (d) => { lists(d)[li][ni].size += 1 })
      variant(`missing ${li}/${ni}`, (d) => { lists(d)[li].splice(ni, 1) })
    })
    variant(`extra ${li}`, (d) => { lists(d)[li].push(clone(extra)) })
    variant(`dup ${li}`, (d) => {
      const l = lists(d)[li]
      l.push(l.length ? clone(l[l.length - 1]) : clone(extra))
    })
  })
  if (data.upgrade) {
    variant('signature', (d) => { d.upgrade.signature[d.upgrade.signature.length - 1] ^= 1 })
    variant('no signature', (d) => { d.upgrade.signature = new Uint8Array(0) })
    variant('length', (d) => { d.upgrade.length += 1 })
  }
  variant('fork', (d) => { d.fork += 1 })
  return out
}

test('reader apply check: an empty reader takes the reference proof', async () => {
  const check = vectors.reader_apply_check
  const p = vectors.proofs.find((x) => x.name === check.proof)
  const { data } = madeProof(p)
  const store = new MemoryNodeStore()
  const reader = new MerkleTree(store, verifierFor(check.core))
  const batch = await reader.verify(data)
  store.put(batch.nodes)
  reader.commit(batch)
  assert.equal(reader.length, check.reader_length_after)
})

test('a proof on another fork without an upgrade is a fork mismatch', async () => {
  const sender = fullTree('compat', 8)
  const { tree } = readerAt('compat', 8)
  const data = sender.proof(requestOf({ block: { index: 5, nodes: tree.missingNodes(5) } }))
  data.block.value = values[5]
  await tree.verify(clone(data))
  data.fork = 1
  await assert.rejects(tree.verify(data), ForkMismatchError)
})

test('sparse readers: missing nodes and proofs that stop at held nodes', async () => {
  const sender = fullTree('compat', 8)
  const { tree, store } = readerAt('compat', 8)
  assert.equal(tree.missingNodes(5), 3)
  assert.equal(tree.missingNodes(8), 0)
  for (const i of [5, 4, 0, 7, 6]) {
    const data = sender.proof(requestOf({ block: { index: i, nodes: tree.missingNodes(i) } }))
    data.block.value = values[i]
    const batch = await tree.verify(data)
    store.put(batch.nodes)
  }
  assert.equal(tree.missingNodes(4), 0)
  // A proof with fewer nodes than the reader needs stops at a node it does not hold.
  const { tree: fresh } = readerAt('compat', 8)
  const short = sender.proof(requestOf({ block: { index: 5, nodes: 1 } }))
  short.block.value = values[5]
  await assert.rejects(fresh.verify(short), ProofError)
})
