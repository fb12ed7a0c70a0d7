// RangeSet: disjoint half-open runs of block indexes, bounded, as streamer/core/replication.py's.
//
// One job: remember which blocks a peer (or we) hold, in at most `limit` runs; runs beyond the
// limit are forgotten (we then merely do not know those blocks are held).

export const MAX_RANGES = 1024

function bisectLeft (a, x) {
  let lo = 0
  let hi = a.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (a[mid] < x) lo = mid + 1
    else hi = mid
  }
  return lo
}

function bisectRight (a, x) {
  let lo = 0
  let hi = a.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (x < a[mid]) hi = mid
    else lo = mid + 1
  }
  return lo
}

export class RangeSet {
  constructor (limit = MAX_RANGES) {
    this.starts = []
    this.ends = []
    this.limit = limit
  }

  has (index) {
    const starts = this.starts
    const n = starts.length
    if (n && index >= starts[n - 1]) return index < this.ends[n - 1] // the live edge: the usual case
    const i = bisectRight(starts, index) - 1
    return i >= 0 && index < this.ends[i]
  }

  /** The first held index at or after `index`, or null. */
  firstFrom (index) {
    const i = bisectRight(this.ends, index) // the first run that ends after index
    if (i >= this.starts.length) return null
    return Math.max(index, this.starts[i])
  }

  get size () {
    return this.starts.length
  }

  runs () {
    return this.starts.map((s, i) => [s, this.ends[i]])
  }

  /** Blocks held in total. */
  count () {
    let n = 0
    for (let i = 0; i < this.starts.length; i++) n += this.ends[i] - this.starts[i]
    return n
  }

  add (start, end) {
    if (start >= end) return
    const starts = this.starts
    const ends = this.ends
    const lo = bisectLeft(ends, start) // first run that ends at or after start
    const hi = bisectRight(starts, end) // runs before hi start at or before end
    if (lo < hi) {
      start = Math.min(start, starts[lo])
      end = Math.max(end, ends[hi - 1])
    } else if (starts.length >= this.limit) {
      return
    }
    starts.splice(lo, hi - lo, start)
    ends.splice(lo, hi - lo, end)
  }

  remove (start, end) {
    if (start >= end) return
    const starts = this.starts
    const ends = this.ends
    const lo = bisectRight(ends, start)
    const hi = bisectLeft(starts, end)
    if (lo >= hi) return
    const keepS = []
    const keepE = []
    if (starts[lo] < start) { keepS.push(starts[lo]); keepE.push(start) }
    if (ends[hi - 1] > end) { keepS.push(end); keepE.push(ends[hi - 1]) }
    starts.splice(lo, hi - lo, ...keepS)
    ends.splice(lo, hi - lo, ...keepE)
    if (starts.length > this.limit) {
      starts.length = this.limit
      ends.length = this.limit
    }
  }
}
