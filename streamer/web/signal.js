// Signed signaling messages, sans-IO (streamer/core/signal.py of the sig branch; docs/signaling.md
// "Signed messages"): a MAC under a key derived from the stream key, proving the sender knows the
// key, and an Ed25519 signature by the sender's per-run key, whose hash is its peer id; a
// timestamp window and a nonce cache refuse replays.
//
// One job: seal what we post and check what we hear. Time (Unix milliseconds) is passed in.
// Ed25519 signing and verifying go through WebCrypto (secure contexts only, like the rest).

import { blake2b } from './blake2b.js'
import { concat, toHex, fromHex } from './encoding.js'

export const SIGNAL_LABEL = 'swarmcast/signal/v1'
export const PEER_ID_LABEL = 'swarmcast/peer-id/v1'
export const MAC_FIELDS = ['type', 'from', 'to', 'ts', 'nonce', 'n', 'evict', 'sdp']
export const WINDOW_MS = 60_000
export const MAX_NONCES = 16_384

const NONCE = /^[0-9a-f]{16}$/
const HEX64 = /^[0-9a-f]{64}$/
const HEX128 = /^[0-9a-f]{128}$/
const te = new TextEncoder()
// PKCS #8 wrapping of a raw 32-byte Ed25519 seed (RFC 8410), for importing a known seed.
const PKCS8_PREFIX = fromHex('302e020100300506032b657004220420')

/** The MAC key of a stream's signaling: BLAKE2b-256 keyed with the stream key over the label. */
export function signalKey (streamKey) {
  if (streamKey.length !== 32) throw new Error('a stream key is 32 bytes')
  return blake2b(te.encode(SIGNAL_LABEL), 32, streamKey)
}

/** The peer id of a signaling public key: hex of BLAKE2b-128(label ‖ key). */
export function peerIdOf (publicKey) {
  return toHex(blake2b(concat([te.encode(PEER_ID_LABEL), publicKey]), 16))
}

function u32be (n) {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n, false)
  return b
}

function str (bytes) {
  return [u32be(bytes.length), bytes]
}

function text (value) {
  if (typeof value === 'boolean') return value ? 'true' : 'false'
  if (typeof value === 'number') return Number.isSafeInteger(value) ? String(value) : null
  if (typeof value === 'string') return value
  return null
}

/** The bytes S the MAC and signature cover; null if a covered field has an unusable value. */
export function macInput (discoveryKey, message) {
  const parts = [...str(te.encode(SIGNAL_LABEL)), ...str(discoveryKey)]
  for (const name of MAC_FIELDS) {
    if (!Object.prototype.hasOwnProperty.call(message, name)) {
      parts.push(new Uint8Array([0]))
      continue
    }
    const t = text(message[name])
    if (t === null) return null
    parts.push(new Uint8Array([1]), ...str(te.encode(t)))
  }
  return concat(parts)
}

function sameHex (a, b) {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i)
  return diff === 0
}

function randomNonce () {
  const b = new Uint8Array(8)
  globalThis.crypto.getRandomValues(b)
  return toHex(b)
}

/** Seals our messages (as one per-run identity) and checks others', for one stream. */
export class SignalAuth {
  /** Use SignalAuth.create(): the identity's keys are made asynchronously. */
  constructor (streamKey, discoveryKey, identity, { windowMs = WINDOW_MS, maxNonces = MAX_NONCES } = {}) {
    this._key = signalKey(streamKey)
    this._dk = discoveryKey
    this._identity = identity // {privateKey (CryptoKey), publicKey (raw bytes)}
    this.publicKeyHex = toHex(identity.publicKey)
    this.peerId = peerIdOf(identity.publicKey)
    this.windowMs = windowMs
    this.maxNonces = maxNonces
    this._seen = new Map() // "from nonce" -> ts, oldest first
    this._pk = new Map() // public key hex -> imported CryptoKey (a few peers)
  }

  /** A fresh identity, or the one of a 32-byte seed (for worked values). */
  static async create (streamKey, discoveryKey, { seed = null, ...opts } = {}) {
    const subtle = globalThis.crypto.subtle
    let privateKey
    let publicKey
    if (seed) {
      privateKey = await subtle.importKey('pkcs8', concat([PKCS8_PREFIX, seed]), { name: 'Ed25519' }, true, ['sign'])
      const jwk = await subtle.exportKey('jwk', privateKey)
      publicKey = base64url(jwk.x)
    } else {
      const pair = await subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])
      privateKey = pair.privateKey
      publicKey = new Uint8Array(await subtle.exportKey('raw', pair.publicKey))
    }
    return new SignalAuth(streamKey, discoveryKey, { privateKey, publicKey }, opts)
  }

  /** `message` from us, with from, ts, nonce, pk, mac and sig. */
  async seal (message, nowMs, nonce = randomNonce()) {
    if (!NONCE.test(nonce)) throw new Error('a nonce is 16 lowercase hex digits')
    const sealed = {}
    for (const [k, v] of Object.entries(message)) if (k !== 'mac' && k !== 'sig' && k !== 'pk') sealed[k] = v
    sealed.from = this.peerId
    sealed.ts = Math.trunc(nowMs)
    sealed.nonce = nonce
    const data = macInput(this._dk, sealed)
    if (data === null) throw new Error('a signed field holds a value that is not a string, integer or boolean')
    sealed.pk = this.publicKeyHex
    sealed.mac = toHex(blake2b(data, 32, this._key))
    const sig = await globalThis.crypto.subtle.sign({ name: 'Ed25519' }, this._identity.privateKey, data)
    sealed.sig = toHex(new Uint8Array(sig))
    return sealed
  }

  /** 'ok', or why the message is refused: no_proof, bad_mac, not_sender, bad_signature, stale,
   *  replay. Only an ok message enters the nonce cache. */
  async check (message, nowMs) {
    const { mac, ts, nonce, from: sender, pk, sig } = message
    if (!(typeof mac === 'string' && HEX64.test(mac) && typeof nonce === 'string' && NONCE.test(nonce) &&
          Number.isSafeInteger(ts) && typeof sender === 'string' && typeof pk === 'string' &&
          HEX64.test(pk) && typeof sig === 'string' && HEX128.test(sig))) return 'no_proof'
    const data = macInput(this._dk, message)
    if (data === null) return 'bad_mac'
    if (!sameHex(toHex(blake2b(data, 32, this._key)), mac)) return 'bad_mac'
    const publicKey = fromHex(pk)
    if (peerIdOf(publicKey) !== sender) return 'not_sender'
    if (!(await this._verify(pk, publicKey, data, fromHex(sig)))) return 'bad_signature'
    if (Math.abs(nowMs - ts) > this.windowMs) return 'stale'
    this._forget(nowMs)
    const id = `${sender} ${nonce}`
    if (this._seen.has(id)) return 'replay'
    this._seen.set(id, ts)
    if (this._seen.size > this.maxNonces) this._seen.delete(this._seen.keys().next().value)
    return 'ok'
  }

  async _verify (hex, raw, data, sig) {
    const subtle = globalThis.crypto.subtle
    let key = this._pk.get(hex)
    try {
      if (!key) {
        key = await subtle.importKey('raw', raw, { name: 'Ed25519' }, false, ['verify'])
        if (this._pk.size >= 256) this._pk.delete(this._pk.keys().next().value)
        this._pk.set(hex, key)
      }
      return await subtle.verify({ name: 'Ed25519' }, key, sig, data)
    } catch {
      return false
    }
  }

  _forget (nowMs) {
    for (const [id, ts] of this._seen) {
      if (nowMs - ts <= this.windowMs) break
      this._seen.delete(id)
    }
  }
}

function base64url (s) {
  const b = atob(s.replace(/-/g, '+').replace(/_/g, '/'))
  return Uint8Array.from(b, (c) => c.charCodeAt(0))
}
