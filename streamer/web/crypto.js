// Hypercore-compatible hashing and signature checks (FORMAT §2-4, compat mode), for the tab.
//
// One job: BLAKE2b-256 leaf/parent/tree hashes, signable bytes, namespaces, discovery keys,
// replication capabilities, and Ed25519 verification through WebCrypto (crypto.subtle, which
// browsers offer only in secure contexts: https pages and localhost). Never touches the network.

import { Blake2b, blake2b } from './blake2b.js'
import { concat, uint64le, writeUint64LE } from './encoding.js'

const te = new TextEncoder()

function namespace (name, count) {
  const ns = blake2b(te.encode(name))
  const out = []
  for (let i = 0; i < count; i++) out.push(blake2b(concat([ns, new Uint8Array([i])])))
  return out
}

export const [
  TREE, REPLICATE_INITIATOR, REPLICATE_RESPONDER, MANIFEST, DEFAULT_NAMESPACE, DEFAULT_ENCRYPTION,
] = namespace('hypercore', 6)

const LEAF = new Uint8Array([0])
const PARENT = 1
const ROOT = 2

/** Hash of a data block: H(0x00 | u64le(len) | block). */
export function leafHash (block) {
  return new Blake2b(32).update(LEAF).update(uint64le(block.length)).update(block).digest()
}

/** Hash of a parent from its size (sum of both children's) and its children's hashes. */
export function parentHashRaw (size, leftHash, rightHash) {
  const b = new Uint8Array(73)
  b[0] = PARENT
  writeUint64LE(b, 1, size)
  b.set(leftHash, 9)
  b.set(rightHash, 41)
  return blake2b(b)
}

/** Hash of the parent of two sibling nodes {index, size, hash} (in any order). */
export function parentHash (a, b) {
  if (a.index > b.index) [a, b] = [b, a]
  return parentHashRaw(a.size + b.size, a.hash, b.hash)
}

/** Hash of a tree's full roots (left to right): H(0x02 | (hash | u64 index | u64 size)*). */
export function treeHash (roots) {
  const b = new Uint8Array(1 + 48 * roots.length)
  b[0] = ROOT
  roots.forEach((r, i) => {
    b.set(r.hash, 1 + 48 * i)
    writeUint64LE(b, 33 + 48 * i, r.index)
    writeUint64LE(b, 41 + 48 * i, r.size)
  })
  return blake2b(b)
}

/** Compat signable bytes: TREE | treeHash | u64 length | u64 fork (80 bytes). */
export function signable (treeHashBytes, length, fork) {
  return concat([TREE, treeHashBytes, uint64le(length), uint64le(fork)])
}

/** v10.0 'legacy' signable: treeHash | u64 length | u64 fork (48 bytes). */
export function signableLegacy (treeHashBytes, length, fork) {
  return concat([treeHashBytes, uint64le(length), uint64le(fork)])
}

/** Non-compat (manifest v >= 1) signable: TREE | manifestHash | treeHash | u64 length | u64 fork. */
export function signableManifest (manifestHashBytes, treeHashBytes, length, fork) {
  return concat([TREE, manifestHashBytes, treeHashBytes, uint64le(length), uint64le(fork)])
}

/** Encoded default signer manifest (v1, blake2b, quorum 1, one ed25519 signer). */
export function defaultManifest (publicKey) {
  return concat([new Uint8Array([1, 0, 0, 1, 1, 0]), DEFAULT_NAMESPACE, publicKey])
}

/** The non-compat core key: H(MANIFEST | manifest). */
export function manifestHash (encodedManifest) {
  return blake2b(concat([MANIFEST, encodedManifest]))
}

/** The raw Ed25519 signature inside a single-signer multiSignature; null if it is not one. */
export function multisigSingleSignature (multisig) {
  if (multisig.length !== 68 || multisig[0] !== 1 || multisig[1] !== 0 ||
      multisig[66] !== 0 || multisig[67] !== 0) return null
  return multisig.slice(2, 66)
}

/** Keyed BLAKE2b-256 of 'hypercore' with the core key: safe to announce publicly. */
export function discoveryKey (key) {
  return blake2b(te.encode('hypercore'), 32, key)
}

/** Proof that the sender knows the core key, bound to one secure-channel handshake. */
export function replicationCapability (handshakeHash, key, initiator) {
  const ns = initiator ? REPLICATE_INITIATOR : REPLICATE_RESPONDER
  return blake2b(concat([ns, key]), 32, handshakeHash)
}

// ---------------------------------------------------------------- Ed25519 (WebCrypto)

/** Why Ed25519 cannot be checked here (a sentence for the page), or null when it can. */
export function ed25519Unavailable () {
  const c = globalThis.crypto
  if (!c || !c.subtle) {
    return 'this page is not a secure context (https or localhost), so the browser hides ' +
      'WebCrypto and the stream cannot be verified; open it over https or on localhost'
  }
  return null
}

/** An Ed25519 public key imported once, checking many signatures. */
export class Ed25519PublicKey {
  constructor (raw) {
    this.raw = raw
    this._key = null
  }

  async _imported () {
    if (this._key === null) {
      const why = ed25519Unavailable()
      if (why) throw new Error(why)
      this._key = crypto.subtle.importKey('raw', this.raw, { name: 'Ed25519' }, false, ['verify'])
    }
    return this._key
  }

  /** True iff sig is a valid Ed25519 signature of msg; never throws for bad keys or signatures. */
  async verify (msg, sig) {
    if (sig.length !== 64 || this.raw.length !== 32) return false
    let key
    try {
      key = await this._imported()
    } catch (e) {
      if (ed25519Unavailable()) throw e
      return false // not a valid public key
    }
    try {
      return await crypto.subtle.verify({ name: 'Ed25519' }, key, sig, msg)
    } catch {
      return false
    }
  }
}

/** Ed25519 verification of one message (imports the key each time: for one-off checks). */
export function ed25519Verify (publicKey, msg, sig) {
  return new Ed25519PublicKey(publicKey).verify(msg, sig)
}
