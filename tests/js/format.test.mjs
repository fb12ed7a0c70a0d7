// Stream header and segment parsing, with hand-built blocks in the documented layout.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { concat } from '../../streamer/web/encoding.js'
import * as format from '../../streamer/web/format.js'

const te = new TextEncoder()

function header (meta, init = new Uint8Array([1, 2, 3]), version = 1) {
  const json = te.encode(JSON.stringify(meta))
  const prefix = new Uint8Array(9)
  prefix.set(te.encode('SWCH'))
  prefix[4] = version
  new DataView(prefix.buffer).setUint32(5, json.length, true)
  return concat([prefix, json, init])
}

function segment (pts, duration, wall, flags, data, version = 1, back = 0) {
  const b = new Uint8Array(32)
  b.set(te.encode('SWCS'))
  b[4] = version
  b[5] = flags
  const v = new DataView(b.buffer)
  v.setUint16(6, back, true)
  v.setFloat64(8, pts, true)
  v.setFloat64(16, duration, true)
  v.setFloat64(24, wall, true)
  return concat([b, data])
}

const META = {
  title: 't', start_time: 1.5, mime: 'video/mp4; codecs="avc1.64001f,mp4a.40.2"', width: 640,
  height: 360, fps: 30, segment_duration: 1, video_codec: 'h264', audio_codec: 'aac',
  sample_rate: 48000, channels: 2, extra: { media_delay: 1024 / 48000 }, format: 'swarmcast', version: 1,
}

test('stream header: metadata and init segment', () => {
  const h = format.decodeHeader(header(META))
  assert.equal(h.mime, META.mime)
  assert.equal(h.width, 640)
  assert.deepEqual(h.extra, META.extra)
  assert.deepEqual([...h.init], [1, 2, 3])
})

test('stream header: every malformation is a StreamFormatError', () => {
  const good = header(META)
  const bad = [
    good.subarray(0, 5),
    concat([te.encode('SWCX'), good.subarray(4)]),
    (() => { const b = good.slice(); b[4] = 3; return b })(),
    good.subarray(0, 20),
    header(META, new Uint8Array(0)),
    header({ ...META, mime: undefined }),
    (() => { const b = good.slice(); b[9] = 0x7b + 1; return b })(),
    header([1, 2]),
  ]
  for (const b of bad) assert.throws(() => format.decodeHeader(b), format.StreamFormatError)
})

test('segments: timing, flags and fragment', () => {
  const s = format.decodeSegment(segment(12.5, 1.0, 1700000000.25, 1, new Uint8Array([9, 9])))
  // v1: every media block is a whole GOP, reported independent
  assert.deepEqual([s.pts, s.duration, s.wallClock, s.flags, s.discontinuity, s.end],
    [12.5, 1.0, 1700000000.25, 1 | format.FLAG_INDEPENDENT, true, false])
  assert.deepEqual([s.independent, s.back, s.version], [true, 0, 1])
  assert.deepEqual([...s.data], [9, 9])
  const end = format.decodeSegmentHeader(segment(13.5, 0, 1700000001, 2, new Uint8Array(0)))
  assert.equal(end.end, true)
  assert.throws(() => format.decodeSegment(new Uint8Array(31)), format.StreamFormatError)
  assert.throws(() => format.decodeSegment(header(META)), format.StreamFormatError)
})

test('v1 stream header: no parts', () => {
  const h = format.decodeHeader(header({ ...META, part_duration: 0.2, parts_per_segment: 5 }))
  assert.deepEqual([h.version, h.part_duration, h.parts_per_segment], [1, null, null])
})

test('v2 stream header: part duration and parts per segment', () => {
  const meta = { ...META, version: 2, part_duration: 0.2, parts_per_segment: 5 }
  const h = format.decodeHeader(header(meta, undefined, 2))
  assert.deepEqual([h.version, h.part_duration, h.parts_per_segment], [2, 0.2, 5])
  assert.deepEqual([...h.init], [1, 2, 3])
  const tooLong = header({ ...meta, part_duration: 1.5 }, undefined, 2)
  assert.throws(() => format.decodeHeader(tooLong), format.StreamFormatError)
})

test('v2 parts: the independent flag and back', () => {
  const first = format.decodeSegment(
    segment(3, 0.2, 1700000000, format.FLAG_INDEPENDENT | format.FLAG_DISCONTINUITY, new Uint8Array([7]), 2))
  assert.deepEqual([first.independent, first.back, first.discontinuity, first.end, first.version],
    [true, 0, true, false, 2])
  const third = format.decodeSegmentHeader(segment(3.4, 0.2, 1700000000.4, 0, new Uint8Array([8]), 2, 2))
  assert.deepEqual([third.independent, third.back, third.flags, third.pts], [false, 2, 0, 3.4])
  const end = format.decodeSegmentHeader(segment(3.6, 0, 1700000001, format.FLAG_END, new Uint8Array(0), 2))
  assert.deepEqual([end.end, end.independent, end.back], [true, false, 0])
  // An independent or end block cannot point back to another one.
  for (const flags of [format.FLAG_INDEPENDENT, format.FLAG_END]) {
    const bad = segment(4, 0.2, 1700000002, flags, new Uint8Array(0), 2, 1)
    assert.throws(() => format.decodeSegmentHeader(bad), format.StreamFormatError)
  }
  assert.throws(() => format.decodeSegment(segment(4, 0.2, 0, 0, new Uint8Array(0), 3)),
    format.StreamFormatError)
})
