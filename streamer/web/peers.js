// All of a tab's neighbours for one feed, sans-IO: links, bans, timers and the memory window.
//
// One job: what the RTCDataChannel glue asks of the protocol. open() a link when a data channel
// opens (the handshake is bound to both SDPs' DTLS fingerprints), feed it what arrives, send
// what outgoing() returns, call tick() on a timer, and close channels whose link `isClosed`.
// A peer that misbehaves (bad handshake, bad proof, unrequested data, garbage) is banned for
// banSeconds. Block values beyond maxBlockBytes are evicted, farthest from the playhead (or the
// live edge) first, never block 0 (the stream header) nor a block the scheduler wants (playback
// window, live edge, explicit wants: it would fetch it again at once); their tree nodes stay, so
// they can be fetched and verified again when the viewer seeks back.
// A neighbour that connects again (it lost our channel) gets a second link beside the first; the
// new one replaces the old only once its handshake verified, so a forged offer cannot cut a
// working connection (docs/signaling.md). Pass the Link to receive/outgoing/isClosed/closed to
// address one of the two; without it they address the current one.

import { Link } from './link.js'
import { Replicator } from './replicator.js'
import { checkHandshake, handshakeHash, makeHandshake, sdpFingerprint } from './session.js'

export const BAN_SECONDS = 60 // docs/wire.md: ban_seconds
export const MAX_BANNED = 1024 // bans remembered; the oldest is forgotten beyond this
export const HANDSHAKE_TIMEOUT_S = 10
export const MAX_BLOCK_BYTES = 96 * 1024 * 1024

export class PeerSet {
  /**
   * @param feed a MemoryFeed
   * @param opts {config (Replicator), window (credit window), maxBlockBytes, banSeconds,
   *   onEvent(event): {type: 'handshake' | 'synced' | 'block' | 'upgraded' | 'misbehaved' |
   *   'closed', peer, ...}}
   */
  constructor (feed, { config = {}, window, maxBlockBytes = MAX_BLOCK_BYTES, banSeconds = BAN_SECONDS, onEvent = null } = {}) {
    this.feed = feed
    this.replicator = new Replicator(feed, config)
    this.window = window
    this.maxBlockBytes = maxBlockBytes
    this.banSeconds = banSeconds
    this.onEvent = onEvent
    this.links = new Map() // peer id -> {link, openedAt}
    this.pending = new Map() // peer id -> {link, openedAt}: a new link beside a verified one
    this._banned = new Map() // peer id -> until
    this.evicted = 0 // block values dropped to stay within maxBlockBytes
  }

  isBanned (peer, now) {
    const until = this._banned.get(peer)
    if (until === undefined) return false
    if (until > now) return true
    this._banned.delete(peer)
    return false
  }

  ban (peer, now) {
    for (const [p, until] of this._banned) if (until <= now) this._banned.delete(p)
    this._banned.delete(peer)
    if (this._banned.size >= MAX_BANNED) this._banned.delete(this._banned.keys().next().value)
    this._banned.set(peer, now + this.banSeconds)
  }

  /** A data channel to `peer` opened. Resolves the handshake from both SDPs; returns the Link,
   *  or null for a banned peer (close its channel). Throws if an SDP has no DTLS fingerprint. */
  open (peer, { localSdp, remoteSdp, initiator, now }) {
    if (this.isBanned(peer, now)) return null
    const hh = handshakeHash(sdpFingerprint(localSdp), sdpFingerprint(remoteSdp))
    const key = this.feed.key
    const old = this.links.get(peer)
    const beside = old && old.link.session.isOpen && !old.link.closed
    if (this.pending.has(peer)) this._dropEntry(peer, this.pending.get(peer), 'replaced by a new connection', now)
    if (old && !beside) this._drop(peer, 'replaced by a new connection', now)
    const session = this.replicator.addSession({
      name: peer,
      handshake: makeHandshake(key, hh, initiator),
      verifyHandshake: (theirs) => checkHandshake(theirs, key, hh, initiator),
    })
    const link = new Link(session, { window: this.window, now })
    ;(beside ? this.pending : this.links).set(peer, { link, openedAt: now })
    return link
  }

  _entry (peer, link) {
    const current = this.links.get(peer)
    if (link === null || (current && current.link === link)) return current
    const pending = this.pending.get(peer)
    return pending && pending.link === link ? pending : undefined
  }

  /** A message from `peer`'s data channel (`link`: which one); resolves once handled. */
  async receive (peer, message, now, link = null) {
    const entry = this._entry(peer, link)
    if (!entry) return
    await entry.link.receive(message, now)
    this._events(peer, entry.link, now)
    this.enforceMemory()
  }

  /** Messages to send to `peer` now (room: what its channel can take). */
  outgoing (peer, now, room, link = null) {
    const entry = this._entry(peer, link)
    if (!entry) return []
    const out = entry.link.outgoing(now, room)
    this._events(peer, entry.link, now)
    return out
  }

  /** Whether `peer`'s channel must be closed (or is unknown). */
  isClosed (peer, link = null) {
    const entry = this._entry(peer, link)
    return !entry || entry.link.closed
  }

  /** The transport closed `peer`'s channel (`link`: which one). */
  closed (peer, now, link = null) {
    const entry = this._entry(peer, link)
    if (entry) this._dropEntry(peer, entry, 'channel closed', now)
  }

  /** Run timers: late requests, keepalives, silent peers, handshakes that never completed. */
  tick (now) {
    const t = this.replicator.getTimer()
    if (t !== null && t <= now) this.replicator.handleTimer(now)
    for (const map of [this.links, this.pending]) {
      for (const [peer, { link, openedAt }] of [...map]) {
        link.tick(now)
        if (!link.session.isOpen && !link.closed && now - openedAt > HANDSHAKE_TIMEOUT_S) {
          link.close('no handshake in time')
        }
        this._events(peer, link, now)
      }
    }
    this.enforceMemory()
  }

  /** The playhead moved (null: not playing): its window is fetched first and kept in memory. */
  setPlayhead (block, now) {
    this.replicator.setPlayhead(block, now)
  }

  /** The node's stats with the keys of /stats (core/stats.py NodeStats.as_json; the player
   *  fills live_delay_s and ended), plus the tab's memory and ban figures. */
  stats (now = null) {
    const feed = this.feed
    return {
      key: [...feed.key].map((b) => b.toString(16).padStart(2, '0')).join(''),
      length: feed.length,
      blocks_have: feed.present.count(),
      byte_length: feed.byteLength,
      live_delay_s: null,
      ended: false,
      ...this.replicator.stats(now),
      evicted: this.evicted,
      block_bytes_held: feed.blockBytes,
      blocks_evicted: this.evicted,
      banned: this._banned.size,
    }
  }

  _events (peer, link, now) {
    let e
    while ((e = link.session.nextEvent())) {
      if (e.type === 'misbehaved') this.ban(peer, now)
      if (e.type === 'handshake' && this.pending.get(peer)?.link === link) {
        // The new link verified: it replaces the old one now.
        const entry = this.pending.get(peer)
        this.pending.delete(peer)
        const old = this.links.get(peer)
        this.links.set(peer, entry)
        if (old) this._finish(peer, old, 'replaced by a new connection', now)
      }
      if (this.onEvent) this.onEvent({ ...e, peer, link })
    }
    const entry = this._entry(peer, link)
    if (link.closed && entry && entry.link === link) this._dropEntry(peer, entry, link.closeReason, now)
  }

  _drop (peer, reason, now) {
    const entry = this.links.get(peer)
    if (entry) this._dropEntry(peer, entry, reason, now)
  }

  _dropEntry (peer, entry, reason, now) {
    if (this.links.get(peer) === entry) this.links.delete(peer)
    else if (this.pending.get(peer) === entry) this.pending.delete(peer)
    else return
    this._finish(peer, entry, reason, now)
  }

  _finish (peer, entry, reason, now) {
    entry.link.close(reason)
    this._events(peer, entry.link, now)
    if (this.onEvent) this.onEvent({ type: 'closed', peer, link: entry.link, reason: entry.link.closeReason })
  }

  /** Evict block values beyond maxBlockBytes, farthest from where the viewer is first. */
  enforceMemory () {
    const feed = this.feed
    if (feed.blockBytes <= this.maxBlockBytes) return
    const rep = this.replicator
    const head = rep.playhead !== null ? rep.playhead : feed.length - 1
    const keepEnd = head + rep.blocks(rep.config.playbackWindow)
    const candidates = [...feed.blocks.keys()]
      .filter((i) => i !== 0 && !(i >= head && i < keepEnd) && !rep.isWanted(i))
      .sort((a, b) => Math.abs(b - head) - Math.abs(a - head))
    for (const i of candidates) {
      if (feed.blockBytes <= this.maxBlockBytes) break
      rep.evict(i, i + 1)
      this.evicted++
    }
  }
}
