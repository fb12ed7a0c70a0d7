// The tab's player: Media Source Extensions fed straight from the in-memory feed.
//
// One job: turn verified blocks into video (docs/stream-format.md, "How to play it"). It asks for
// the stream header (block 0), opens a SourceBuffer with its MIME type, appends the init segment,
// joins at the live edge (or the start of an ended stream, or ?at=), appends the following blocks
// while less than AHEAD_S is buffered, tells the replicator where the playhead is (its window is
// fetched first), follows the live edge, seeks anywhere (older blocks are fetched from peers on
// demand) and keeps memory bounded: media more than BEHIND_S behind the playhead is removed from
// the SourceBuffer (the feed's own cap evicts block values, peers.js). Blocks that no one holds
// (history nobody watched, once the broadcaster left) are stepped over: after UNAVAILABLE_S
// without a neighbour announcing one, playback goes on from the next independent part held.

import { decodeHeader, decodeSegment, decodeSegmentHeader } from './format.js'
import { PRIORITY_HIGH } from './replicator.js'

export const AHEAD_S = 4 // media buffered ahead of the playhead
export const BEHIND_S = 30 // played media kept in the SourceBuffer before it is removed
export const LIVE_START_S = 1.2 // a start at the live edge aims this far behind it
export const UNAVAILABLE_S = 3 // a block no neighbour announced this long is stepped over

const UNAVAILABLE = Symbol('held by no one')

const seconds = () => performance.now() / 1000

export class TabPlayer {
  /**
   * @param video an HTMLVideoElement
   * @param peers the PeerSet (its feed and replicator)
   * @param opts {flush(): send what the replicator queued, status(text), at (stream seconds)}
   */
  constructor (video, peers, { flush = () => {}, status = () => {}, at = null } = {}) {
    this.video = video
    this.peers = peers
    this.feed = peers.feed
    this.flush = flush
    this.status = status
    this.at = at
    this.header = null
    this.heads = new Map() // block index -> segment header {pts, duration, wallClock, end, ...}
    this.nextBlock = null // the next block the pump appends (null: a seek is placing the playhead)
    this.generation = 0
    this.followLive = true
    this.ended = false
    this.firstFrameAt = null // performance.now() ms when the first frame was shown
    this.joinBlock = null
    this.appended = 0
    this.removed = 0 // seconds of media removed from the SourceBuffer
    this.skipped = 0 // blocks stepped over because no one held them
    this._skipFrom = null // this.skipped before a hole the pump stepped over (for seek's status)
    this.closed = false
    this._watchdogTimer = null
    this._ms = null
    this._sb = null
    this._chain = Promise.resolve()
    this._wake = null
    this._lastPlayhead = null
    this._playheadAt = 0
    this._expect = null // a currentTime we set ourselves (its seeking event is not the viewer's)
    // Remember the segment header of every block that verifies (even one never played), so the
    // timeline knows it after its value is evicted.
    this.feed.onChange((e) => {
      if (e.end > e.start && e.start > 0) this._head(e.start)
      this._kick()
    })
    video.addEventListener('seeking', () => {
      const t = video.currentTime
      const ours = this._expect !== null && Math.abs(t - this._expect) < 0.01
      this._expect = null
      if (!ours && this._sb) this.seek(t - this.delay, false)
    })
  }

  _setTime (t) {
    this._expect = t
    this.video.currentTime = t
  }

  // -------------------------------------------------------------- helpers

  get delay () {
    return (this.header && this.header.extra && this.header.extra.media_delay) || 0
  }

  get segment () {
    return (this.header && this.header.segment_duration) || 1
  }

  /** Nominal seconds per block: a segment (format v1) or a part (v2). */
  get blockDuration () {
    return (this.header && this.header.part_duration) || this.segment
  }

  _kick () {
    if (this._wake) this._wake()
  }

  _nap (ms) {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(t); this._wake = null; resolve() }
      const t = setTimeout(done, ms)
      this._wake = done
    })
  }

  _exclusive (fn) {
    const run = this._chain.then(fn)
    this._chain = run.catch(() => {})
    return run
  }

  _updateEnd () {
    const sb = this._sb
    return new Promise((resolve, reject) => {
      const ok = () => { sb.removeEventListener('error', bad); resolve() }
      const bad = () => { sb.removeEventListener('updateend', ok); reject(new Error('SourceBuffer error')) }
      sb.addEventListener('updateend', ok, { once: true })
      sb.addEventListener('error', bad, { once: true })
    })
  }

  async _append (data) {
    for (let attempt = 0; ; attempt++) {
      try {
        this._sb.appendBuffer(data)
        await this._updateEnd()
        return
      } catch (e) {
        if (e.name !== 'QuotaExceededError' || attempt >= 3) throw e
        await this._remove(0, this.video.currentTime - (attempt ? 1 : 10))
      }
    }
  }

  async _remove (start, end) {
    start = Math.max(0, start)
    if (end - start < 0.05) return
    this._sb.remove(start, end)
    await this._updateEnd()
    this.removed += end - start
  }

  _rangeAt (t) {
    const b = this._sb.buffered
    for (let i = 0; i < b.length; i++) if (t >= b.start(i) - 0.05 && t < b.end(i) - 0.05) return [b.start(i), b.end(i)]
    return null
  }

  _ahead () {
    const r = this._sb ? this._rangeAt(this.video.currentTime) : null
    return r ? r[1] - this.video.currentTime : 0
  }

  /** The segment header of a block we hold (remembered after the value is evicted). */
  _head (index) {
    let h = this.heads.get(index)
    if (h) return h
    const value = this.feed.get(index)
    if (!value) return null
    try {
      h = decodeSegmentHeader(value)
    } catch {
      return null
    }
    this.heads.set(index, h)
    return h
  }

  /** Wait until block `index` is held (fetched first); null if the generation moved on. With
   *  `grace` seconds, UNAVAILABLE once no neighbour announced it for that long while a later block
   *  is held (_goesOnAt): UNAVAILABLE_S, or 0 once a wait has shown what the neighbours hold. */
  async _fetch (index, generation, grace = null) {
    const since = seconds()
    for (;;) {
      if (this.feed.get(index)) return this.feed.get(index)
      if (generation !== this.generation) return null
      if (grace !== null && seconds() - since >= grace && this._goesOnAt(index) !== null) return UNAVAILABLE
      this.peers.replicator.want(index, index + 1, PRIORITY_HIGH, seconds())
      this.flush()
      await this._nap(250)
    }
  }

  /** Where the stream goes on when block `index` is held by no one we know: the first later media
   *  block that we or a neighbour hold; null while a neighbour holds `index` (it is only slow) or
   *  nothing later is held. */
  _goesOnAt (index) {
    const rep = this.peers.replicator
    if (rep.heldFrom(index) === index) return null
    const mine = this.feed.present.firstFrom(index + 1)
    const theirs = rep.heldFrom(index + 1)
    const next = mine === null ? theirs : theirs === null ? mine : Math.min(mine, theirs)
    return next !== null && next <= this._lastMedia() ? next : null
  }

  /** Step over the hole at block `index` (counted in `skipped`): the block after it, or null if
   *  `index` is no longer a hole. */
  _stepOver (index) {
    const next = this._goesOnAt(index)
    if (next !== null) this.skipped += next - index
    return next
  }

  /** From block `index` on, the first independent part (or v1 segment) we can get, stepping over
   *  blocks no one holds: [index, value], or null if the generation moved on. */
  async _independentFrom (index, generation, grace) {
    for (;;) {
      this._lastPlayhead = index
      this.peers.setPlayhead(index, seconds())
      const value = await this._fetch(index, generation, grace)
      if (value === null) return null
      if (value === UNAVAILABLE) {
        index = this._stepOver(index) ?? index
        grace = 0
        continue
      }
      const h = this._head(index)
      if (!h || h.independent || h.end || !h.back) return [index, value]
      index++
    }
  }

  /** The last block index whose media starts at or before stream time t, from what we know. */
  _guess (t) {
    let best = null
    for (const [i, h] of this.heads) if (h.pts <= t + 1e-6 && (best === null || i > best[0])) best = [i, h]
    const D = this.blockDuration
    let index = best ? best[0] + Math.floor((t - best[1].pts) / D) : 1 + Math.floor(t / D)
    return Math.min(Math.max(index, 1), Math.max(1, this._lastMedia()))
  }

  _lastMedia () {
    const n = this.feed.length
    const last = this._head(n - 1)
    return last && last.end ? n - 2 : n - 1
  }

  /** Stream time of the live edge: the end of the newest block we know of. */
  liveEdge () {
    const n = this._lastMedia()
    for (let i = n; i >= Math.max(1, n - 8); i--) {
      const h = this._head(i)
      if (h) return h.pts + h.duration + (n - i) * this.blockDuration
    }
    return null
  }

  /** The block playing now (null before anything plays). */
  playingBlock () {
    if (this.nextBlock === null && this._lastPlayhead !== null) return this._lastPlayhead
    const t = this.video.currentTime - this.delay
    let best = null
    for (const [i, h] of this.heads) if (!h.end && h.pts <= t + 1e-3 && (best === null || i > best)) best = i
    return best
  }

  // -------------------------------------------------------------- running

  async start () {
    this.status('waiting for the stream header from peers…')
    const head = await this._fetch(0, this.generation)
    this.header = decodeHeader(head)
    // The scheduler's windows are seconds of media: now it knows a block's length.
    this.peers.replicator.config.blockDuration = this.blockDuration
    const MS = globalThis.MediaSource
    if (!MS || !MS.isTypeSupported(this.header.mime)) {
      this.status(`this browser cannot play ${this.header.mime}; use \`viewer watch\` instead`)
      throw new Error(`cannot play ${this.header.mime}`)
    }
    this._ms = new MS()
    this.video.src = URL.createObjectURL(this._ms)
    await new Promise((resolve) => this._ms.addEventListener('sourceopen', resolve, { once: true }))
    this._sb = this._ms.addSourceBuffer(this.header.mime)
    this._sb.mode = 'segments'
    await this._exclusive(() => this._append(this.header.init))
    this.status('waiting for the first block…')
    while (this.feed.length < 2) await this._nap(250)
    // The newest block as the signed length stood: the feed may grow while it is fetched, and the
    // block after it may not be held yet, so the question "ended?" is asked of this one.
    const newest = this.feed.length - 1
    decodeSegmentHeader(await this._fetch(newest, this.generation))
    const ended = this._head(newest).end
    this._watchFrames()
    if (this.closed) return
    this._watchdogTimer = setInterval(() => this._watchdog(), 250)
    this._pump()
    if (this.at !== null) await this.seek(this.at, false)
    else if (ended) await this.seek(0, false)
    else await (this.goLive() ?? this.seek(this._head(newest).pts, true)) // no edge known: newest
  }

  /** Stop playing: the pump, the watchdog and any fetch end (the page never needs it; tests do). */
  close () {
    this.closed = true
    this.generation++
    if (this._watchdogTimer !== null) clearInterval(this._watchdogTimer)
    this._kick()
  }

  _watchFrames () {
    const v = this.video
    const first = () => { if (this.firstFrameAt === null) this.firstFrameAt = performance.now() }
    if (v.requestVideoFrameCallback) v.requestVideoFrameCallback(first)
    else v.addEventListener('playing', first, { once: true })
  }

  /** Jump to the live edge and follow it. */
  goLive () {
    const edge = this.liveEdge()
    if (edge === null) return
    const h = this._head(this._lastMedia())
    return this.seek(Math.max(h ? h.pts : 0, edge - LIVE_START_S), true)
  }

  /** Play from stream time t (seconds since the stream started). */
  async seek (t, live = false) {
    const edge = this.liveEdge()
    this.followLive = live || (edge !== null && edge - t < Math.max(3, 2 * this.segment + 0.5))
    const generation = ++this.generation
    const skippedBefore = this._skipFrom ?? this.skipped
    // Blocks held by no one are stepped over after UNAVAILABLE_S, at once after a first wait
    // (the pump's at a hole, or this seek's) has shown what the neighbours hold.
    let grace = this._skipFrom === null ? UNAVAILABLE_S : 0
    this._skipFrom = null
    this.nextBlock = null
    this.status(`loading ${t.toFixed(1)} s…`)
    let index = this._guess(t)
    let value = null
    let skipped = false
    for (let step = 0; step < 16; step++) {
      this._lastPlayhead = index
      this.peers.setPlayhead(index, seconds())
      value = await this._fetch(index, generation, grace)
      if (value === null) return
      if (value === UNAVAILABLE) {
        // Held by no one: the stream goes on at a later block (never back into the hole).
        const next = this._stepOver(index)
        if (next !== null) {
          index = next
          skipped = true
          grace = 0
        }
        continue
      }
      const h = this._head(index)
      if (skipped) t = Math.max(t, h.pts)
      if (h.end && index > 1) { index--; continue }
      if (t < h.pts && index > 1) { index--; continue }
      if (t >= h.pts + h.duration && index < this._lastMedia()) { index++; continue }
      break
    }
    if (value === UNAVAILABLE) {
      this.status('no peer holds the stream from here on')
      return
    }
    const covering = this._head(index)
    if (covering && !covering.independent && covering.back && index - covering.back >= 1) {
      // A dependent part: start at the keyframe part it decodes from, or (held by no one) at the
      // next independent part.
      const key = index - covering.back
      this._lastPlayhead = key
      this.peers.setPlayhead(key, seconds())
      const keyValue = await this._fetch(key, generation, grace)
      if (keyValue === null) return
      if (keyValue !== UNAVAILABLE) {
        index = key
        value = keyValue
      } else {
        const found = await this._independentFrom(index + 1, generation, 0)
        if (found === null) return
        ;[index, value] = found
        t = Math.max(t, this._head(index).pts)
      }
    }
    const seg = decodeSegment(value)
    await this._exclusive(async () => {
      if (generation !== this.generation) return
      const b = this._sb.buffered
      if (b.length) await this._remove(0, Math.max(b.end(b.length - 1), this._ms.duration || 0) + 1)
      if (!seg.end) await this._append(seg.data)
      if (this.joinBlock === null) this.joinBlock = index
      this.nextBlock = index + 1
      const target = Math.max(t, seg.pts) + this.delay
      const r = this._rangeAt(target) || (this._sb.buffered.length ? [this._sb.buffered.start(0), this._sb.buffered.end(0)] : null)
      if (r) this._setTime(Math.min(Math.max(target, r[0] + 0.001), Math.max(r[0], r[1] - 0.1)))
      this._setDuration()
    })
    const gone = (this.skipped - skippedBefore) * this.blockDuration
    this.status(gone > 0 ? `about ${gone.toFixed(1)} s of the stream before ${seg.pts.toFixed(1)} s are held by no peer; playing on from there` : '')
    if (this.video.paused) this.video.play().catch(() => {})
    this._kick()
  }

  _setDuration () {
    const ms = this._ms
    if (!ms || ms.readyState !== 'open' || this._sb.updating) return
    const edge = this.liveEdge()
    const b = this._sb.buffered
    const want = Math.max(edge === null ? 0 : edge + this.delay, b.length ? b.end(b.length - 1) : 0)
    if (want > 0 && (!isFinite(ms.duration) || want > ms.duration + 0.01)) ms.duration = want
  }

  async _pump () {
    let missing = null // [the block the pump waits for, since when]
    while (!this.closed) {
      const index = this.nextBlock
      if (index === null || this._ahead() >= AHEAD_S || index >= this.feed.length || this.ended) {
        if (index !== null && index >= this.feed.length - 1 && this._head(this.feed.length - 1)?.end && index >= this.feed.length) this._finish()
        await this._nap(500)
        continue
      }
      const generation = this.generation
      const value = this.feed.get(index)
      if (!value) {
        if (missing === null || missing[0] !== index) missing = [index, seconds()]
        // A hole no one holds: once what is buffered before it has played, go on from the first
        // block after it (seek finds the independent part to start from).
        const drained = seconds() - missing[1] > UNAVAILABLE_S && this._ahead() < 0.5
        const next = drained ? this._goesOnAt(index) : null
        if (next !== null) {
          const after = await this._fetch(next, generation, 0)
          if (after && after !== UNAVAILABLE && generation === this.generation) {
            this._skipFrom = this.skipped
            this.skipped += next - index
            await this.seek(this._head(next).pts, this.followLive)
          }
          continue
        }
        this.peers.replicator.want(index, index + 1, PRIORITY_HIGH, seconds())
        this.flush()
        await this._nap(250)
        continue
      }
      try {
        await this._exclusive(async () => {
          if (generation !== this.generation || this.nextBlock !== index) return
          const seg = decodeSegment(value)
          this._head(index)
          if (!seg.end) {
            await this._append(seg.data)
            this.appended++
          }
          this.nextBlock = index + 1
          const t = this.video.currentTime
          const b = this._sb.buffered
          if (b.length && t - b.start(0) > BEHIND_S + 5) await this._remove(0, t - BEHIND_S)
          this._setDuration()
        })
      } catch (e) {
        if (e.name !== 'QuotaExceededError') {
          this.status(`player error: ${e.message}`)
          return
        }
        await this._nap(500)
      }
    }
  }

  _finish () {
    if (this.ended) return
    this.ended = true
    this._exclusive(async () => { if (this._ms.readyState === 'open') this._ms.endOfStream() })
  }

  _watchdog () {
    if (!this._sb || this.nextBlock === null) return
    const v = this.video
    const t = v.currentTime
    // Step over small gaps that would stall playback.
    if (!v.seeking && !this._rangeAt(t)) {
      const b = this._sb.buffered
      for (let i = 0; i < b.length; i++) {
        if (b.start(i) > t && b.start(i) - t < 1.5) { this._setTime(b.start(i) + 0.001); break }
      }
    }
    const block = this.playingBlock()
    const now = seconds()
    if (block !== null && (block !== this._lastPlayhead || now - this._playheadAt > 1)) {
      this._lastPlayhead = block
      this._playheadAt = now
      this.peers.setPlayhead(block, now)
      this.flush()
    }
    const edge = this.liveEdge()
    const last = this._head(this.feed.length - 1)
    if (this.followLive && edge !== null && !(last && last.end)) {
      const behind = edge + this.delay - t
      if (behind > Math.max(3, 2 * this.segment + 0.5) && !v.seeking) this.goLive()
      else v.playbackRate = behind > this.segment + 0.4 ? 1.1 : 1.0
    } else {
      v.playbackRate = 1.0
    }
    if (v.paused && !v.seeking && this._ahead() > 0.5 && !this.ended) v.play().catch(() => {})
    this._kick()
  }

  /** Seconds behind the broadcaster's clock (null before playing), as /stats' live_delay_s. */
  liveDelay () {
    const block = this.playingBlock()
    const h = block === null ? null : this._head(block)
    if (!h) return null
    const t = this.video.currentTime - this.delay
    return Math.round((Date.now() / 1000 - h.wallClock + (h.pts + h.duration - t)) * 1000) / 1000
  }

  stats () {
    const b = this._sb ? this._sb.buffered : null
    const last = this._head(this.feed.length - 1)
    return {
      live_delay_s: this.liveDelay(),
      ended: Boolean(last && last.end),
      playhead: this.playingBlock(),
      current_time: this.video.currentTime,
      buffered_s: b && b.length ? Math.round((b.end(b.length - 1) - b.start(0)) * 1000) / 1000 : 0,
      first_frame_ms: this.firstFrameAt,
      join_block: this.joinBlock,
      blocks_skipped: this.skipped,
    }
  }
}
