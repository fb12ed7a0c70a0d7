// Signed stream-name records, as streamer/core/names.py: syntax, signable bytes, verification.
//
// One job: check that a record {name, key, time, signature} from a hub was signed by the
// stream's own key, so a tab trusts a name without trusting the hub that served it.
// signable = "swarmcast/name/v1\0" | name (ascii) | 0x00 | key (32) | u64be time.

import { Ed25519PublicKey } from './crypto.js'
import { concat, fromHex } from './encoding.js'
import { ProofError } from './merkle.js'

const NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/
const NAMESPACE = new TextEncoder().encode('swarmcast/name/v1\0')

/** 1-63 of a-z 0-9 . _ - starting with a letter or digit (never a 64-hex-digit key). */
export function isValidName (name) {
  return typeof name === 'string' && NAME_PATTERN.test(name)
}

/** The exact bytes a name record's signature covers. */
export function nameSignable (name, key, time) {
  const t = new Uint8Array(8)
  new DataView(t.buffer).setBigUint64(0, BigInt(time))
  return concat([NAMESPACE, new TextEncoder().encode(name), new Uint8Array([0]), key, t])
}

function hexField (field, value, size) {
  if (typeof value !== 'string' || value.length !== 2 * size || /[^0-9a-fA-F]/.test(value)) {
    throw new ProofError(`name record ${field} must be ${2 * size} hex digits`)
  }
  return fromHex(value)
}

/** Parse and verify a record (the hub's JSON object); resolves to {name, key, time, signature}
 *  with key and signature as bytes, or rejects with ProofError saying what is wrong. */
export async function verifyNameRecord (obj) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new ProofError('name record is not a JSON object; expected {name, key, time, signature}')
  }
  const { name, time } = obj
  if (!isValidName(name)) throw new ProofError(`name record has an invalid name ${JSON.stringify(name)}`)
  const key = hexField('key', obj.key, 32)
  const signature = hexField('signature', obj.signature, 64)
  if (!Number.isSafeInteger(time) || time < 0) {
    throw new ProofError('name record time must be a non-negative integer (unix seconds)')
  }
  if (!(await new Ed25519PublicKey(key).verify(nameSignable(name, key, time), signature))) {
    throw new ProofError(`name record for ${JSON.stringify(name)} has a bad signature: it was not ` +
      `made by key ${obj.key.slice(0, 16)}..., do not trust it`)
  }
  return { name, key, time, signature }
}
