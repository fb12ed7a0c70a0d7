// The tab's proof verification speed in node, driven by bench_js_verify.py.
// Usage: node bench/bench_js_verify.mjs WORKDIR PUBLIC_KEY MSG SIG (hex) -> one JSON line of rates.
// WORKDIR holds verify.bin, first.bin and apply.bin: u32le-length-prefixed encoded Data messages.

import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { fromHex } from '../streamer/web/encoding.js'
import { measure, messages } from './js_verify_core.mjs'

const [work, key, msg, sig] = process.argv.slice(2)
const read = (name) => messages(new Uint8Array(readFileSync(join(work, name))))
const rates = await measure({
  verifyRaw: read('verify.bin'),
  firstRaw: read('first.bin')[0],
  applyRaw: read('apply.bin'),
  key: fromHex(key),
  msg: fromHex(msg),
  sig: fromHex(sig),
})
process.stdout.write(JSON.stringify(rates) + '\n')
