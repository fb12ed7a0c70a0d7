// The Merkle tree of a Hypercore-compatible feed (FORMAT §1-2, §5), as streamer/core/merkle.py.
//
// One job: verify a peer's proof (block or hash path, upgrade, root signature) against our signed
// roots, and build proofs of what we hold for our own peers. Never stores anything itself: the
// caller stores a ProofBatch's nodes and then commits it. A proof that fails throws ProofError and
// changes nothing. Nodes are {index, size, hash}; a node store is anything with get(index).

import {
  Ed25519PublicKey, defaultManifest, leafHash, manifestHash, multisigSingleSignature,
  parentHashRaw, signable, signableLegacy, signableManifest, treeHash,
} from './crypto.js'
import { equal } from './encoding.js'
import { contains, fullRoots, leftSpan, parent, rightSpan, sibling } from './flat-tree.js'

export class ProofError extends Error {
  constructor (message) {
    super(message)
    this.name = 'ProofError'
  }
}

/** A proof made on another fork that we cannot apply (may be stale rather than malicious). */
export class ForkMismatchError extends ProofError {
  constructor (message) {
    super(message)
    this.name = 'ForkMismatchError'
  }
}

/** A request for something we do not hold or cannot prove. */
export class BlockNotFoundError extends Error {
  constructor (message) {
    super(message)
    this.name = 'BlockNotFoundError'
  }
}

export const MAX_PROOF_NODES = 256 // a real proof has at most ~3 * 64 nodes; more is hostile
// Python bounds blocks by 2^61 and node fields by u64; Numbers are exact to 2^53, so the tab
// refuses proofs past these tighter (still astronomically large) bounds.
export const MAX_BLOCKS = 2 ** 50
const MAX_INDEX = 2 ** 52
const MAX_SIZE = Number.MAX_SAFE_INTEGER
const BAD = '; the peer sent a bad proof'

/** Blocks under a node: 2^depth. */
function depthBlocks (index) {
  let n = 1
  while (index % 2 === 1) {
    index = (index - 1) / 2
    n *= 2
  }
  return n
}

function parentNode (a, b) {
  if (a.index > b.index) [a, b] = [b, a]
  const size = a.size + b.size
  return { index: parent(a.index), size, hash: parentHashRaw(size, a.hash, b.hash) }
}

/** parentNode for untrusted nodes: sizes and indexes must stay exact. */
function checkedParent (a, b) {
  if (a.size + b.size > MAX_SIZE || Math.max(a.index, b.index) >= MAX_INDEX) {
    throw new ProofError('proof nodes overflow 53 bits' + BAD)
  }
  return parentNode(a, b)
}

function nodeLists (data) {
  const lists = []
  if (data.block) lists.push(data.block.nodes)
  if (data.hash) lists.push(data.hash.nodes)
  if (data.seek) lists.push(data.seek.nodes)
  if (data.upgrade) lists.push(data.upgrade.nodes, data.upgrade.additionalNodes)
  return lists
}

function checkNodes (data) {
  for (const nodes of nodeLists(data)) {
    if (nodes.length > MAX_PROOF_NODES) throw new ProofError('proof has too many nodes' + BAD)
    for (const n of nodes) {
      if (!(n.index >= 0 && n.index <= MAX_INDEX && n.size >= 0 && n.size <= MAX_SIZE &&
            n.hash.length === 32)) {
        throw new ProofError(`malformed proof node ${n.index}` + BAD)
      }
    }
  }
}

function sameNode (a, b) {
  return a.index === b.index && a.size === b.size && equal(a.hash, b.hash)
}

// ---------------------------------------------------------------- verifiers

/** Compat cores (core key = public key): raw Ed25519 over the 80-byte (or legacy 48-byte) signable. */
export class CompatVerifier {
  constructor (publicKey, legacy = false) {
    this.publicKey = publicKey
    this.key = publicKey
    this._ed = new Ed25519PublicKey(publicKey)
    this._signable = legacy ? signableLegacy : signable
  }

  verify (treeHashBytes, length, fork, signature) {
    return this._ed.verify(this._signable(treeHashBytes, length, fork), signature)
  }
}

/** v11 default cores (core key = manifest hash, one ed25519 signer): 68-byte multiSignature. */
export class DefaultManifestVerifier {
  constructor (publicKey) {
    this.publicKey = publicKey
    this.key = manifestHash(defaultManifest(publicKey))
    this._ed = new Ed25519PublicKey(publicKey)
  }

  async verify (treeHashBytes, length, fork, signature) {
    const raw = multisigSingleSignature(signature)
    if (raw === null) return false
    return this._ed.verify(signableManifest(this.key, treeHashBytes, length, fork), raw)
  }
}

/** A Map-backed node store: get(index) -> node | undefined, put(nodes). */
export class MemoryNodeStore {
  constructor (nodes = []) {
    this.nodes = new Map()
    this.put(nodes)
  }

  get (index) {
    return this.nodes.get(index)
  }

  put (nodes) {
    for (const n of nodes) this.nodes.set(n.index, n)
  }

  delete (index) {
    this.nodes.delete(index)
  }

  get size () {
    return this.nodes.size
  }
}

/**
 * What a verified proof proves: `nodes` to store and, if `upgraded`, the new signed state.
 * `reorg` means the proof moves us to a newer fork.
 */
export class ProofBatch {
  constructor (baseLength, baseFork) {
    this.baseLength = baseLength
    this.baseFork = baseFork
    this.nodes = []
    this.upgraded = false
    this.reorg = false
    this.length = 0
    this.fork = 0
    this.roots = []
    this.signature = null
    this.block = null // block number whose value verified
    this.value = null
    this.hashIndex = null // tree index of a verified `hash` target
  }

  get byteLength () {
    return this.roots.reduce((n, r) => n + r.size, 0)
  }
}

// ---------------------------------------------------------------- the tree

export class MerkleTree {
  /**
   * @param store node store (get(index))
   * @param verifier CompatVerifier or DefaultManifestVerifier
   * @param opts {length, fork, signature, roots} of a signed state we already trust
   */
  constructor (store, verifier, { length = 0, fork = 0, signature = null, roots = null } = {}) {
    this.store = store
    this.verifier = verifier
    this.length = length
    this.fork = fork
    this.signature = signature
    this.roots = roots ? [...roots] : fullRoots(2 * length).map((i) => this._need(i))
  }

  get byteLength () {
    return this.roots.reduce((n, r) => n + r.size, 0)
  }

  treeHash () {
    return treeHash(this.roots)
  }

  getNode (index) {
    return this.store.get(index)
  }

  _need (index) {
    const node = this.store.get(index)
    if (node === undefined) {
      throw new BlockNotFoundError(`tree node ${index} is not stored; fetch it from a peer first`)
    }
    return node
  }

  /** Byte offset of a block in the feed: the byte length of the tree of `block` blocks. */
  byteOffset (block) {
    if (!(block >= 0 && block <= this.length)) {
      throw new BlockNotFoundError(`block ${block} is outside the feed (length ${this.length})`)
    }
    return fullRoots(2 * block).reduce((n, i) => n + this._need(i).size, 0)
  }

  /** How many nodes on the path up from block's leaf we lack (Request.block.nodes). */
  missingNodes (block) {
    const head = 2 * this.length
    let index = 2 * block
    if (index >= head) return 0
    let n = 0
    const roots = new Set(this.roots.map((r) => r.index))
    while (!contains(index, head) && !this._anchored(index, roots)) {
      n++
      index = parent(index)
    }
    return n
  }

  /** Whether a proof may stop at node index: we hold it and it is a root, or we hold its sibling
   *  too (nodes are stored in sibling pairs, so a held pair's path up is held). */
  _anchored (index, roots) {
    if (this.store.get(index) === undefined) return false
    return roots.has(index) || this.store.get(sibling(index)) !== undefined
  }

  /** Adopt a verified batch's state; its nodes must already be stored. */
  commit (batch) {
    if (!batch.upgraded) return
    if (!batch.reorg && (batch.baseLength !== this.length || batch.baseFork !== this.fork)) {
      throw new Error('batch was built against another tree state; verify again')
    }
    this.length = batch.length
    this.fork = batch.fork
    this.roots = [...batch.roots]
    this.signature = batch.signature
  }

  // ------------------------------------------------------------ proofs (sender)

  /**
   * The Data answering a block and/or upgrade request (hash requests too), block value left empty
   * for the caller to fill. BlockNotFoundError when out of range or we lack nodes. Seeks are
   * not served (our peers answer them with NoData).
   */
  proof (request) {
    const head = 2 * this.length
    const up = request.upgrade
    let start = 0
    let to = head
    if (up) {
      start = 2 * up.start
      to = start + 2 * up.length
      if (start >= to || to > head) {
        throw new BlockNotFoundError(
          `cannot upgrade from ${up.start} by ${up.length}: the feed has ${this.length} blocks`)
      }
    }
    if (request.seek) throw new BlockNotFoundError('seek requests are not served')
    let target = null
    let wanted = 0
    let isBlock = false
    let last = 0
    if (request.block) {
      target = 2 * request.block.index
      wanted = request.block.nodes
      isBlock = true
      last = request.block.index
    } else if (request.hash) {
      target = request.hash.index
      wanted = request.hash.nodes
      last = rightSpan(target) / 2
    }
    if (target !== null && rightSpan(target) >= head) {
      throw new BlockNotFoundError(`requested ${isBlock ? 'block ' + last : 'node ' + target} ` +
        `is beyond the feed length ${this.length}`)
    }
    const data = {
      type: 'data', request: request.id, fork: this.fork, block: null, hash: null, seek: null,
      upgrade: null, manifest: null,
    }
    if (target === null && !up) return data

    let path = null // the target's proof nodes once placed
    const place = (root) => {
      let index = target
      const out = isBlock ? [] : [this._need(index)]
      while (index !== root) {
        out.push(this._need(sibling(index)))
        index = parent(index)
      }
      path = out
    }
    let subTree = head
    if (target !== null && (!up || last < up.start)) {
      subTree = this._nodesToRoot(target, wanted, to)
      place(subTree)
    } else if (target !== null) {
      subTree = target
    }

    if (up) {
      const nodes = []
      let connected = start === 0
      for (const root of fullRoots(to)) {
        if (rightSpan(root) + 2 < start) continue // the receiver already has this root
        if (!connected && contains(root, start - 2)) {
          // Connect to the receiver's last root: siblings to the right of its last leaf.
          connected = true
          let cur = start - 2
          while (cur !== root) {
            const sib = sibling(cur)
            if (sib > start - 2) {
              if (target !== null && path === null && contains(sib, subTree)) {
                place(sib)
              } else {
                nodes.push(this._need(sib))
              }
            }
            cur = parent(cur)
          }
          continue
        }
        connected = true
        if (target !== null && path === null && contains(root, subTree)) {
          // The receiver rebuilds this root from the target's path, so it is not sent.
          place(root)
          continue
        }
        nodes.push(this._need(root))
      }
      const additionalNodes = head > to ? this._additional(to, head) : []
      data.upgrade = {
        start: up.start, length: up.length, nodes, additionalNodes,
        signature: this.signature || new Uint8Array(0),
      }
    }
    if (target !== null) {
      if (path === null) {
        throw new BlockNotFoundError('the requested block lies beyond the requested upgrade')
      }
      if (isBlock) {
        data.block = { index: target / 2, value: new Uint8Array(0), nodes: path }
      } else {
        data.hash = { index: target, nodes: path }
      }
    }
    return data
  }

  _nodesToRoot (index, nodes, head) {
    for (let i = 0; i < nodes; i++) {
      index = parent(index)
      if (contains(index, head)) {
        throw new BlockNotFoundError('request asks for more proof nodes than the tree holds')
      }
    }
    return index
  }

  _additional (start, to) {
    const out = []
    let connected = start === 0
    for (const root of fullRoots(to)) {
      if (rightSpan(root) + 2 < start) continue
      if (!connected && contains(root, start - 2)) {
        connected = true
        let cur = start - 2
        while (cur !== root) {
          const sib = sibling(cur)
          if (sib > start - 2) out.push(this._need(sib))
          cur = parent(cur)
        }
        continue
      }
      connected = true
      out.push(this._need(root))
    }
    return out
  }

  // ------------------------------------------------------------ proofs (receiver)

  /** Check a proof; resolve to the ProofBatch it proves. Rejects with ProofError (nothing
   *  changes) if invalid. The tree must not change while this runs (callers serialize). */
  async verify (data) {
    if (data.block && data.hash) {
      throw new ProofError('a proof carries both a block and a hash' + BAD)
    }
    let reorg = false
    if (data.fork !== this.fork) {
      if (!data.upgrade || data.fork < this.fork) {
        throw new ForkMismatchError(`proof is for fork ${data.fork} but the feed is at fork ${this.fork}`)
      }
      if (data.upgrade.start !== 0) throw new ProofError('a proof for a new fork must upgrade from block 0')
      reorg = true
    }
    checkNodes(data)
    if (data.block && data.block.index > MAX_BLOCKS) {
      throw new ProofError(`block ${data.block.index} is out of range` + BAD)
    }
    if (data.upgrade && data.upgrade.start + data.upgrade.length > MAX_BLOCKS) {
      throw new ProofError('upgrade is out of range' + BAD)
    }
    const batch = new ProofBatch(this.length, this.fork)
    let top = this._verifyTree(data, batch)
    if (data.upgrade) {
      if (await this._verifyUpgrade(data, top, batch, reorg)) top = null
      batch.reorg = reorg
    }
    if (top !== null) {
      const stored = this.store.get(top.index)
      if (stored === undefined || !sameNode(stored, top)) {
        throw new ProofError(`proof does not match our tree at node ${top.index}` + BAD)
      }
      if (!this._anchored(top.index, new Set(this.roots.map((r) => r.index)))) {
        throw new ProofError(`proof stops at node ${top.index}, whose path to a root we do not ` +
          'hold; the peer sent fewer nodes than asked')
      }
    }
    return batch
  }

  /** Hash the seek and target sibling paths up; return the path root (not yet trusted). */
  _verifyTree (data, batch) {
    const out = batch.nodes
    let seekRoot = null
    if (data.seek && data.seek.nodes.length) {
      seekRoot = climb(data.seek.nodes[0], data.seek.nodes.slice(1), null, out)
    }
    if (data.block) {
      const b = data.block
      const leaf = { index: 2 * b.index, size: b.value.length, hash: leafHash(b.value) }
      batch.block = b.index
      batch.value = b.value
      return climb(leaf, b.nodes, seekRoot, out)
    }
    if (data.hash) {
      if (!data.hash.nodes.length) throw new ProofError('hash proof without its target node' + BAD)
      const first = data.hash.nodes[0]
      if (first.index !== data.hash.index) throw new ProofError('hash proof for the wrong node' + BAD)
      batch.hashIndex = first.index
      return climb(first, data.hash.nodes.slice(1), seekRoot, out)
    }
    return seekRoot
  }

  /** Rebuild the signed roots from ours plus the proof; true if `top` was used for them. */
  async _verifyUpgrade (data, top, batch, reorg) {
    const up = data.upgrade
    const baseLength = reorg ? 0 : this.length
    if (up.start !== baseLength) {
      throw new ProofError(`upgrade starts at block ${up.start} but we have ${baseLength}; ` +
        'the proof is stale or bad')
    }
    if (up.length === 0) throw new ProofError('upgrade of zero blocks' + BAD)

    const roots = reorg ? [] : [...this.roots]
    const out = batch.nodes
    let length = baseLength
    const queue = up.nodes
    let qi = 0
    let extra = top

    const shift = (index) => {
      if (extra !== null && extra.index === index) {
        const node = extra
        extra = null
        return node
      }
      if (qi >= queue.length || queue[qi].index !== index) {
        const got = qi < queue.length ? queue[qi].index : 'nothing'
        throw new ProofError(`expected node ${index}, got ${got}` + BAD)
      }
      return queue[qi++]
    }
    const appendRoot = (node) => {
      out.push(node)
      length += depthBlocks(node.index)
      while (roots.length && roots[roots.length - 1].index === sibling(node.index)) {
        node = checkedParent(roots.pop(), node)
        out.push(node)
      }
      roots.push(node)
    }

    const to = 2 * (up.start + up.length)
    let grow = roots.length > 0
    let i = 0
    for (const root of fullRoots(to)) {
      if (i < roots.length && roots[i].index === root) {
        i++
        continue
      }
      if (grow) {
        grow = false
        if (i < roots.length) {
          let cur = roots[roots.length - 1].index
          if (!contains(root, cur)) throw new ProofError('upgrade does not extend our tree' + BAD)
          while (cur !== root) {
            appendRoot(shift(sibling(cur)))
            cur = roots[roots.length - 1].index
          }
          continue
        }
      }
      appendRoot(shift(root))
    }
    if (qi !== queue.length) throw new ProofError('upgrade carries unused nodes' + BAD)
    if (!roots.length || length !== up.start + up.length) {
      throw new ProofError('upgrade does not reach its stated length' + BAD)
    }

    const extraNodes = up.additionalNodes
    let k = 0
    let pos = sibling(roots[roots.length - 1].index)
    while (k < extraNodes.length && extraNodes[k].index === pos) {
      appendRoot(extraNodes[k++])
      pos = sibling(roots[roots.length - 1].index)
    }
    while (k < extraNodes.length) {
      const node = extraNodes[k++]
      while (node.index !== pos) {
        if (pos % 2 === 0 || node.index > rightSpan(pos) || node.index < leftSpan(pos)) {
          throw new ProofError(`unexpected node ${node.index}` + BAD)
        }
        pos = pos - depthBlocks(pos) / 2 // left child
      }
      appendRoot(node)
      pos = sibling(roots[roots.length - 1].index)
    }

    const th = treeHash(roots)
    if (!(await this.verifier.verify(th, length, data.fork, up.signature))) {
      throw new ProofError(`bad signature for length ${length} fork ${data.fork}` + BAD)
    }
    batch.upgraded = true
    batch.length = length
    batch.fork = data.fork
    batch.roots = roots
    batch.signature = up.signature
    return extra === null
  }
}

/** Merge cur with each sibling in turn; `extra` (a seek root) stands in for one sibling. */
function climb (cur, path, extra, out) {
  out.push(cur)
  let i = 0
  while (i < path.length || extra !== null) {
    const want = sibling(cur.index)
    let node
    if (extra !== null && extra.index === want) {
      node = extra
      extra = null
    } else if (i < path.length && path[i].index === want) {
      node = path[i++]
    } else {
      const got = i < path.length ? path[i].index : 'nothing'
      throw new ProofError(`expected node ${want}, got ${got}` + BAD)
    }
    cur = checkedParent(cur, node)
    out.push(node)
    out.push(cur)
  }
  return cur
}
