// The watch page (/watch/{name or key} on a hub): the tab joins that stream's swarm as a full
// peer, verifies every block, plays it and passes it on.
//
// One job: wire the modules together for the page. Reads the stream from the path, resolves a
// name through the hub (the record is verified here, not trusted), refuses to run where it cannot
// verify (a non-secure origin has no WebCrypto), asks the hub for ICE servers (GET /v1/ice, else
// none, or ?ice=<JSON list>), and exposes window.swarmcast: stats() (the keys of /stats), seek(t),
// goLive(), digests() (BLAKE2b of every block held, for tests) and the parts themselves.
// Query parameters: ?at=<stream seconds> start there; ?mem=<MB> block memory cap; ?ice=<JSON>.

import { blake2b } from './blake2b.js'
import { discoveryKey, ed25519Unavailable } from './crypto.js'
import { fromHex, toHex } from './encoding.js'
import { MemoryFeed } from './feed.js'
import { verifyNameRecord } from './names.js'
import { MAX_BLOCK_BYTES, PeerSet } from './peers.js'
import { TabPlayer } from './player.js'
import { SignalAuth } from './signal.js'
import { TabSwarm } from './swarm.js'

const $ = (id) => document.getElementById(id)
const seconds = () => performance.now() / 1000
const params = new URLSearchParams(location.search)
// Signed signaling (docs/signaling.md "Signed messages"): every post is sealed and every message
// heard must carry a valid proof; ?proof=optional also takes unsealed messages (older peers).
const REQUIRE_PROOF = params.get('proof') !== 'optional'

function status (text) {
  $('status').textContent = text
}

function problem (html) {
  const p = $('problem')
  p.innerHTML = html
  p.hidden = false
  status('')
  window.swarmcast = { ...(window.swarmcast || {}), problem: p.textContent }
}

/** Why this page cannot verify the stream here (HTML), or null when it can. */
async function cannotVerify () {
  if (ed25519Unavailable() || !window.isSecureContext) {
    const origin = location.origin
    return `This page was opened over plain http at <code>${origin}</code>, which the browser does ` +
      'not treat as a secure context, so it hides WebCrypto: the tab cannot check the ' +
      'broadcaster\'s Ed25519 signatures, and it will not play video it cannot verify. ' +
      'Open it over <b>https</b> (run <code>streamer hub --tls-cert FILE --tls-key FILE</code>, or ' +
      'put the hub behind a TLS reverse proxy: see "Watch in a browser" in the README), or on ' +
      `<b>localhost</b> on the hub's own machine (<code>http://localhost:${location.port || 80}${location.pathname}</code>).`
  }
  try {
    const raw = new Uint8Array(32)
    raw[0] = 1
    await crypto.subtle.importKey('raw', raw, { name: 'Ed25519' }, false, ['verify'])
  } catch (e) {
    if (e.name === 'NotSupportedError') {
      return 'This browser\'s WebCrypto has no Ed25519, so the tab cannot check the broadcaster\'s ' +
        'signatures. Use a current Chromium, Firefox or Safari, or watch with <code>viewer watch</code>.'
    }
  }
  if (!window.RTCPeerConnection) return 'This browser has no WebRTC (RTCPeerConnection); it cannot join the swarm.'
  return null
}

async function resolveKey (target) {
  if (/^[0-9a-f]{64}$/.test(target)) return fromHex(target)
  const res = await fetch(`/names/${encodeURIComponent(target)}`, { cache: 'no-store' })
  if (res.status === 404) throw new Error(`no stream is called "${target}" on this hub`)
  if (!res.ok) throw new Error(`the hub answered ${res.status} for the name "${target}"`)
  const record = await verifyNameRecord(await res.json())
  if (record.name !== target) throw new Error(`the hub answered a record for "${record.name}", not "${target}"`)
  return record.key
}

/** ICE servers: ?ice=<JSON list>, else the hub's GET /v1/ice ({iceServers, ttl, expires}), else
 *  none. Resolves to [servers, seconds until they should be fetched again, or null]. */
async function iceServers () {
  const given = params.get('ice')
  if (given) return [JSON.parse(given), null]
  try {
    const res = await fetch('/v1/ice', { cache: 'no-store' })
    if (!res.ok) return [[], null]
    const body = await res.json()
    const list = Array.isArray(body) ? body : body.iceServers || []
    const expires = typeof body.expires === 'number' ? body.expires - Date.now() / 1000 : null
    return [list.map((s) => (typeof s === 'string' ? { urls: s } : s)), expires]
  } catch {
    return [[], null]
  }
}

/** Keep the swarm's TURN credentials fresh: fetch again a minute before they expire. */
function refreshIce (swarm, expiresIn) {
  if (expiresIn === null) return
  setTimeout(async () => {
    const [servers, next] = await iceServers()
    if (servers.length) swarm.iceServers = servers
    refreshIce(swarm, next === null ? 600 : next)
  }, Math.max(60, expiresIn - 60) * 1000)
}

function render (stats) {
  const rows = []
  for (const [k, v] of Object.entries(stats)) {
    if (k === 'neighbours') continue
    rows.push(`<tr><td>${k}</td><td>${typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(3) : String(v)}</td></tr>`)
  }
  for (const n of stats.neighbours || []) {
    rows.push(`<tr><td>neighbour ${n.name.slice(0, 8)}${n.is_writer ? ' (writer)' : ''}</td>` +
      `<td>↑ ${n.bytes_up} B ↓ ${n.bytes_down} B, length ${n.remote_length}</td></tr>`)
  }
  $('stats').innerHTML = rows.join('')
}

async function main () {
  const target = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '')
  const why = await cannotVerify()
  if (why) return problem(why)
  let key
  try {
    key = await resolveKey(target)
  } catch (e) {
    return problem(e.message)
  }
  const mem = parseFloat(params.get('mem'))
  const feed = new MemoryFeed(key)
  const events = []
  let swarm = null
  const peers = new PeerSet(feed, {
    maxBlockBytes: mem > 0 ? mem * 1024 * 1024 : MAX_BLOCK_BYTES,
    onEvent: (e) => {
      if (e.type !== 'block') events.push({ type: e.type, peer: e.peer, reason: e.reason, at: seconds() })
      if (events.length > 1000) events.shift()
      if (swarm) swarm.peerEvent(e)
    },
  })
  const [servers, expiresIn] = await iceServers()
  let auth = null
  try {
    auth = await SignalAuth.create(key, discoveryKey(key))
  } catch (e) {
    if (REQUIRE_PROOF) return problem('This browser cannot make Ed25519 keys with WebCrypto, so it cannot sign its signaling messages. Use a current Chromium, Firefox or Safari.')
  }
  swarm = new TabSwarm(peers, {
    auth,
    requireProof: REQUIRE_PROOF,
    hub: location.origin,
    iceServers: servers,
    log: (text) => console.log(`swarmcast: ${text}`),
  })
  const at = parseFloat(params.get('at'))
  const player = new TabPlayer($('video'), peers, {
    flush: () => swarm.flushAll(),
    status,
    at: isNaN(at) ? null : at,
  })
  const stats = () => {
    const sw = swarm.stats()
    return { ...peers.stats(seconds()), ...player.stats(), signals_refused: sw.signals_refused, swarm: sw }
  }
  window.swarmcast = {
    key: toHex(key), feed, peers, swarm, player, events,
    stats,
    seek: (t) => player.seek(t, false),
    goLive: () => player.goLive(),
    held: () => [...feed.blocks.keys()].sort((a, b) => a - b),
    digests: () => {
      const out = {}
      for (const [i, v] of feed.blocks) out[i] = toHex(blake2b(v))
      return out
    },
  }
  $('live').onclick = () => player.goLive()
  $('unmute').onclick = () => { $('video').muted = false }
  window.addEventListener('pagehide', () => swarm.leave())
  refreshIce(swarm, expiresIn)
  swarm.join()
  setInterval(() => render(stats()), 1000)
  await player.start()
  if (player.header) {
    $('title').textContent = player.header.title || 'swarmcast'
    document.title = `${player.header.title} – swarmcast`
  }
}

main().catch((e) => {
  console.error(e)
  status(`error: ${e.message}`)
})
