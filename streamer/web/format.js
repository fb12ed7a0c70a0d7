// The stream format inside a feed, as streamer/media/format.py writes it.
//
// One job: parse blocks. Block 0 is the stream header, every later block one segment:
//   block 0:  "SWCH" | u8 version | u32le json_len | JSON (utf-8) | fMP4 init (ftyp + moov)
//   block i:  "SWCS" | u8 version | u8 flags | u16le reserved | f64le pts | f64le duration
//             | f64le wall_clock | fMP4 fragment (moof + mdat)
// A block that does not fully parse throws StreamFormatError; nothing half-parsed is returned.

export const FORMAT_NAME = 'swarmcast'
export const FORMAT_VERSION = 1
export const FLAG_DISCONTINUITY = 1 // first segment after a broadcaster restart
export const FLAG_END = 2 // the stream ended cleanly here; this block carries no media
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
  if (version !== FORMAT_VERSION) {
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
  return { extra: {}, ...meta, init }
}

/** Block i >= 1: {pts, duration, wallClock, flags, discontinuity, end, data (moof + mdat)}. */
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
  if (!magic(block, 'SWCS') || block[4] !== FORMAT_VERSION) {
    throw new StreamFormatError('block is not a swarmcast segment')
  }
  const v = view(block)
  const flags = block[5]
  return {
    pts: v.getFloat64(8, true),
    duration: v.getFloat64(16, true),
    wallClock: v.getFloat64(24, true),
    flags,
    discontinuity: Boolean(flags & FLAG_DISCONTINUITY),
    end: Boolean(flags & FLAG_END),
    data: new Uint8Array(0),
  }
}
