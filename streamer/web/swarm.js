// The tab in its stream's swarm: the hub's signalhub API (SSE + POST), the membership policy
// (membership.js), and RTCPeerConnection / RTCDataChannel glue around the PeerSet (peers.js).
//
// One job: move bytes and signaling messages; every rule lives in the sans-IO modules. Like
// streamer/net/swarm.py: the lower peer id offers one reliable, ordered data channel labelled
// "swarmcast"; SDP goes whole (ICE gathering completes first); the offerer waits 15 s for the
// answer, both wait 15 s for the channel to open, then the PeerSet runs the handshake bound to
// both SDPs' DTLS fingerprints (10 s). A verified handshake makes the peer a neighbour; a peer
// that misbehaves is dropped and banned (by the PeerSet for replication, by the membership for
// signaling).

import { discoveryKey } from './crypto.js'
import { toHex } from './encoding.js'
import { HIGH_WATER, LOW_WATER, TICK_S } from './link.js'
import { answerMessage, byeMessage, Membership, newPeerId, offerMessage } from './membership.js'

export const APP = 'swarmcast'
export const LABEL = 'swarmcast'
export const CONNECT_TIMEOUT_S = 15
export const ANSWER_TIMEOUT_S = 8 // an offer unanswered this long is given up (its slot reused)
export const GATHER_TIMEOUT_S = 10 // ICE gathering that never completes: send what we have

const seconds = () => performance.now() / 1000

function timeout (ms, what) {
  let timer
  const p = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(what)), ms) })
  p.clear = () => clearTimeout(timer)
  return p
}

function gathered (pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve()
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); resolve() }
    const timer = setTimeout(done, GATHER_TIMEOUT_S * 1000)
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') done()
    })
  })
}

/** Hold what arrives on `dc` until the PeerSet takes the channel: the peer's handshake may come
 *  before our own answer has been posted (or the channel handed over). */
function buffer (dc) {
  dc.binaryType = 'arraybuffer'
  const early = []
  dc.onmessage = (ev) => early.push(ev.data)
  return early
}

function channelOpen (dc, ms) {
  if (dc.readyState === 'open') return Promise.resolve()
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('the data channel did not open in time')), ms)
    dc.addEventListener('open', () => { clearTimeout(t); resolve() }, { once: true })
    dc.addEventListener('close', () => { clearTimeout(t); reject(new Error('the data channel closed')) }, { once: true })
  })
}

export class TabSwarm {
  /**
   * @param peers the PeerSet replicating the feed (its onEvent must call swarm.peerEvent)
   * @param opts {hub (base URL), iceServers, maxPeers, log(text), auth: a SignalAuth (signal.js)
   *   to seal every post and check messages heard, or null for unsigned signaling;
   *   requireProof: refuse messages without a proof (else only those with one are checked)}
   */
  constructor (peers, { hub, iceServers = [], maxPeers = 6, log = () => {}, auth = null, requireProof = true }) {
    this.peers = peers
    this.hub = hub.replace(/\/+$/, '')
    this.iceServers = iceServers
    this.log = log
    this.auth = auth
    this.requireProof = requireProof
    this.peerId = auth ? auth.peerId : newPeerId()
    this.dk = toHex(discoveryKey(peers.feed.key))
    this.membership = new Membership(this.peerId, { maxPeers })
    this.channels = new Map() // Link -> {peer, pc, dc, link}: channels handed to the PeerSet
    this.dials = new Map() // peer id -> {pc, answer: {resolve, reject}, done}
    this.counters = {
      hub_messages_ignored: 0, dials_failed: 0, handshakes_failed: 0, connections_opened: 0,
      evictions: 0, posts_failed: 0, signals_checked: 0,
    }
    this.signalsRefused = {} // reason -> count (signed signaling only)
    this._heard = Promise.resolve() // signaling messages are handled in order
    this._source = null
    this._announceTimer = null
    this._tick = null
    this._left = false
    this._bye = null // a sealed bye, ready for a page that is being closed
    this._byeTimer = null
  }

  /** Subscribe to the hub and start announcing. */
  join () {
    const url = `${this.hub}/v1/${APP}/${this.dk},${this.dk}.${this.peerId}`
    this._source = new EventSource(url)
    this._source.onopen = () => { this.membership.requestAnnounce(); this._scheduleAnnounce() }
    this._source.onmessage = (ev) => this._onSignal(ev.data)
    this._tick = setInterval(() => { this.peers.tick(seconds()); this.flushAll() }, (TICK_S * 1000) / 5)
    this._scheduleAnnounce()
    if (this.auth) {
      // A page being closed cannot wait for WebCrypto: keep a sealed bye ready (fresh for 60 s).
      const seal = () => this.auth.seal(byeMessage().message, Date.now()).then((m) => { this._bye = m }, () => {})
      seal()
      this._byeTimer = setInterval(seal, 20_000)
    }
  }

  /** Post bye and close everything. */
  leave () {
    if (this._left) return
    this._left = true
    this.membership.leave()
    if (this._bye) this._send(this.dk, this._bye, true).catch(() => {})
    else this._post(byeMessage(), true)
    clearInterval(this._byeTimer)
    if (this._source) this._source.close()
    clearTimeout(this._announceTimer)
    clearInterval(this._tick)
    for (const d of this.dials.values()) d.pc.close()
    for (const conn of [...this.channels.values()]) this._closeConn(conn, 'left the swarm')
  }

  stats () {
    return {
      peer_id: this.peerId,
      neighbours_writer: [...this.membership.neighbours.values()].filter(Boolean).length,
      ...this.counters,
      signals_refused: Object.values(this.signalsRefused).reduce((a, b) => a + b, 0),
      signals_refused_by: { ...this.signalsRefused },
    }
  }

  // -------------------------------------------------------------- signaling

  async _post (action, keepalive = false) {
    const channel = action.to === null ? this.dk : `${this.dk}.${action.to}`
    try {
      const message = this.auth
        ? await this.auth.seal(action.message, Date.now())
        : { ...action.message, from: this.peerId }
      await this._send(channel, message, keepalive)
      return true
    } catch (e) {
      this.counters.posts_failed++
      return false
    }
  }

  async _send (channel, message, keepalive = false) {
    const res = await fetch(`${this.hub}/v1/${APP}/${channel}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(message),
      keepalive,
    })
    if (!res.ok) throw new Error(`hub answered ${res.status}`)
  }

  _onSignal (text) {
    let msg
    try {
      msg = JSON.parse(text)
    } catch {
      this.counters.hub_messages_ignored++
      return
    }
    const proved = msg && typeof msg === 'object' && (this.requireProof || 'mac' in msg)
    if (this.auth && proved && msg.from !== this.peerId) {
      this._heard = this._heard.then(async () => {
        const verdict = await this.auth.check(msg, Date.now())
        this.counters.signals_checked++
        if (verdict === 'ok') this._signal(msg)
        else this.signalsRefused[verdict] = (this.signalsRefused[verdict] || 0) + 1
      })
      return
    }
    this._signal(msg)
  }

  _signal (msg) {
    for (const action of this.membership.signal(msg, seconds())) this._execute(action)
    this._scheduleAnnounce()
  }

  _scheduleAnnounce () {
    if (this._left) return
    clearTimeout(this._announceTimer)
    const wait = Math.max(0, this.membership.announceDeadline() - seconds())
    this._announceTimer = setTimeout(() => this._announce(), Math.min(wait, 60) * 1000)
  }

  _announce () {
    if (this.membership.announceDeadline() > seconds()) return this._scheduleAnnounce()
    for (const action of this.membership.announce()) this._execute(action)
    this.membership.announced(seconds())
    this._scheduleAnnounce()
  }

  _execute (action) {
    switch (action.type) {
      case 'post': this._post(action); break
      case 'dial': this._dial(action.peer, action.offer); break
      case 'evict': {
        const conn = this.current(action.peer)
        if (conn) {
          this.counters.evictions++
          this._closeConn(conn, 'made room for a newcomer')
        }
        break
      }
      case 'answer': {
        const d = this.dials.get(action.peer)
        if (d && d.answer) {
          if (action.sdp !== null) d.answer.resolve(action.sdp)
          else d.answer.reject(new Error(`peer ${action.peer.slice(0, 8)} declined the connection`))
        }
        break
      }
      case 'cancelDial': {
        const d = this.dials.get(action.peer)
        if (d) d.cancel(new Error('the peer left'))
        break
      }
      case 'ignored': this.counters.hub_messages_ignored++; break
    }
  }

  // -------------------------------------------------------------- connections

  _dial (peer, offer) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers })
    const dial = { pc, answer: null, cancel: null, handshake: null, link: null }
    const cancelled = new Promise((resolve, reject) => { dial.cancel = reject })
    cancelled.catch(() => {})
    this.dials.set(peer, dial)
    this._connect(peer, offer, dial, cancelled)
      .catch((e) => {
        this.counters.dials_failed++
        this.log(`connecting to ${peer.slice(0, 8)} failed: ${e.message}`)
        if (![...this.channels.values()].some((c) => c.pc === pc)) pc.close()
      })
      .finally(() => {
        if (this.dials.get(peer) === dial) this.dials.delete(peer)
        this.membership.dialEnded(peer)
        this._scheduleAnnounce()
      })
  }

  async _connect (peer, offer, dial, cancelled) {
    const { pc } = dial
    const race = (p) => Promise.race([p, cancelled])
    let dc
    let early = []
    const initiator = offer === null
    let remoteSdp
    if (initiator) {
      dc = pc.createDataChannel(LABEL)
      early = buffer(dc)
      await pc.setLocalDescription(await pc.createOffer())
      await race(gathered(pc))
      const answered = new Promise((resolve, reject) => { dial.answer = { resolve, reject } })
      await this._post(offerMessage(peer, pc.localDescription.sdp))
      const limit = timeout(ANSWER_TIMEOUT_S * 1000, 'no answer to our offer')
      try {
        remoteSdp = await race(Promise.race([answered, limit]))
      } finally {
        limit.clear()
      }
      await pc.setRemoteDescription({ type: 'answer', sdp: remoteSdp })
    } else {
      remoteSdp = offer
      const got = new Promise((resolve) => {
        pc.ondatachannel = ({ channel }) => {
          if (channel.label === LABEL && !dc) {
            early = buffer(channel)
            resolve(channel)
          } else {
            channel.close()
          }
        }
      })
      await pc.setRemoteDescription({ type: 'offer', sdp: offer })
      await pc.setLocalDescription(await pc.createAnswer())
      await race(gathered(pc))
      await this._post(answerMessage(peer, pc.localDescription.sdp))
      const limit = timeout(CONNECT_TIMEOUT_S * 1000, 'no data channel in time')
      try {
        dc = await race(Promise.race([got, limit]))
      } finally {
        limit.clear()
      }
    }
    await race(channelOpen(dc, CONNECT_TIMEOUT_S * 1000))
    if (this._left) throw new Error('left the swarm')
    const verified = new Promise((resolve, reject) => { dial.handshake = { resolve, reject } })
    this._attach(peer, pc, dc, remoteSdp, initiator, early, dial)
    await verified // PeerSet closes a link whose handshake takes over 10 s
  }

  _attach (peer, pc, dc, remoteSdp, initiator, early, dial) {
    dc.bufferedAmountLowThreshold = LOW_WATER
    const link = this.peers.open(peer, { localSdp: pc.localDescription.sdp, remoteSdp, initiator, now: seconds() })
    if (!link) {
      pc.close()
      throw new Error('the peer is banned')
    }
    dial.link = link
    // Beside a verified link to the same peer until this one's handshake verifies (peers.js).
    const conn = { peer, pc, dc, link }
    this.channels.set(link, conn)
    let chain = Promise.resolve()
    const receive = (data) => {
      chain = chain.then(() => this.peers.receive(peer, data, seconds(), link)).then(() => this.flushAll())
    }
    for (const data of early) receive(data)
    dc.onmessage = (ev) => receive(ev.data)
    dc.onbufferedamountlow = () => this._flush(conn)
    dc.onclose = () => this.peers.closed(peer, seconds(), link)
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') this._closeConn(conn, 'connection failed')
    }
    this.flushAll()
  }

  /** The channel of `peer`'s verified (current) link, if any. */
  current (peer) {
    const entry = this.peers.links.get(peer)
    return entry ? this.channels.get(entry.link) : undefined
  }

  _closeConn (conn, reason) {
    if (this.channels.get(conn.link) !== conn) return
    conn.link.close(reason)
    this.peers.closed(conn.peer, seconds(), conn.link) // emits 'closed': peerEvent cleans up
    if (this.channels.get(conn.link) === conn) {
      this.channels.delete(conn.link)
      conn.pc.close()
    }
  }

  /** The PeerSet's events: wire them into the membership (call from PeerSet's onEvent). */
  peerEvent (e) {
    const now = seconds()
    const dial = this.dials.get(e.peer)
    const ours = dial && dial.link === e.link
    if (e.type === 'handshake') {
      this.counters.connections_opened++
      for (const action of this.membership.connected(e.peer, e.remoteIsWriter)) this._execute(action)
      if (ours && dial.handshake) dial.handshake.resolve()
      this._scheduleAnnounce()
    } else if (e.type === 'misbehaved') {
      this.membership.ban(e.peer, now)
      if (!this.membership.neighbours.has(e.peer)) this.counters.handshakes_failed++
      this.log(`dropped and banned ${e.peer.slice(0, 8)}: ${e.reason}`)
    } else if (e.type === 'closed') {
      if (ours && dial.handshake) dial.handshake.reject(new Error(e.reason || 'closed'))
      const conn = this.channels.get(e.link)
      if (conn) {
        this.channels.delete(e.link)
        conn.pc.close()
      }
      // A link replaced by a newer verified one is not a lost neighbour.
      if (!this.peers.links.has(e.peer)) {
        for (const action of this.membership.disconnected(e.peer)) this._execute(action)
        this._scheduleAnnounce()
      }
    }
  }

  // -------------------------------------------------------------- bytes

  flush (peer) {
    const conn = this.current(peer)
    if (conn) this._flush(conn)
  }

  _flush (conn) {
    const { peer, dc, link } = conn
    if (this.channels.get(link) !== conn || dc.readyState !== 'open') return
    try {
      for (const m of this.peers.outgoing(peer, seconds(), HIGH_WATER - dc.bufferedAmount, link)) dc.send(m)
    } catch (e) {
      this._closeConn(conn, `send failed: ${e.message}`)
      return
    }
    if (this.peers.isClosed(peer, link)) this._closeConn(conn, 'closed')
  }

  flushAll () {
    for (const conn of [...this.channels.values()]) this._flush(conn)
  }
}
