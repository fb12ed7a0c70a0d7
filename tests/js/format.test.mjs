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
  assert.deepEqual([s.pts, s.duration, s.wallClock, s.flags, s.discontinuity, s.end],
    [12.5, 1.0, 1700000000.25, 1, true, false])
  assert.deepEqual([...s.data], [9, 9])
  const end = format.decodeSegmentHeader(segment(13.5, 0, 1700000001, 2, new Uint8Array(0)))
  assert.equal(end.end, true)
  assert.throws(() => format.decodeSegment(new Uint8Array(31)), format.StreamFormatError)
  assert.throws(() => format.decodeSegment(header(META)), format.StreamFormatError)
})

test('version 2 (parts): part duration in the header; independent parts and back references', () => {
  const h = format.decodeHeader(header({ ...META, version: 2, part_duration: 0.2, parts_per_segment: 5 }, undefined, 2))
  assert.deepEqual([h.version, h.part_duration, h.parts_per_segment, h.block_duration], [2, 0.2, 5, 0.2])
  const v1 = format.decodeHeader(header(META))
  assert.deepEqual([v1.version, v1.part_duration, v1.block_duration], [1, null, 1])
  assert.throws(() => format.decodeHeader(header({ ...META, part_duration: 2 }, undefined, 2)), format.StreamFormatError)
  const key = format.decodeSegmentHeader(segment(4, 0.2, 1, format.FLAG_INDEPENDENT, new Uint8Array(0), 2))
  assert.deepEqual([key.independent, key.back], [true, 0])
  const dep = format.decodeSegmentHeader(segment(4.2, 0.2, 1, 0, new Uint8Array(0), 2, 1))
  assert.deepEqual([dep.independent, dep.back], [false, 1])
  assert.throws(() => format.decodeSegmentHeader(segment(4, 0.2, 1, format.FLAG_INDEPENDENT, new Uint8Array(0), 2, 1)), format.StreamFormatError)
  // v1: every media block is independent, `back` is reserved and ignored; end blocks are not.
  const old = format.decodeSegmentHeader(segment(4, 1, 1, 0, new Uint8Array(0), 1, 7))
  assert.deepEqual([old.independent, old.back], [true, 0])
  assert.equal(format.decodeSegmentHeader(segment(5, 0, 1, format.FLAG_END, new Uint8Array(0))).independent, false)
})
