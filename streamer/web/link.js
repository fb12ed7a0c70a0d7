// One session over one data channel, sans-IO: the credit window and keepalive of
// streamer/net/rtc.py wrapped around a replication Session.
//
// One job: decide what crosses the channel and when. Binary messages are the session's chunks
// and spend credit (size + 64 bytes each); text messages are control ("c<n>" grants n bytes of
// window back once our side consumed a quarter of it, "p" keeps an idle channel alive). A peer
// that overruns its window, sends a bad grant or stays silent for 20 s is closed. The
// RTCDataChannel adapter feeds receive(), sends what outgoing() returns and calls tick().

import { FlowControl, HIGH_WATER_DEFAULT } from './wire.js'

export const HIGH_WATER = HIGH_WATER_DEFAULT // bytes queued in the transport above which we wait
export const LOW_WATER = 256 * 1024 // ... until it drains below this (bufferedamountlow)
export const TICK_S = 2.5 // how often the adapter should call tick()

export class Link {
  /**
   * @param session a Session (session.js)
   * @param opts {window, keepalive, idleTimeout, now}: see wire.FlowControl
   */
  constructor (session, opts = {}) {
    this.session = session
    this.flow = new FlowControl(opts)
    this._held = [] // chunks taken from the session that wait for credit
    this._texts = [] // control messages to send first
    this.closeReason = null
  }

  get closed () {
    return this.closeReason !== null
  }

  /** A data-channel message arrived (string: control; Uint8Array or ArrayBuffer: the session's);
   *  resolves once the session handled it. Check `closed` afterwards: the channel must then be
   *  closed (and, if the session reported a misbehaving peer, the peer banned). */
  async receive (message, now) {
    if (this.closed) return
    if (typeof message === 'string') {
      const err = this.flow.control(message, now)
      if (err) this.close(err.message)
      return
    }
    if (message instanceof ArrayBuffer) message = new Uint8Array(message) // binaryType 'arraybuffer'
    const err = this.flow.received(message.length, now)
    if (err) {
      this.close(err.message)
      return
    }
    await this.session.receive(message, now)
    const grant = this.flow.consumed(message.length)
    if (grant !== null) this._texts.push(grant)
    if (this.session.closed) this.close(this.session.closeReason || 'session closed')
  }

  /** Messages (strings and Uint8Arrays, in order) to send now; `room` is what the transport can
   *  take (HIGH_WATER minus its bufferedAmount). Binary chunks wait here while credit is short. */
  outgoing (now, room = HIGH_WATER) {
    const out = []
    if (this.closed) return out
    if (this._texts.length) {
      out.push(...this._texts)
      this._texts = []
      this.flow.sentText(now)
    }
    while (room > 0) {
      if (!this._held.length) {
        this._held = this.session.datagramsToSend(now, Math.min(room, this.flow.credit))
        if (!this._held.length) break
      }
      const chunk = this._held[0]
      if (!this.flow.canSend(chunk.length)) break
      this._held.shift()
      this.flow.sent(chunk.length, now)
      out.push(chunk)
      room -= chunk.length
    }
    return out
  }

  /** Whether outgoing() has something now (credit permitting). */
  wantsToSend () {
    return !this.closed && (this._texts.length > 0 || this._held.length > 0 || this.session.wantsToSend())
  }

  /** Call every TICK_S: closes a silent peer, queues a keepalive when we have been quiet. */
  tick (now) {
    if (this.closed) return
    const due = this.flow.tick(now)
    if (due === 'idle') this.close('peer silent')
    else if (due === 'p' && !this._texts.includes('p')) this._texts.push('p')
  }

  close (reason) {
    if (this.closed) return
    this.closeReason = reason
    this._held = []
    this._texts = []
    this.session.close(reason)
  }
}
