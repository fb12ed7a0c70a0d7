// Loaded by tests/test_web_browser.py in headless Chromium: the tab's modules checked against the
// hypercore vectors in a real browser (WebCrypto Ed25519, WebAssembly BLAKE2b, ES modules as
// served), and two in-page peers replicating. Resolves to a JSON-ready report.

import { backend, blake2b } from '/web/blake2b.js'
import { ed25519Unavailable, leafHash } from '/web/crypto.js'
import { fromHex, toHex } from '/web/encoding.js'
import { MemoryFeed } from '/web/feed.js'
import { fullRoots } from '/web/flat-tree.js'
import { CompatVerifier, DefaultManifestVerifier, MemoryNodeStore, MerkleTree } from '/web/merkle.js'
import { PRIORITY_HIGH, Replicator } from '/web/replicator.js'
import { checkHandshake, makeHandshake } from '/web/session.js'
import { DATA, decodePayload } from '/web/wire.js'

const node = (j) => ({ index: j.index, size: j.size, hash: fromHex(j.hash) })

export async function run () {
  const v = await (await fetch('/vectors.json')).json()
  const report = {
    secure: globalThis.isSecureContext,
    backend: backend(),
    unavailable: ed25519Unavailable(),
    abc: toHex(blake2b(new TextEncoder().encode('abc'), 64)),
    leaves: v.blocks.every((b) => b.value_hex === null || toHex(leafHash(fromHex(b.value_hex))) === b.leaf_hash),
  }
  if (report.unavailable) return report
  const pub = fromHex(v.keys.publicKey)
  const verifierFor = (kind) => kind === 'compat' ? new CompatVerifier(pub) : new DefaultManifestVerifier(pub)
  const nodesAt = (length) => v.tree_nodes_by_length.find((t) => t.length === length).nodes.map(node)

  report.proofs = {}
  for (const p of v.proofs) {
    const length = p.request.upgrade ? p.request.upgrade.start : (p.name.startsWith('len7') ? 7 : 8)
    const all = new MemoryNodeStore(length ? nodesAt(length) : [])
    const reader = () => new MerkleTree(new MemoryNodeStore(fullRoots(2 * length).map((i) => all.get(i))),
      verifierFor(p.core), { length })
    const data = decodePayload(DATA, fromHex(p.wire_data_message_hex))
    let genuine
    try {
      const batch = await reader().verify(data)
      genuine = p.upgrade ? batch.upgraded : true
    } catch (e) {
      genuine = `${e.name}: ${e.message}`
    }
    let forged = 'accepted'
    if (data.upgrade) {
      data.upgrade.signature[5] ^= 1
    } else {
      data.block.value = new Uint8Array([...data.block.value, 0])
    }
    try {
      await reader().verify(data)
    } catch (e) {
      forged = e.name
    }
    report.proofs[p.name] = { genuine, forged }
  }

  // Two in-page peers: a seeder holding the reference feed, and a reader fetching all of it.
  const values = v.blocks.map((b) => b.value_hex !== null ? fromHex(b.value_hex) : new Uint8Array(b.byteLength).fill(parseInt(b.fill_byte, 16)))
  const seedFeed = new MemoryFeed(pub)
  seedFeed.nodes.put(nodesAt(8))
  seedFeed.tree = new MerkleTree(seedFeed.nodes, seedFeed.verifier, {
    length: 8, signature: fromHex(v.cores.compat.lengths[7].signature),
  })
  values.forEach((val, i) => { seedFeed.blocks.set(i, val); seedFeed.present.add(i, i + 1) })
  const seeder = new Replicator(seedFeed, { seed: 1 })
  const reader = new Replicator(new MemoryFeed(pub), { seed: 2 })
  const hh = blake2b(new TextEncoder().encode('in-page link'))
  const a = reader.addSession({ handshake: makeHandshake(pub, hh, true), verifyHandshake: (h) => checkHandshake(h, pub, hh, true) })
  const b = seeder.addSession({ handshake: makeHandshake(pub, hh, false), verifyHandshake: (h) => checkHandshake(h, pub, hh, false) })
  reader.want(0, 8, PRIORITY_HIGH)
  let now = 0
  for (let round = 0; round < 400 && reader.feed.contiguousLength < 8; round++) {
    for (const [from, to] of [[a, b], [b, a]]) {
      for (const chunk of from.datagramsToSend(now)) await to.receive(chunk, now)
    }
    now += 0.05
    for (const rep of [seeder, reader]) {
      const t = rep.getTimer()
      if (t !== null && t <= now) rep.handleTimer(now)
    }
  }
  report.replicated = [...reader.feed.blocks.keys()].sort((x, y) => x - y)
  report.replicatedIntact = report.replicated.every((i) => toHex(reader.feed.get(i)) === toHex(values[i]))
  return report
}
