// The JS side of tests/test_web_interop.py: a line-oriented JSON driver over stdin/stdout.
//
// Each input line is one command {op, ...}; each gets one output line {ok: true, ...} or
// {ok: false, error}. Static checks (decode, encode, verify, prove, format, fingerprint) compare
// our modules with the Python implementation; `init`/`session`/`step` run a live JS peer (a
// Replicator with sessions) that Python sessions replicate with, chunk by chunk.

import { createInterface } from 'node:readline'

import { blake2b, setBackend } from '../../streamer/web/blake2b.js'
import { fromHex, toHex } from '../../streamer/web/encoding.js'
import { MemoryFeed } from '../../streamer/web/feed.js'
import * as format from '../../streamer/web/format.js'
import {
  CompatVerifier, DefaultManifestVerifier, MemoryNodeStore, MerkleTree,
} from '../../streamer/web/merkle.js'
import { verifyNameRecord } from '../../streamer/web/names.js'
import { PRIORITY_HIGH, Replicator } from '../../streamer/web/replicator.js'
import { checkHandshake, handshakeHash, makeHandshake, sdpFingerprint } from '../../streamer/web/session.js'
import * as wire from '../../streamer/web/wire.js'

// ---------------------------------------------------------------- JSON <-> messages

// Bytes travel as {"$": hex} so plain numbers and strings stay as they are.
function toJson (x) {
  if (x instanceof Uint8Array) return { $: toHex(x) }
  if (Array.isArray(x)) return x.map(toJson)
  if (x && typeof x === 'object') {
    const out = {}
    for (const [k, v] of Object.entries(x)) out[k] = toJson(v)
    return out
  }
  return x
}

function fromJson (x) {
  if (Array.isArray(x)) return x.map(fromJson)
  if (x && typeof x === 'object') {
    if (typeof x.$ === 'string' && Object.keys(x).length === 1) return fromHex(x.$)
    const out = {}
    for (const [k, v] of Object.entries(x)) out[k] = fromJson(v)
    return out
  }
  return x
}

function verifierOf (kind, publicKey) {
  return kind === 'default' ? new DefaultManifestVerifier(publicKey) : new CompatVerifier(publicKey)
}

// ---------------------------------------------------------------- random messages (JS -> Python)

function randomMessages (seed, count) {
  let s = seed >>> 0
  const r = (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    return s % n
  }
  const num = () => [r(3), r(300), r(70000), r(2 ** 31) * 3, r(2 ** 20) * 2 ** 30][r(5)]
  const bytes = (n) => new Uint8Array(n).map(() => r(256))
  const nodes = () => Array.from({ length: r(4) }, () => ({ index: num(), size: num(), hash: bytes(32) }))
  const makers = [
    () => ({ type: 'sync', fork: num(), length: num(), remoteLength: num(), canUpgrade: !r(2), uploading: !r(2), downloading: !r(2), hasManifest: !r(2), allowPush: !r(2) }),
    () => ({
      type: 'request', id: num(), fork: num(), block: r(2) ? { index: num(), nodes: num() } : null,
      hash: r(3) ? null : { index: num(), nodes: num() }, seek: r(3) ? null : { bytes: num(), padding: num() },
      upgrade: r(2) ? { start: num(), length: num() } : null, manifest: !r(3), priority: r(3) ? 0 : 1 + r(5), wait: !r(2),
    }),
    () => ({ type: 'cancel', request: num() }),
    () => ({
      type: 'data', request: num(), fork: num(),
      block: r(2) ? { index: num(), value: bytes(r(3) ? r(100) : 70000 + r(10)), nodes: nodes() } : null,
      hash: r(3) ? null : { index: num(), nodes: nodes() },
      seek: r(3) ? null : { bytes: num(), nodes: nodes() },
      upgrade: r(2) ? { start: num(), length: num(), nodes: nodes(), additionalNodes: nodes(), signature: bytes(r(2) ? 64 : 68) } : null,
      manifest: r(4) ? null : bytes(1 + r(40)),
    }),
    () => ({ type: 'noData', request: num(), reason: r(2) ? null : 1 + r(3) }),
    () => ({ type: 'want', start: num(), length: num(), any: !r(2) }),
    () => ({ type: 'unwant', start: num(), length: num(), any: !r(2) }),
    () => ({ type: 'bitfield', start: num(), bitfield: Array.from({ length: r(5) }, () => r(2 ** 32)) }),
    () => ({ type: 'range', start: num(), length: num(), drop: !r(2) }),
    () => ({ type: 'extension', name: ['', 'swarmcast/x', 'héllo'][r(3)], message: bytes(r(20)) }),
    () => ({ type: 'handshake', capability: bytes(32), seeks: !r(2), writerSignature: r(2) ? bytes(64) : null }),
  ]
  return Array.from({ length: count }, () => makers[r(makers.length)]())
}

// ---------------------------------------------------------------- live peer

let peer = null // {rep, sessions: Map(name -> session)}

function drainEvents (s) {
  const out = []
  let e
  while ((e = s.nextEvent())) out.push(e)
  return out
}

async function step (cmd) {
  const { rep, sessions } = peer
  const now = cmd.now
  for (const [name, chunks] of Object.entries(cmd.inbox || {})) {
    const s = sessions.get(name)
    for (const c of chunks) await s.receive(fromHex(c), now)
  }
  const timer = rep.getTimer()
  if (timer !== null && timer <= now) rep.handleTimer(now)
  rep.schedule(now)
  const outbox = {}
  const events = {}
  for (const [name, s] of sessions) {
    outbox[name] = s.datagramsToSend(now).map(toHex)
    events[name] = drainEvents(s)
  }
  return {
    outbox, events, timer: rep.getTimer(), length: rep.feed.length,
    held: rep.feed.presentRanges(), closed: Object.fromEntries([...sessions].map(([n, s]) => [n, s.closed])),
  }
}

// ---------------------------------------------------------------- commands

const OPS = {
  // Python-encoded messages: decode them and encode them again.
  decode ({ messages }) {
    return {
      results: messages.map((hex) => {
        try {
          const msg = wire.decodeMessage(fromHex(hex))
          return { msg: toJson(msg), again: toHex(wire.encodeMessage(msg)) }
        } catch (e) {
          return { error: e.name }
        }
      }),
    }
  },
  // Seeded random messages for Python to decode: [{msg, hex}].
  encode ({ seed, count }) {
    return { messages: randomMessages(seed, count).map((m) => ({ msg: toJson(m), hex: toHex(wire.encodeMessage(m)) })) }
  },
  // Python-made proofs against sparse readers: verify each, report what it proves.
  async verify ({ cases }) {
    const results = []
    for (const c of cases) {
      const store = new MemoryNodeStore(fromJson(c.reader.nodes))
      const tree = new MerkleTree(store, verifierOf(c.kind, fromHex(c.public_key)), {
        length: c.reader.length, fork: c.reader.fork,
      })
      try {
        const batch = await tree.verify(wire.decodeMessage(fromHex(c.data)))
        results.push({ ok: true, upgraded: batch.upgraded, length: batch.length, block: batch.block, nodes: toJson(batch.nodes) })
      } catch (e) {
        results.push({ ok: false, error: e.name, message: e.message })
      }
    }
    return { results }
  },
  // A full tree from Python: build the proofs of the given requests.
  prove ({ kind, public_key: pub, length, signature, nodes, blocks, requests }) {
    const store = new MemoryNodeStore(fromJson(nodes))
    const tree = new MerkleTree(store, verifierOf(kind, fromHex(pub)), { length, signature: fromHex(signature) })
    return {
      proofs: requests.map((req) => {
        try {
          const data = tree.proof(fromJson(req))
          if (data.block) data.block.value = fromHex(blocks[data.block.index])
          return toHex(wire.encodeMessage(data))
        } catch (e) {
          return { error: e.name }
        }
      }),
    }
  },
  format ({ header, segments }) {
    const h = format.decodeHeader(fromHex(header))
    return {
      header: toJson(h),
      segments: segments.map((s) => {
        try {
          return toJson(format.decodeSegment(fromHex(s)))
        } catch (e) {
          return { error: e.name }
        }
      }),
    }
  },
  async fingerprint ({ local_sdp: local, remote_sdp: remote, key, initiator }) {
    const hh = handshakeHash(sdpFingerprint(local), sdpFingerprint(remote))
    const ours = makeHandshake(fromHex(key), hh, initiator)
    return { handshake_hash: toHex(hh), handshake: toHex(wire.encodeMessage(ours)) }
  },
  async check_handshake ({ handshake, key, handshake_hash: hh, initiator }) {
    try {
      const writer = await checkHandshake(wire.decodeMessage(fromHex(handshake)), fromHex(key), fromHex(hh), initiator)
      return { valid: true, writer }
    } catch (e) {
      return { valid: false, error: e.message }
    }
  },
  async names ({ records }) {
    const results = []
    for (const r of records) {
      try {
        const got = await verifyNameRecord(r)
        results.push({ valid: true, name: got.name, key: toHex(got.key), time: got.time })
      } catch (e) {
        results.push({ valid: false, error: `${e.name}: ${e.message}` })
      }
    }
    return { results }
  },
  blake2b ({ data, outlen, key, backend }) {
    const used = setBackend(backend || 'wasm')
    try {
      return { backend: used, digest: toHex(blake2b(fromHex(data), outlen, key ? fromHex(key) : undefined)) }
    } finally {
      setBackend('wasm')
    }
  },
  init ({ key, config }) {
    peer = { rep: new Replicator(new MemoryFeed(fromHex(key)), config || {}), sessions: new Map() }
    return {}
  },
  session ({ name, handshake_hash: hh, initiator }) {
    const key = peer.rep.feed.key
    const h = fromHex(hh)
    peer.sessions.set(name, peer.rep.addSession({
      name,
      handshake: makeHandshake(key, h, initiator),
      verifyHandshake: (theirs) => checkHandshake(theirs, key, h, initiator),
    }))
    return {}
  },
  want ({ start, end }) {
    peer.rep.want(start, end, PRIORITY_HIGH)
    return {}
  },
  step,
  stats (cmd) {
    return { stats: peer.rep.stats(cmd.now ?? null), blocks: Object.fromEntries([...peer.rep.feed.blocks].map(([i, v]) => [i, toHex(v)])) }
  },
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  if (!line.trim()) continue
  let reply
  try {
    const cmd = JSON.parse(line)
    reply = { ok: true, ...(await OPS[cmd.op](cmd)) }
  } catch (e) {
    reply = { ok: false, error: `${e.name}: ${e.message}`, stack: e.stack }
  }
  process.stdout.write(JSON.stringify(reply) + '\n')
}
