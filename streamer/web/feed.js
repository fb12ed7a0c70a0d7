// The tab's copy of a feed: verified blocks and tree nodes in memory, sans-IO.
//
// One job: hold what verified and nothing else. verifyAndApply checks a peer's proof against the
// signed roots (merkle.js) before anything is stored; proof() answers our own peers from what we
// hold; evict() forgets block values (never tree nodes or the signed state) to bound memory.
// Calls of verifyAndApply are serialized, so a proof is always checked against the state it
// will be applied to.

import { equal } from './encoding.js'
import {
  BlockNotFoundError, CompatVerifier, ForkMismatchError, MemoryNodeStore, MerkleTree,
} from './merkle.js'
import { RangeSet } from './ranges.js'

export class MemoryFeed {
  /**
   * @param {Uint8Array} key the feed key (a compat core's public key)
   * @param {object} [opts] verifier: a DefaultManifestVerifier for non-compat cores
   */
  constructor (key, { verifier = null } = {}) {
    this.verifier = verifier || new CompatVerifier(key)
    if (!equal(this.verifier.key, key)) throw new Error('the verifier does not belong to this key')
    this.key = key
    this.writable = false // a tab never holds the writer's secret key
    this.nodes = new MemoryNodeStore()
    this.tree = new MerkleTree(this.nodes, this.verifier)
    this.blocks = new Map() // index -> verified value
    this.present = new RangeSet(Infinity)
    this.blockBytes = 0 // bytes of block values held
    this._chain = Promise.resolve()
    this._listeners = []
  }

  get length () { return this.tree.length }
  get fork () { return this.tree.fork }
  get byteLength () { return this.tree.byteLength }
  get signature () { return this.tree.signature }

  /** Blocks 0..n-1 are all held. */
  get contiguousLength () {
    const s = this.present
    return s.size && s.starts[0] === 0 ? s.ends[0] : 0
  }

  has (index) {
    return this.present.has(index)
  }

  /** The verified value of a block, or undefined. */
  get (index) {
    return this.blocks.get(index)
  }

  missingNodes (index) {
    return this.tree.missingNodes(index)
  }

  presentRanges () {
    return this.present.runs()
  }

  /** listener({length, start, end, upgraded}) after each applied proof; returns an unsubscribe. */
  onChange (listener) {
    this._listeners.push(listener)
    return () => { this._listeners = this._listeners.filter((l) => l !== listener) }
  }

  /** The Data answering a request, block value filled; BlockNotFoundError if we cannot. */
  proof (request) {
    if (request.block && !this.has(request.block.index)) {
      throw new BlockNotFoundError(`block ${request.block.index} is not held here`)
    }
    const data = this.tree.proof(request)
    if (data.block) data.block.value = this.blocks.get(data.block.index)
    return data
  }

  /**
   * Verify a peer's proof and store what it proves. Resolves to {upgraded, length, block (the
   * newly stored block or null), outdated}; rejects with ProofError, storing nothing, when it does
   * not verify. `outdated` means the proof upgrades from a length we already passed (an answer
   * overtaken by another peer's): nothing was checked or stored, and the peer is not at fault.
   */
  verifyAndApply (data) {
    const run = this._chain.then(() => this._apply(data))
    this._chain = run.catch(() => {})
    return run
  }

  async _apply (data) {
    const tree = this.tree
    if (data.upgrade && data.fork === tree.fork && data.upgrade.start < tree.length) {
      return { upgraded: false, length: tree.length, block: null, outdated: true }
    }
    const batch = await tree.verify(data)
    if (batch.reorg && (tree.length || this.blocks.size)) {
      // Our writers never truncate; following another fork would mean dropping verified data.
      throw new ForkMismatchError(`proof is for fork ${data.fork} but the feed is at fork ${tree.fork}`)
    }
    const block = batch.block
    const newBlock = block !== null && !this.has(block)
    this.nodes.put(batch.nodes.filter((n) => this.nodes.get(n.index) === undefined))
    if (newBlock) {
      this.blocks.set(block, batch.value)
      this.blockBytes += batch.value.length
      this.present.add(block, block + 1)
    }
    if (batch.upgraded) tree.commit(batch)
    const result = { upgraded: batch.upgraded, length: tree.length, block: newBlock ? block : null, outdated: false }
    if (newBlock || batch.upgraded) {
      const start = newBlock ? block : 0
      const event = { length: tree.length, start, end: newBlock ? start + 1 : start, upgraded: batch.upgraded }
      for (const l of this._listeners) l(event)
    }
    return result
  }

  /** Forget the values of blocks start..end-1 (their tree nodes stay, so they verify again). */
  evict (start, end) {
    for (const [index, value] of this.blocks) {
      if (index >= start && index < end) {
        this.blocks.delete(index)
        this.blockBytes -= value.length
      }
    }
    this.present.remove(start, end)
  }
}
