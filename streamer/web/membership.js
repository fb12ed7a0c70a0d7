// Swarm membership policy of one node, sans-IO (streamer/core/membership.py, rule for rule).
//
// One job: decide who to dial, what to answer on the signaling hub, when to announce, whom to
// drop to make room for a newcomer and whom to refuse for a while. Signaling messages, connection
// events and the time (seconds) go in; actions come out:
//   {type: 'post', to (null: everyone), message}   post `message` (add "from") on the hub
//   {type: 'dial', peer, offer (null: we offer)}   open a connection (or answer `offer`)
//   {type: 'evict', peer}                          close that neighbour's connection
//   {type: 'answer', peer, sdp (null: declined)}   our pending dial got its answer
//   {type: 'cancelDial', peer}                     the peer left: stop dialling it
//   {type: 'ignored', why}                         a malformed or misaddressed message
// The rules are in docs/signaling.md ("The swarm of one stream"): the lower id offers; at most
// maxPeers neighbours, dials included; a node with no neighbour that only hears "full" asks one
// full node for room; that node promises room only to a newcomer that announced itself isolated,
// once per cooldown and per newcomer, and only if a neighbour would keep another path (they
// report their counts); it evicts that neighbour once the newcomer's connection verified.
// connected() and disconnected() return actions too (count reports, the eviction).

export const PEER_ID = /^[0-9a-f]{32}$/
export const MAX_SDP = 64 * 1024
export const MAX_BANNED = 1024
export const MAX_FULL_NODES = 32
export const EVICT_COOLDOWN_S = 5.0 // a full node makes room for a newcomer at most this often
export const SENDER_EVICT_COOLDOWN_S = 60.0 // ... and for the same newcomer at most this often
export const HEARD_S = 30.0 // room only for a newcomer that broadcast "hello, n: 0" this recently
export const ROOM_HOLD_S = 30.0 // room promised to a newcomer is kept for it this long
export const MAX_HEARD = 4096 // peers whose last broadcast hello is remembered
export const ISOLATED_RETRY_S = 2.0
export const ANNOUNCE_JITTER = [0.8, 1.2]

/** 32 random lowercase hex digits: a peer id for this run. */
export function newPeerId () {
  const b = new Uint8Array(16)
  globalThis.crypto.getRandomValues(b)
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('')
}

function message (type, to = null, fields = {}) {
  const m = { type }
  if (to !== null) m.to = to
  Object.assign(m, fields)
  return { type: 'post', to, message: m }
}

export const offerMessage = (to, sdp) => message('offer', to, { sdp })
export const answerMessage = (to, sdp) => message('answer', to, { sdp })
export const byeMessage = () => message('bye')

export class Membership {
  /** @param opts {maxPeers, banSeconds, announceInterval, random: () => [0, 1)} */
  constructor (peerId, { maxPeers = 6, banSeconds = 60, announceInterval = 10, random = Math.random } = {}) {
    if (maxPeers < 1) throw new Error('maxPeers must be at least 1')
    this.peerId = peerId
    this.maxPeers = maxPeers
    this.banSeconds = banSeconds
    this.announceInterval = announceInterval
    this.neighbours = new Map() // peer id -> is the writer
    this.dialing = new Set()
    this._random = random
    this._banned = new Map() // peer id -> until
    this._fullNodes = new Set() // heard "full" from them while isolated
    this._asked = null
    this._lastEviction = -Infinity
    this._heard = new Map() // peer -> [when, its neighbour count or null], oldest first
    this._roomGiven = new Map() // newcomer -> when we promised it room
    this._roomFor = null // the newcomer we promised room to, until _roomUntil
    this._roomUntil = -Infinity
    this._announceRequested = false
    this._announcedAt = -Infinity
    this._jitter = 1.0
    this._leaving = false
  }

  hasRoom () {
    return this.neighbours.size + this.dialing.size < this.maxPeers
  }

  /** Room for `peer`: room, or room we promised it. */
  hasRoomFor (peer, now) {
    return this.hasRoom() || (peer === this._roomFor && now < this._roomUntil)
  }

  /** The neighbour count `peer` last told us (null: unknown). */
  neighbourCount (peer) {
    const heard = this._heard.get(peer)
    return heard ? heard[1] : null
  }

  isBanned (peer, now) {
    const until = this._banned.get(peer)
    return until !== undefined && until > now
  }

  ban (peer, now) {
    for (const [p, until] of this._banned) if (until <= now) this._banned.delete(p)
    this._banned.delete(peer)
    if (this._banned.size >= MAX_BANNED) this._banned.delete(this._banned.keys().next().value)
    const until = now + this.banSeconds
    this._banned.set(peer, until)
    return until
  }

  /** `peer` is a verified neighbour now: actions (count reports; the eviction a promised
   *  newcomer's connection calls for). */
  connected (peer, isWriter) {
    this.neighbours.set(peer, isWriter)
    this._fullNodes.clear()
    if (peer === this._roomFor) {
      this._roomFor = null
      this._roomUntil = -Infinity
    }
    const actions = []
    const dialingOthers = [...this.dialing].filter((p) => p !== peer).length
    if (this.neighbours.size + dialingOthers > this.maxPeers) {
      const victim = this._victim(peer)
      if (victim !== null) {
        this.neighbours.delete(victim)
        actions.push({ type: 'evict', peer: victim })
      }
    }
    return [...actions, ...this._reportCount()]
  }

  /** Neighbour `peer` is gone (not by evict): announce at once; tell the others our count. */
  disconnected (peer) {
    if (!this.neighbours.delete(peer)) return []
    this._announceRequested = true
    return this._reportCount()
  }

  _reportCount () {
    const n = this.neighbours.size
    return [...this.neighbours.keys()].map((p) => message('hello', p, { n }))
  }

  dialEnded (peer) {
    this.dialing.delete(peer)
    if (peer === this._roomFor && !this.neighbours.has(peer)) {
      this._roomFor = null
      this._roomUntil = -Infinity
    }
  }

  requestAnnounce () {
    this._announceRequested = true
  }

  leave () {
    this._leaving = true
  }

  /** One message from the hub (decoded JSON): the actions it calls for. */
  signal (msg, now) {
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return [{ type: 'ignored', why: 'not an object' }]
    const { type: kind, from: sender, to } = msg
    if (typeof sender !== 'string' || !PEER_ID.test(sender)) return [{ type: 'ignored', why: 'bad sender id' }]
    if (sender === this.peerId || this._leaving) return []
    const addressed = to !== undefined && to !== null
    if (addressed && to !== this.peerId) return [{ type: 'ignored', why: 'addressed to another peer' }]
    if (kind === 'hello') {
      const evict = msg.evict === true && addressed
      if (!addressed) {
        this._hear(sender, msg.n, now)
      } else if ('n' in msg && !evict) {
        // A neighbour's count report (not "please dial me", which has no n).
        if (this.neighbours.has(sender)) this._hear(sender, msg.n, now)
        return []
      }
      return this._onHello(sender, msg.n, evict, now)
    }
    if (kind === 'full' && addressed) {
      this._onFull(sender)
      return []
    }
    if (kind === 'offer' && addressed) return this._onOffer(sender, msg.sdp, now)
    if ((kind === 'answer' || kind === 'reject') && addressed) {
      const sdp = msg.sdp
      if (kind === 'answer' && typeof sdp === 'string' && sdp.length <= MAX_SDP) return [{ type: 'answer', peer: sender, sdp }]
      return [{ type: 'answer', peer: sender, sdp: null }]
    }
    if (kind === 'bye') return this.dialing.has(sender) ? [{ type: 'cancelDial', peer: sender }] : []
    return [{ type: 'ignored', why: `unknown type ${JSON.stringify(String(kind).slice(0, 20))}` }]
  }

  _onHello (sender, theirPeers, evict, now) {
    if (this.neighbours.has(sender) || this.dialing.has(sender) || this.isBanned(sender, now)) return []
    const actions = []
    if (!this.hasRoom() && evict) this._promiseRoom(sender, now)
    if (!this.hasRoomFor(sender, now)) {
      if (theirPeers === 0) actions.push(message('full', sender))
      return actions
    }
    if (this.peerId < sender) actions.push(this._dial(sender))
    else actions.push(message('hello', sender))
    return actions
  }

  _onFull (sender) {
    if (this.neighbours.size) return
    if (sender === this._asked) {
      this._asked = null
      this._announceRequested = true
    } else if (!this._fullNodes.has(sender) && this._fullNodes.size < MAX_FULL_NODES) {
      if (!this._fullNodes.size) this._announceRequested = true
      this._fullNodes.add(sender)
    }
  }

  _hear (sender, theirPeers, now) {
    const count = Number.isInteger(theirPeers) ? theirPeers : null
    this._heard.delete(sender)
    this._heard.set(sender, [now, count])
    if (this._heard.size > MAX_HEARD) this._heard.delete(this._heard.keys().next().value)
  }

  /** A newcomer asked us, full, for room: promise it one slot over the bound if every rule
   *  allows (announced itself isolated, one promise at a time, cooldowns, a victim exists). */
  _promiseRoom (sender, now) {
    if (now < this._roomUntil || now - this._lastEviction < EVICT_COOLDOWN_S) return
    const heard = this._heard.get(sender)
    if (!heard || now - heard[0] > HEARD_S || heard[1] !== 0) return
    const given = this._roomGiven.get(sender)
    if (given !== undefined && now - given < SENDER_EVICT_COOLDOWN_S) return
    if (this._victim(sender) === null) return
    this._roomFor = sender
    this._roomUntil = now + ROOM_HOLD_S
    this._lastEviction = now
    this._roomGiven.delete(sender)
    this._roomGiven.set(sender, now)
    for (const [p, when] of this._roomGiven) {
      if (this._roomGiven.size <= MAX_HEARD && now - when < SENDER_EVICT_COOLDOWN_S) break
      this._roomGiven.delete(p)
    }
  }

  /** The neighbour to drop for a newcomer: one that told us it has another neighbour besides
   *  us, never the writer if another will do; null if there is none. */
  _victim (exclude) {
    const candidates = [...this.neighbours.keys()].filter((p) => p !== exclude && (this.neighbourCount(p) || 0) >= 2)
    if (!candidates.length) return null
    const others = candidates.filter((p) => !this.neighbours.get(p))
    const pool = others.length ? others : candidates
    return pool[Math.floor(this._random() * pool.length)]
  }

  _onOffer (sender, sdp, now) {
    if (sender > this.peerId) return [{ type: 'ignored', why: 'offer from the higher peer id' }]
    if (this.dialing.has(sender)) return []
    if (this.isBanned(sender, now) || typeof sdp !== 'string' || sdp.length > MAX_SDP) return [message('reject', sender)]
    if (!this.neighbours.has(sender) && !this.hasRoomFor(sender, now)) return [message('reject', sender)]
    return [this._dial(sender, sdp)]
  }

  _dial (peer, offer = null) {
    this.dialing.add(peer)
    return { type: 'dial', peer, offer }
  }

  /** What to post now that announceDeadline() has passed; call announced() once it went out. */
  announce () {
    this._announceRequested = false
    if (!this.hasRoom()) return []
    if (!this.neighbours.size && !this.dialing.size && this._fullNodes.size) {
      const nodes = [...this._fullNodes]
      const target = nodes[Math.floor(this._random() * nodes.length)]
      this._fullNodes.delete(target)
      this._asked = target
      return [message('hello', target, { n: 0, evict: true })]
    }
    return [message('hello', null, { n: this.neighbours.size })]
  }

  announced (now) {
    this._announcedAt = now
    const [lo, hi] = ANNOUNCE_JITTER
    this._jitter = lo + (hi - lo) * this._random()
  }

  /** When to announce next (seconds); re-read after every input. */
  announceDeadline () {
    if (this._announceRequested) return -Infinity
    let interval = this.announceInterval * this._jitter
    if (!this.neighbours.size) interval = Math.min(interval, ISOLATED_RETRY_S)
    return this._announcedAt + interval
  }
}
