// The tab's player (player.js) against a fake MediaSource, video element and swarm: how it starts
// (the feed grows while the newest block is fetched) and how it steps over blocks that no one
// holds (the start of an ended stream, a hole in the middle) but never over a block that a
// neighbour holds and is only slow to send. Real timers: each case runs a few seconds.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { concat } from '../../streamer/web/encoding.js'
import { TabPlayer, UNAVAILABLE_S } from '../../streamer/web/player.js'
import { RangeSet } from '../../streamer/web/ranges.js'

const te = new TextEncoder()
const PART = 0.5 // seconds per block; two parts per 1 s segment: odd blocks are independent
const SPEED = 4 // the fake video plays this many media seconds per second

function headerBlock () {
  const meta = {
    title: 'fake', start_time: 0, mime: 'video/mp4; codecs="avc1.64001f"', width: 320, height: 180,
    fps: 30, segment_duration: 1, video_codec: 'h264', audio_codec: null, sample_rate: null,
    channels: null, extra: {}, format: 'swarmcast', version: 2, part_duration: PART, parts_per_segment: 2,
  }
  const json = te.encode(JSON.stringify(meta))
  const prefix = new Uint8Array(9)
  prefix.set(te.encode('SWCH'))
  prefix[4] = 2
  new DataView(prefix.buffer).setUint32(5, json.length, true)
  return concat([prefix, json, new Uint8Array([1])]) // a 1-byte init segment
}

/** Block i >= 1 of the fake stream: its media is 16 bytes, [pts, duration] as float64. */
function partBlock (i, end = false) {
  const b = new Uint8Array(48)
  b.set(te.encode('SWCS'))
  b[4] = 2
  const pts = (i - 1) * PART
  const independent = (i - 1) % 2 === 0
  b[5] = end ? 2 : independent ? 4 : 0
  const v = new DataView(b.buffer)
  v.setUint16(6, end || independent ? 0 : 1, true)
  v.setFloat64(8, pts, true)
  v.setFloat64(16, end ? 0 : PART, true)
  v.setFloat64(24, 1e9 + pts, true)
  v.setFloat64(32, pts, true)
  v.setFloat64(40, PART, true)
  return b
}

class FakeTimeRanges {
  constructor (ranges) { this.r = ranges }
  get length () { return this.r.length }
  start (i) { return this.r[i][0] }
  end (i) { return this.r[i][1] }
}

class FakeSourceBuffer extends EventTarget {
  constructor () {
    super()
    this.ranges = []
    this.updating = false
    this.mode = 'segments'
  }

  get buffered () { return new FakeTimeRanges(this.ranges.map((r) => [...r])) }

  _done () {
    this.updating = true
    setTimeout(() => { this.updating = false; this.dispatchEvent(new Event('updateend')) }, 1)
  }

  appendBuffer (data) {
    if (data.length === 16) {
      const v = new DataView(data.buffer, data.byteOffset, 16)
      const start = v.getFloat64(0, true)
      const end = start + v.getFloat64(8, true)
      this.ranges.push([start, end])
      this.ranges.sort((a, b) => a[0] - b[0])
      const merged = []
      for (const r of this.ranges) {
        const last = merged[merged.length - 1]
        if (last && r[0] <= last[1] + 1e-6) last[1] = Math.max(last[1], r[1])
        else merged.push(r)
      }
      this.ranges = merged
    }
    this._done()
  }

  remove (start, end) {
    const out = []
    for (const [s, e] of this.ranges) {
      if (e <= start || s >= end) out.push([s, e])
      else {
        if (s < start) out.push([s, start])
        if (e > end) out.push([end, e])
      }
    }
    this.ranges = out
    this._done()
  }
}

class FakeMediaSource extends EventTarget {
  static isTypeSupported () { return true }
  constructor () {
    super()
    this.readyState = 'open'
    this.duration = NaN
    setTimeout(() => this.dispatchEvent(new Event('sourceopen')), 1)
  }

  addSourceBuffer () { return (this.sb = new FakeSourceBuffer()) }
  endOfStream () { this.readyState = 'ended' }
}

/** Plays SPEED media seconds per second while what is under currentTime is buffered. */
class FakeVideo extends EventTarget {
  constructor () {
    super()
    this._t = 0
    this.paused = true
    this.seeking = false
    this.playbackRate = 1
    this.muted = true
    this.src = ''
    this.sb = null
    this._timer = setInterval(() => this._play(0.05 * SPEED * this.playbackRate), 50)
  }

  get currentTime () { return this._t }
  set currentTime (t) {
    this._t = t
    setTimeout(() => this.dispatchEvent(new Event('seeking')), 0)
  }

  _play (dt) {
    if (this.paused || !this.sb) return
    for (const [s, e] of this.sb.ranges) {
      if (this._t >= s - 1e-6 && this._t < e) {
        this._t = Math.min(e, this._t + dt)
        return
      }
    }
  }

  play () { this.paused = false; return Promise.resolve() }
  requestVideoFrameCallback (cb) { setTimeout(cb, 10) }
  close () { clearInterval(this._timer) }
}

/**
 * The swarm as the player sees it: the signed length, the blocks the tab holds, what its
 * neighbours announced (`holders`), and a fetch of each wanted block the neighbours hold after
 * `delay(i)` ms.
 */
function fakeSwarm ({ length, holders, delay = () => 20, ended = false }) {
  const listeners = []
  const feed = {
    length,
    blocks: new Map(),
    present: new RangeSet(Infinity),
    get (i) { return this.blocks.get(i) },
    has (i) { return this.blocks.has(i) },
    onChange (fn) { listeners.push(fn) },
  }
  const changed = (start, end) => { for (const fn of listeners) fn({ start, end }) }
  const pending = new Set()
  const swarm = {
    feed,
    ended, // whether the last block is the end marker
    wants: [],
    changed,
    grow (n) { feed.length = n; changed(n, n) },
    deliver (i) {
      if (feed.blocks.has(i) || i >= feed.length) return
      const value = i === 0 ? headerBlock() : partBlock(i, swarm.ended && i === feed.length - 1)
      feed.blocks.set(i, value)
      feed.present.add(i, i + 1)
      changed(i, i + 1)
    },
  }
  const replicator = {
    config: { blockDuration: 1 },
    want (start) {
      swarm.wants.push(start)
      if (!holders.has(start) || pending.has(start)) return
      pending.add(start)
      setTimeout(() => { pending.delete(start); swarm.deliver(start) }, delay(start))
    },
    heldFrom (i) {
      const at = holders.firstFrom(i)
      return at !== null && at < feed.length ? at : null
    },
  }
  swarm.peers = { feed, replicator, setPlayhead () {} }
  swarm.deliver(0) // the stream header: every tab gets it first
  return swarm
}

async function withPlayer (swarm, check, { at = null } = {}) {
  globalThis.MediaSource = FakeMediaSource
  URL.createObjectURL = () => 'blob:fake'
  const video = new FakeVideo()
  const player = new TabPlayer(video, swarm.peers, { at })
  const ms = () => player._ms
  const errors = []
  const started = player.start().catch((e) => errors.push(e))
  const wake = setInterval(() => { if (ms() && ms().sb) video.sb = ms().sb }, 10)
  try {
    await check(player, video, errors)
  } finally {
    player.close()
    clearInterval(wake)
    video.close()
    await started
  }
}

async function until (what, fn, seconds = 15) {
  const deadline = performance.now() + seconds * 1000
  while (!fn()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

function ranges (...runs) {
  const r = new RangeSet(Infinity)
  for (const [s, e] of runs) r.add(s, e)
  return r
}

test('start: the feed grows while the newest block is fetched, and the tab joins the live edge', async () => {
  const swarm = fakeSwarm({ length: 20, holders: ranges([0, 1000]), delay: (i) => (i === 19 ? 400 : 20) })
  // The newest block (19) takes 400 ms; meanwhile the signed length grows and blocks 20.. are
  // not held yet: "has the stream ended?" is asked of block 19, not of a block not yet held.
  setTimeout(() => swarm.grow(26), 200)
  await withPlayer(swarm, async (player, video, errors) => {
    await until('the join', () => player.joinBlock !== null || errors.length)
    assert.deepEqual(errors, [])
    assert.equal((player.joinBlock - 1) % 2, 0) // an independent part
    assert.ok(player.joinBlock >= 15, player.joinBlock) // near the live edge, not the start
    await until('playback', () => video.currentTime > (player.joinBlock - 1) * PART)
    assert.equal(player.skipped, 0)
  })
})

test('an ended stream whose start no one holds starts at the first independent part held', async () => {
  // Blocks 1-15 are held by no one; 16 is a dependent part whose keyframe part (15) is gone.
  const swarm = fakeSwarm({ length: 42, holders: ranges([0, 1], [16, 42]), ended: true })
  await withPlayer(swarm, async (player, video, errors) => {
    await until('the join', () => player.joinBlock !== null || errors.length)
    assert.deepEqual(errors, [])
    // Block 1 was asked for until the wait showed what the neighbours hold; the gone keyframe
    // part (15) was then known gone, and not waited for.
    assert.ok(swarm.wants.filter((i) => i === 1).length > 1)
    assert.equal(swarm.wants.filter((i) => i === 15).length, 0)
    assert.equal(player.joinBlock, 17)
    assert.equal(player.skipped, 15) // 1-15; 16 was held, but it decodes from 15
    assert.ok(video.currentTime >= 16 * PART)
  })
})

test('a hole in the middle is stepped over once what is buffered before it has played', async () => {
  const swarm = fakeSwarm({ length: 42, holders: ranges([0, 11], [20, 42]), ended: true })
  await withPlayer(swarm, async (player, video, errors) => {
    await until('the join', () => player.joinBlock !== null || errors.length)
    assert.equal(player.joinBlock, 1)
    // Blocks 1-10 are 5 s of media: 1.25 s of playback here. The pump waits UNAVAILABLE_S at
    // the hole, then goes on from block 21 (20 is dependent on 19, which no one holds).
    await until('the other side of the hole', () => video.currentTime > 20 * PART, 20)
    assert.deepEqual(errors, [])
    assert.ok(swarm.wants.includes(11)) // asked for before it was stepped over
    assert.equal(player.skipped, 9) // 11-19; 20 was held, but it decodes from 19
    assert.ok(!swarm.feed.has(11) && swarm.feed.has(21))
    await until('the end', () => player.ended, 20)
  })
})

test('a block that a neighbour holds is never stepped over, however slow', async () => {
  const slow = (UNAVAILABLE_S + 1) * 1000
  const swarm = fakeSwarm({ length: 22, holders: ranges([0, 22]), delay: (i) => (i === 5 ? slow : 20), ended: true })
  await withPlayer(swarm, async (player, video, errors) => {
    await until('the join', () => player.joinBlock !== null || errors.length)
    await until('block 5', () => swarm.feed.has(5), 10)
    await until('the end', () => player.ended, 20)
    assert.deepEqual(errors, [])
    assert.equal(player.skipped, 0)
  })
})
