// The stream format inside a feed, as streamer/media/format.py writes it.
//
// One job: parse blocks. Block 0 is the stream header, every later block one segment (v1) or
// part (v2):
//   block 0:  "SWCH" | u8 version | u32le json_len | JSON (utf-8) | fMP4 init (ftyp + moov)
//   block i:  "SWCS" | u8 version | u8 flags | u16le back | f64le pts | f64le duration
//             | f64le wall_clock | fMP4 fragment (moof + mdat)
// Version 2: a block is a part of about part_duration seconds; FLAG_INDEPENDENT marks one that
// starts with a keyframe (a join and seek point) and `back` counts the blocks back to the
// independent part a dependent one decodes from. Version 1 (one block per GOP, `back` reserved)
// still parses: every v1 media block is independent and is reported with FLAG_INDEPENDENT set.
// A block that does not fully parse throws StreamFormatError; nothing half-parsed is returned.

export const FORMAT_NAME = 'swarmcast'
export const FORMAT_VERSION = 2 // what a new stream is written in
export const FORMAT_V1 = 1 // one block per GOP: still read
export const READ_VERSIONS = [FORMAT_V1, FORMAT_VERSION]
export const FLAG_DISCONTINUITY = 1 // first segment after a broadcaster restart
export const FLAG_END = 2 // the stream ended cleanly here; this block carries no media
export const FLAG_INDEPENDENT = 4 // v2: the part starts with a keyframe (implied in v1)
export const SEGMENT_HEADER_SIZE = 32
const HEADER_PREFIX_SIZE = 9
const REQUIRED = ['title', 'start_time', 'mime', 'width', 'height', 'fps', 'segment_duration']

export class StreamFormatError extends Error {
  constructor (message) {
    super(message)
    this.name = 'StreamFormatError'
  }
}

function magic (block, text) {
  for (let i = 0; i < 4; i++) if (block[i] !== text.charCodeAt(i)) return false
  return true
}

function view (block) {
  return new DataView(block.buffer, block.byteOffset, block.byteLength)
}

/**
 * Block 0: the stream's metadata (the JSON keys as written: title, start_time, mime, width,
 * height, fps, segment_duration, video_codec, audio_codec, sample_rate, channels, extra, and in
 * v2 part_duration and parts_per_segment, null in v1) plus `version` and `init`, the fMP4 init
 * segment (a view into the block).
 */
export function decodeHeader (block) {
  if (block.length < HEADER_PREFIX_SIZE) {
    throw new StreamFormatError('block 0 is too short to be a swarmcast stream header')
  }
  if (!magic(block, 'SWCH')) {
    throw new StreamFormatError('block 0 is not a swarmcast stream header (is this a stream feed?)')
  }
  const version = block[4]
  if (!READ_VERSIONS.includes(version)) {
    throw new StreamFormatError(`stream format version ${version} is not supported; upgrade swarmcast`)
  }
  const size = view(block).getUint32(5, true)
  if (HEADER_PREFIX_SIZE + size > block.length) throw new StreamFormatError('stream header is truncated')
  let meta
  try {
    meta = JSON.parse(new TextDecoder('utf-8', { fatal: true })
      .decode(block.subarray(HEADER_PREFIX_SIZE, HEADER_PREFIX_SIZE + size)))
  } catch (e) {
    throw new StreamFormatError(`stream header metadata is malformed: ${e.message}`)
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) {
    throw new StreamFormatError('stream header metadata is malformed: not an object')
  }
  for (const key of REQUIRED) {
    if (!(key in meta)) throw new StreamFormatError(`stream header metadata is malformed: no ${key}`)
  }
  const init = block.subarray(HEADER_PREFIX_SIZE + size)
  if (!init.length) throw new StreamFormatError('stream header carries no init segment')
  let part = null
  let parts = null
  if (version !== FORMAT_V1) {
    part = meta.part_duration ?? null
    parts = meta.parts_per_segment ?? null
    if (part !== null && !(typeof part === 'number' && part > 0 && part <= meta.segment_duration)) {
      throw new StreamFormatError("stream header's part_duration is not within its segment")
    }
  }
  return { extra: {}, ...meta, part_duration: part, parts_per_segment: parts, version, init }
}

/**
 * Block i >= 1: {pts, duration, wallClock, flags, discontinuity, end, independent, back, version,
 * data (moof + mdat)}.
 */
export function decodeSegment (block) {
  const seg = decodeSegmentHeader(block)
  seg.data = block.subarray(SEGMENT_HEADER_SIZE)
  return seg
}

/** Only the fixed 32-byte header (data left empty): cheap timing lookups for seeking. */
export function decodeSegmentHeader (block) {
  if (block.length < SEGMENT_HEADER_SIZE) {
    throw new StreamFormatError('block is too short to be a swarmcast segment')
  }
  const version = block[4]
  if (!magic(block, 'SWCS') || !READ_VERSIONS.includes(version)) {
    throw new StreamFormatError('block is not a swarmcast segment')
  }
  const v = view(block)
  let flags = block[5]
  let back = v.getUint16(6, true)
  if (version === FORMAT_V1) {
    back = 0 // reserved in v1; every v1 media block is a whole GOP
    if (!(flags & FLAG_END)) flags |= FLAG_INDEPENDENT
  } else if (back && (flags & (FLAG_INDEPENDENT | FLAG_END))) {
    throw new StreamFormatError('an independent or end block cannot depend on an earlier one')
  }
  return {
    pts: v.getFloat64(8, true),
    duration: v.getFloat64(16, true),
    wallClock: v.getFloat64(24, true),
    flags,
    discontinuity: Boolean(flags & FLAG_DISCONTINUITY),
    end: Boolean(flags & FLAG_END),
    independent: Boolean(flags & FLAG_INDEPENDENT),
    back,
    version,
    data: new Uint8Array(0),
  }
}
