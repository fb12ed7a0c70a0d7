// Shared fixtures of the JS unit tests: the hypercore reference vectors and trees built from them.

import { readFileSync } from 'node:fs'

import { fromHex } from '../../streamer/web/encoding.js'
import { MemoryFeed } from '../../streamer/web/feed.js'
import { CompatVerifier, DefaultManifestVerifier, MemoryNodeStore, MerkleTree } from '../../streamer/web/merkle.js'
import { fullRoots } from '../../streamer/web/flat-tree.js'

export const vectors = JSON.parse(
  readFileSync(new URL('../data/hypercore-vectors.json', import.meta.url), 'utf8'))

export const publicKey = fromHex(vectors.keys.publicKey)

export function node (j) {
  return { index: j.index, size: j.size, hash: fromHex(j.hash) }
}

export function blockValues () {
  return vectors.blocks.map((b) => b.value_hex !== null
    ? fromHex(b.value_hex)
    : new Uint8Array(b.byteLength).fill(parseInt(b.fill_byte, 16)))
}

export function verifierFor (kind) {
  if (kind === 'compat') return new CompatVerifier(publicKey)
  if (kind === 'legacy') return new CompatVerifier(publicKey, true)
  return new DefaultManifestVerifier(publicKey)
}

/** Every node of the reference tree of `length` blocks. */
export function nodesAt (length) {
  if (length === 0) return []
  return vectors.tree_nodes_by_length.find((t) => t.length === length).nodes.map(node)
}

/** A full (writer-side) tree of `length` blocks with the reference signature for `kind`. */
export function fullTree (kind, length) {
  const store = new MemoryNodeStore(nodesAt(length))
  const sig = fromHex(vectors.cores[kind].lengths[length - 1].signature)
  return new MerkleTree(store, verifierFor(kind), { length, signature: sig })
}

/** A sparse reader that holds only the signed roots of `length` blocks. */
export function readerAt (kind, length) {
  const all = new MemoryNodeStore(nodesAt(length))
  const roots = fullRoots(2 * length).map((i) => all.get(i))
  const store = new MemoryNodeStore(roots)
  const sig = length ? fromHex(vectors.cores[kind].lengths[length - 1].signature) : null
  return { tree: new MerkleTree(store, verifierFor(kind), { length, signature: sig }), store }
}

export function clone (x) {
  if (x instanceof Uint8Array) return x.slice()
  if (Array.isArray(x)) return x.map(clone)
  if (x && typeof x === 'object') {
    const out = {}
    for (const [k, v] of Object.entries(x)) out[k] = clone(v)
    return out
  }
  return x
}

/** A feed already holding the reference feed's blocks 0..length-1, as if it had verified them. */
export function seededFeed (length = 8) {
  const values = blockValues()
  const feed = new MemoryFeed(publicKey)
  feed.nodes.put(nodesAt(length))
  feed.tree = new MerkleTree(feed.nodes, feed.verifier, {
    length, signature: fromHex(vectors.cores.compat.lengths[length - 1].signature),
  })
  for (let i = 0; i < length; i++) {
    feed.blocks.set(i, values[i])
    feed.blockBytes += values[i].length
    feed.present.add(i, i + 1)
  }
  return feed
}
