// The stats shape of streamer/core/stats.py, for the tab: byte rates sampled on a one-second tick
// of the time passed in, and the JSON keys of /stats (ReplicationStats and NodeStats as_json).
//
// One job: numbers in, the same JSON as a Python node's out, so the page's stats panel and
// window.swarmcast.stats() read like /stats.

export const RATE_WINDOW_S = 3.0 // up/down rates are averaged over about this much recent time
export const RATE_TICK_S = 1.0 // rates are sampled at most this often, whoever reads them

/** Byte rates over the last RATE_WINDOW_S, from samples taken at most once per RATE_TICK_S. */
export class RateMeter {
  constructor () {
    this._samples = []
    this._next = -Infinity
  }

  due (now) {
    return now >= this._next
  }

  sample (now, up, down) {
    const s = this._samples
    s.push([now, up, down])
    while (s.length > 2 && now - s[1][0] >= RATE_WINDOW_S) s.shift()
    this._next = now + RATE_TICK_S
  }

  /** [up, down] in bytes/s; 0 until two samples exist. */
  get rates () {
    const s = this._samples
    if (s.length < 2) return [0, 0]
    const [t0, up0, down0] = s[0]
    const [t1, up1, down1] = s[s.length - 1]
    const span = t1 - t0
    if (span <= 0) return [0, 0]
    const round1 = (x) => Math.round(x * 10) / 10
    return [round1((up1 - up0) / span), round1((down1 - down0) / span)]
  }
}

/** share_from_peers: the share of downloaded block bytes that came from viewers, not the writer. */
export function shareFromPeers (fromWriter, fromPeers) {
  const down = fromWriter + fromPeers
  return down ? Math.round((fromPeers / down) * 10000) / 10000 : 0
}
