// The stream format inside a feed, as streamer/media/format.py writes it.
//
// One job: parse blocks. Block 0 is the stream header, every later block one segment:
//   block 0:  "SWCH" | u8 version | u32le json_len | JSON (utf-8) | fMP4 init (ftyp + moov)
//   block i:  "SWCS" | u8 version | u8 flags | u16le back | f64le pts | f64le duration
//             | f64le wall_clock | fMP4 fragment (moof + mdat)
// Version 1: one block per GOP (every media block is a join point, `back` is reserved).
// Version 2 (parts): one block per part of about header.part_duration seconds; FLAG_INDEPENDENT
// marks a part that starts with a keyframe, and a dependent part's `back` counts the blocks back
// to the independent part it decodes from. Both read; segments report `independent` and `back`
// either way. A block that does not fully parse throws StreamFormatError.

export const FORMAT_NAME = 'swarmcast'
export const FORMAT_V1 = 1
export const FORMAT_V2 = 2
export const FORMAT_VERSION = FORMAT_V1 // kept for callers of the first version of this module
export const READ_VERSIONS = [FORMAT_V1, FORMAT_V2]
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
 * height, fps, segment_duration, video_codec, audio_codec, sample_rate, channels, extra, ...)
 * plus `init`, the fMP4 init segment (a view into the block).
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
  const header = { extra: {}, ...meta, init, version, part_duration: null, parts_per_segment: null }
  if (version === FORMAT_V2) {
    const part = meta.part_duration
    if (part !== undefined && part !== null) {
      if (typeof part !== 'number' || !(part > 0 && part <= meta.segment_duration)) {
        throw new StreamFormatError("stream header's part_duration is not within its segment")
      }
      header.part_duration = part
      header.parts_per_segment = meta.parts_per_segment || Math.max(1, Math.round(meta.segment_duration / part + 0.4999))
    }
  }
  // Nominal seconds of media per block: a part (v2) or a whole segment (v1).
  header.block_duration = header.part_duration || meta.segment_duration
  return header
}

/** Block i >= 1: {pts, duration, wallClock, flags, discontinuity, end, independent, back,
 *  version, data (moof + mdat)}. */
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
  const flags = block[5] // as written (v1 media blocks are independent without the flag)
  let back = v.getUint16(6, true)
  let independent = Boolean(flags & FLAG_INDEPENDENT)
  if (version === FORMAT_V1) {
    back = 0 // reserved in v1; every v1 media block is a whole GOP
    independent = !(flags & FLAG_END)
  } else if (back && (flags & (FLAG_INDEPENDENT | FLAG_END))) {
    throw new StreamFormatError('an independent or end block cannot depend on an earlier one')
  }
  return {
    version,
    back,
    independent,
    pts: v.getFloat64(8, true),
    duration: v.getFloat64(16, true),
    wallClock: v.getFloat64(24, true),
    flags,
    discontinuity: Boolean(flags & FLAG_DISCONTINUITY),
    end: Boolean(flags & FLAG_END),
    data: new Uint8Array(0),
  }
}
