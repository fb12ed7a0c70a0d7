// Loaded by tests/test_web_rtc.py in headless Chromium: a minimal RTCDataChannel glue around the
// tab's PeerSet (the real glue comes with the watch page), so the test can connect real aiortc
// peers to a real tab. window.tab: init(keyHex), answer(id, offerSdp) -> answerSdp, want(s, e),
// stats(), digests(), events.

import { blake2b } from '/web/blake2b.js'
import { fromHex, toHex } from '/web/encoding.js'
import { MemoryFeed } from '/web/feed.js'
import { HIGH_WATER, LOW_WATER, TICK_S } from '/web/link.js'
import { PeerSet } from '/web/peers.js'
import { PRIORITY_HIGH } from '/web/replicator.js'

const now = () => performance.now() / 1000
const channels = new Map() // peer id -> RTCDataChannel
const events = []
let peers = null

function flush (id) {
  const dc = channels.get(id)
  if (!dc || dc.readyState !== 'open') return
  for (const m of peers.outgoing(id, now(), HIGH_WATER - dc.bufferedAmount)) dc.send(m)
  if (peers.isClosed(id)) dc.close()
}

function flushAll () {
  for (const id of channels.keys()) flush(id)
}

function gathered (pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve()
  return new Promise((resolve) => {
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve()
    })
  })
}

window.tab = {
  events,
  init (keyHex) {
    peers = new PeerSet(new MemoryFeed(fromHex(keyHex)), { onEvent: (e) => events.push({ ...e }) })
    setInterval(() => { peers.tick(now()); flushAll() }, (TICK_S * 1000) / 5)
  },
  async answer (id, offerSdp) {
    const pc = new RTCPeerConnection({ iceServers: [] })
    pc.ondatachannel = ({ channel: dc }) => {
      dc.binaryType = 'arraybuffer'
      dc.bufferedAmountLowThreshold = LOW_WATER
      let chain = Promise.resolve()
      dc.onmessage = (ev) => {
        chain = chain.then(() => peers.receive(id, ev.data, now())).then(flushAll)
      }
      dc.onbufferedamountlow = () => flush(id)
      dc.onclose = () => { peers.closed(id, now()); channels.delete(id) }
      const open = () => {
        channels.set(id, dc)
        peers.open(id, { localSdp: pc.localDescription.sdp, remoteSdp: offerSdp, initiator: false, now: now() })
        flushAll()
      }
      if (dc.readyState === 'open') open()
      else dc.onopen = open
    }
    await pc.setRemoteDescription({ type: 'offer', sdp: offerSdp })
    await pc.setLocalDescription(await pc.createAnswer())
    await gathered(pc)
    return pc.localDescription.sdp
  },
  want (start, end) {
    peers.replicator.want(start, end, PRIORITY_HIGH, now())
    flushAll()
  },
  stats () {
    return peers.stats(now())
  },
  digests () {
    const out = []
    for (let i = 0; i < peers.feed.length; i++) {
      const v = peers.feed.get(i)
      out.push(v ? toHex(blake2b(v)) : null)
    }
    return out
  },
}
window.ready = true
