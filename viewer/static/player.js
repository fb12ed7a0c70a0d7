// The swarmcast player: feeds a MediaSource with the init segment and blocks (parts) from the
// local player server, joins at an independent part near the live edge and appends parts as they
// come, holding a small adaptive live offset (it grows after a stall and shrinks while playback is
// smooth; a late viewer catches up by playing faster or jumping to the edge), seeks anywhere in
// the stream, and shows live stats. It never touches the network beyond its own server.
"use strict";

(() => {
  const AHEAD_S = 4; // how much media to hold ahead of the playhead
  const BEHIND_S = 30; // how much played media to keep before evicting it
  const HOLD_MAX_S = 4; // the live offset never grows beyond this
  const CALM_S = 15; // this long without a stall lets the live offset shrink a little

  const $ = (id) => document.getElementById(id);
  const video = $("video");
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  const state = {
    ready: false, // the first positioning (live edge, ?at= or the start) is done
    info: null,
    rows: [], // rows[k] describes block k + 1: {index, pts, duration, flags, known, independent, back}
    length: 0,
    ended: false,
    skipped: 0, // holes no peer held that playback stepped over
    liveEdge: 0,
    followLive: true,
    nextBlock: null, // next block index the pump appends
    generation: 0, // bumped by every seek, so fetches started before it are dropped
    fetchAbort: null,
    expectSeek: null, // a currentTime we set ourselves (its seeking event is not the user's)
    endOfStream: false,
    quotaErrors: 0, // QuotaExceededErrors met (and answered by evicting)
    stats: {},
    wake: null,
    hold: null, // seconds of media kept buffered ahead of the playhead at the live edge
    stalls: 0, // times playback ran dry while following live
    lastStall: 0, // performance.now() of the last stall
  };

  // Blocks (parts) arrive whole, so a live viewer's buffer is a sawtooth whose low point is what
  // is left when the next part lands; the offsets follow the part duration P (a whole segment in
  // a v1 stream).
  const part = () => (state.info && (state.info.part_duration || state.info.segment_duration)) || 1;
  // 1.5 parts ahead (0.3 s for 0.2 s parts); a part and 0.2 s for long ones (1.2 s for 1 s).
  const minHold = () => Math.max(0.25, Math.min(1.5 * part(), part() + 0.2));
  const hold = () => (state.hold === null ? minHold() : state.hold);
  const catchUpS = () => Math.max(2.5, hold() + 2 * part() + 1.5); // behind by more: jump

  let mediaSource = null;
  let sb = null;
  let chain = Promise.resolve();

  // Runs SourceBuffer work one piece at a time: appends, removals and seeks never overlap.
  function exclusive(fn) {
    const run = chain.then(fn);
    chain = run.catch(() => {});
    return run;
  }

  function kick() {
    if (state.wake) state.wake();
  }

  function napUntilKicked(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        state.wake = null;
        resolve();
      }
      state.wake = done;
    });
  }

  function updateEnd() {
    return new Promise((resolve, reject) => {
      const ok = () => { sb.removeEventListener("error", bad); resolve(); };
      const bad = () => { sb.removeEventListener("updateend", ok); reject(new Error("SourceBuffer error")); };
      sb.addEventListener("updateend", ok, { once: true });
      sb.addEventListener("error", bad, { once: true });
    });
  }

  async function removeRange(start, end) {
    if (end - start < 0.05) return;
    sb.remove(Math.max(0, start), end);
    await updateEnd();
  }

  function bufferedEnd() {
    const b = sb.buffered;
    return b.length ? b.end(b.length - 1) : 0;
  }

  // Frees room after a QuotaExceededError: everything not near the playhead goes.
  async function evict(aggressive) {
    const t = video.currentTime;
    const keepBehind = aggressive ? 1 : 10;
    await removeRange(0, t - keepBehind);
    if (aggressive) await removeRange(t + AHEAD_S + 1, bufferedEnd() + 1);
  }

  async function appendBytes(data) {
    for (let attempt = 0; ; attempt++) {
      try {
        sb.appendBuffer(data);
        await updateEnd();
        return;
      } catch (err) {
        if (err.name !== "QuotaExceededError" || attempt >= 3) throw err;
        state.quotaErrors++;
        await evict(attempt > 0);
      }
    }
  }

  async function trimPlayed() {
    const b = sb.buffered;
    if (b.length && video.currentTime - b.start(0) > BEHIND_S + 5) {
      await removeRange(0, video.currentTime - BEHIND_S);
    }
  }

  function setDuration() {
    // Native controls can only seek within duration; it follows the live edge.
    if (!mediaSource || mediaSource.readyState !== "open" || sb.updating) return;
    const want = Math.max(state.liveEdge, bufferedEnd());
    const now = mediaSource.duration;
    // Chromium starts a fragmented stream at an infinite duration, and then only what is
    // buffered is seekable; a finite duration at the edge makes the whole stream seekable.
    if (want > 0 && (!isFinite(now) || want > now + 0.01)) {
      mediaSource.duration = want;
    }
  }

  function bufferedRangeAt(t) {
    const b = sb.buffered;
    for (let i = 0; i < b.length; i++) {
      if (t >= b.start(i) - 0.05 && t < b.end(i) - 0.05) return [b.start(i), b.end(i)];
    }
    return null;
  }

  function bufferedAhead() {
    const r = bufferedRangeAt(video.currentTime);
    return r ? r[1] - video.currentTime : 0;
  }

  function lastMediaIndex() {
    return state.rows.length ? state.rows[state.rows.length - 1].index : 0;
  }

  // The block covering stream time t: the last one starting at or before it.
  function blockFor(t) {
    const rows = state.rows;
    if (!rows.length) return null;
    let lo = 0;
    let hi = rows.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (rows[mid].pts <= t + 1e-6) lo = mid;
      else hi = mid - 1;
    }
    return rows[lo].index;
  }

  function rowOf(index) {
    return state.rows[index - 1] || null;
  }

  // The independent part (a keyframe) that block `index` decodes from.
  function joinFor(index) {
    const row = rowOf(index);
    let join = row ? Math.max(1, index - (row.back || 0)) : index;
    while (join > 1 && rowOf(join) && !rowOf(join).independent) join--;
    return join;
  }

  async function loadTimeline(from) {
    const res = await fetch(`/index.json?from=${from}`, { cache: "no-store" });
    if (!res.ok) throw new Error(`${res.status} ${(await res.text()).trim()}`);
    const info = await res.json();
    state.info = info;
    state.length = info.length;
    state.ended = info.ended;
    state.liveEdge = info.live_edge;
    state.rows.length = Math.min(state.rows.length, from - 1);
    for (const row of info.blocks) state.rows[row.index - 1] = row;
  }

  // Fetches one block's fMP4 bytes; null when the server has no such block (yet).
  async function fetchBlock(index, abort) {
    try {
      const res = await fetch(`/block/${index}.m4s?timeout=20`, { signal: abort && abort.signal });
      if (res.status === 410) {
        // Held by no peer: the server says where the stream goes on.
        return { status: 410, data: null, goesOnAt: parseInt(res.headers.get("X-Goes-On-At"), 10) };
      }
      if (!res.ok) return { status: res.status, data: null };
      const pts = parseFloat(res.headers.get("X-Pts"));
      const dur = parseFloat(res.headers.get("X-Duration"));
      const flags = parseInt(res.headers.get("X-Flags") || "0", 10);
      const independent = res.headers.get("X-Independent") !== "0";
      const row = rowOf(index);
      if (!isNaN(pts) && (row || index === state.rows.length + 1)) {
        const back = row && row.known ? row.back : (independent ? 0 : (rowOf(index - 1) ? rowOf(index - 1).back + 1 : 1));
        state.rows[index - 1] = { index, pts, duration: dur, flags, known: true, independent, back };
        if (!state.ended) state.liveEdge = Math.max(state.liveEdge, pts + dur);
      }
      return { status: 200, data: new Uint8Array(await res.arrayBuffer()) };
    } catch (err) {
      return { status: err.name === "AbortError" ? 0 : -1, data: null };
    }
  }

  function setTime(t) {
    state.expectSeek = t;
    video.currentTime = t;
  }

  // Sets the playhead to t inside what is buffered (Chromium will not leave a gap by itself).
  function landAt(t) {
    let r = bufferedRangeAt(t);
    if (!r) {
      const b = sb.buffered;
      for (let i = 0; i < b.length && !r; i++) if (b.end(i) > t) r = [b.start(i), b.end(i)];
      if (!r && b.length) r = [b.start(b.length - 1), b.end(b.length - 1)];
    }
    if (!r) return;
    // Step over the few ms between the block's start and its first frame.
    setTime(Math.min(Math.max(t, r[0] + 0.001), Math.max(r[0], r[1] - 0.1)));
  }

  async function seekTo(t, live) {
    state.followLive = live || state.liveEdge - t < catchUpS();
    const index = blockFor(t);
    if (index === null) return;
    // A seek still loading (state.nextBlock === null) must be superseded, not raced: only an
    // idle player may jump within what it has buffered.
    if (state.nextBlock !== null && bufferedRangeAt(t)) {
      ++state.generation;
      setTime(t);
      return;
    }
    const generation = ++state.generation;
    const previous = state.nextBlock;
    state.nextBlock = null; // the pump idles until this seek has placed the playhead
    if (state.fetchAbort) state.fetchAbort.abort();
    setStatus(`loading ${fmt(t)}…`);
    // Playback starts at the independent part before t and runs through the part covering t.
    const first = joinFor(index);
    const parts = [];
    for (let i = first; i <= index; i++) {
      const got = await fetchUntilDecided(i, generation);
      if (generation !== state.generation) return;
      if (got.status === 410) return goOnFrom(got.goesOnAt, generation, state.followLive);
      if (!got.data) {
        setStatus(`block ${i} is not in the stream`);
        state.nextBlock = previous;
        kick();
        return;
      }
      parts.push(got.data);
    }
    try {
      await exclusive(async () => {
        if (generation !== state.generation) return;
        state.endOfStream = false;
        const b = sb.buffered;
        if (b.length) await removeRange(0, Math.max(bufferedEnd(), mediaSource.duration || 0) + 1);
        for (const data of parts) await appendBytes(data);
        state.nextBlock = index + 1;
        landAt(t);
        setDuration();
      });
    } catch (err) {
      if (!recoverable(err)) return;
    }
    setStatus("");
    if (video.paused) video.play().catch(() => {});
    kick();
  }

  // A block still on its way (504, a lost connection) is worth waiting for; 404 and 410 are not.
  async function fetchUntilDecided(index, generation) {
    let got = await fetchBlock(index, null);
    while (!got.data && got.status !== 404 && got.status !== 410 && generation === state.generation) {
      await sleep(500);
      got = await fetchBlock(index, null);
    }
    return got;
  }

  // Blocks that no peer holds (history nobody watched, after the broadcaster left): play on
  // from the first independent part at or after block n, and say so.
  async function goOnFrom(n, generation, live) {
    for (let i = n; Number.isInteger(i) && i <= lastMediaIndex(); i++) {
      const got = await fetchUntilDecided(i, generation);
      if (generation !== state.generation) return;
      if (got.status === 410) {
        i = Math.max(i, got.goesOnAt - 1);
        continue;
      }
      if (!got.data) break;
      const row = rowOf(i);
      if (row && row.independent) {
        state.skipped += 1;
        await seekTo(row.pts, live);
        if (generation + 1 === state.generation) {
          setStatus(`playing on from ${fmt(row.pts)}: the stream before it is held by no peer`);
        }
        return;
      }
    }
    if (generation === state.generation) setStatus("no peer holds the rest of the stream");
  }

  function goLive() {
    const last = lastMediaIndex();
    if (!last) return;
    const row = rowOf(last);
    return seekTo(Math.max(rowOf(joinFor(last)).pts, state.liveEdge - hold()), true);
  }

  // Appends blocks after the playhead while less than AHEAD_S is buffered; waits at the edge.
  async function pump() {
    for (;;) {
      const index = state.nextBlock;
      const wanted = index !== null && bufferedAhead() < AHEAD_S && !state.endOfStream;
      const exists = index !== null && (!state.ended || index <= lastMediaIndex());
      if (!wanted || !exists) {
        if (index !== null && state.ended && index > lastMediaIndex()) await finishStream();
        await napUntilKicked(500);
        continue;
      }
      const generation = state.generation;
      const abort = new AbortController();
      state.fetchAbort = abort;
      const got = await fetchBlock(index, abort);
      if (state.fetchAbort === abort) state.fetchAbort = null;
      if (generation !== state.generation) continue;
      if (got.status === 410) {
        // A hole no peer holds: once what is buffered before it has played, go on after it.
        while (bufferedAhead() >= 0.5 && generation === state.generation) await napUntilKicked(250);
        if (generation === state.generation) await goOnFrom(got.goesOnAt, generation, state.followLive);
        continue;
      }
      if (!got.data) {
        await napUntilKicked(got.status === 504 ? 50 : 500);
        continue;
      }
      try {
        await exclusive(async () => {
          if (generation !== state.generation || state.nextBlock !== index) return;
          await appendBytes(got.data);
          state.nextBlock = index + 1;
          await trimPlayed();
          setDuration();
        });
      } catch (err) {
        if (!recoverable(err)) return;
        await napUntilKicked(500); // the buffer is full even after eviction: let playback drain it
      }
    }
  }

  // A full buffer is worth waiting out; anything else means the MediaSource is gone.
  function recoverable(err) {
    if (err.name === "QuotaExceededError") return true;
    setStatus(`player error: ${err.message}`);
    return false;
  }

  async function finishStream() {
    await exclusive(async () => {
      if (state.endOfStream || mediaSource.readyState !== "open") return;
      state.endOfStream = true;
      mediaSource.endOfStream();
    });
  }

  // Long-polls the server for new blocks and refreshes the timeline when the stream grows.
  async function followEvents() {
    let since = state.length;
    for (;;) {
      try {
        const res = await fetch(`/events?since=${since}&timeout=20`, { cache: "no-store" });
        const ev = await res.json();
        state.stats = ev.stats || state.stats;
        if (ev.length !== since || ev.ended !== state.ended) {
          const from = Math.max(1, Math.min(state.rows.length, ev.length) - 1);
          await loadTimeline(from);
          since = state.length;
          setDuration();
          kick();
        }
      } catch (err) {
        await sleep(1000);
      }
    }
  }

  // Keeps a live viewer near the edge and steps over small gaps that would stall Chromium.
  function watchdog() {
    if (!sb || state.nextBlock === null) return;
    const t = video.currentTime;
    if (!video.seeking && !bufferedRangeAt(t)) {
      const b = sb.buffered;
      for (let i = 0; i < b.length; i++) {
        if (b.start(i) > t && b.start(i) - t < 1.5) {
          setTime(b.start(i) + 0.001);
          break;
        }
      }
    }
    const delay = state.liveEdge - t;
    if (state.followLive && !state.ended) {
      // Hold `hold()` seconds buffered ahead: play faster while more is, jump when far behind.
      const excess = bufferedEnd() - t - hold();
      if (delay > catchUpS() && !video.seeking) goLive();
      else if (excess > 1.0) video.playbackRate = 1.25;
      else if (excess > Math.max(0.1, part())) video.playbackRate = 1.1;
      else video.playbackRate = 1.0;
      const now = performance.now();
      if (state.hold !== null && now - state.lastStall > CALM_S * 1000) {
        state.hold = Math.max(minHold(), state.hold - 0.05); // smooth for a while: come closer
        state.lastStall = now - (CALM_S * 1000) / 2;
      }
    } else {
      video.playbackRate = 1.0;
    }
    if (video.paused && state.followLive && !video.seeking && bufferedAhead() > 0.5) {
      video.play().catch(() => {});
    }
  }

  function fmt(s) {
    if (!isFinite(s) || s < 0) s = 0;
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = Math.floor(s % 60).toString().padStart(2, "0");
    return h ? `${h}:${m.toString().padStart(2, "0")}:${sec}` : `${m}:${sec}`;
  }

  function rate(bytesPerSecond) {
    const v = bytesPerSecond || 0;
    if (v >= 1e6) return `${(v / 1e6).toFixed(2)} MB/s`;
    if (v >= 1e3) return `${(v / 1e3).toFixed(1)} kB/s`;
    return `${v.toFixed(0)} B/s`;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function delayBehindLive() {
    return Math.max(0, state.liveEdge - video.currentTime) + (state.stats.live_delay_s || 0);
  }

  function render() {
    const start = state.rows.length ? state.rows[0].pts : 0;
    const span = Math.max(0.001, state.liveEdge - start);
    const pct = (t) => `${Math.min(100, Math.max(0, ((t - start) / span) * 100))}%`;
    const r = sb ? bufferedRangeAt(video.currentTime) : null;
    $("timeline-played").style.width = pct(video.currentTime);
    $("timeline-head").style.left = pct(video.currentTime);
    $("timeline-buffered").style.left = r ? pct(r[0]) : "0";
    $("timeline-buffered").style.width = r
      ? `${(Math.max(0, r[1] - r[0]) / span) * 100}%`
      : "0";
    $("clock").textContent = `${fmt(video.currentTime - start)} / ${fmt(span)}`;
    const atLive = state.followLive && !state.ended && state.liveEdge - video.currentTime < catchUpS();
    $("live").classList.toggle("at-live", atLive);
    $("live").textContent = state.ended ? "ENDED" : "● LIVE";
    const s = state.stats;
    $("s-peers").textContent = s.peers ?? "–";
    $("s-down").textContent = rate(s.down_rate);
    $("s-up").textContent = rate(s.up_rate);
    $("s-share").textContent = `${Math.round((s.share_from_peers || 0) * 100)} %`;
    $("s-delay").textContent = state.ended ? "ended" : `${delayBehindLive().toFixed(1)} s`;
    $("s-blocks").textContent = s.length ? `${s.blocks_have} / ${s.length}` : "–";
    $("s-safe").textContent = s.keep ? `${Math.round((s.replicated_share || 0) * 100)} % by ≥ ${s.keep}, rarest ${s.rarest_copies}` : "–";
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    $("s-frames").textContent = q ? `${q.totalVideoFrames}` : "–";
  }

  async function pollStats() {
    for (;;) {
      try {
        const res = await fetch("/stats", { cache: "no-store" });
        state.stats = await res.json();
        const block = blockFor(video.currentTime);
        if (block !== null) {
          await fetch("/playhead", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ block, time: video.currentTime, delay_s: delayBehindLive() }),
          });
        }
      } catch (err) {
        // The server may be restarting; the next round retries.
      }
      await sleep(1000);
    }
  }

  async function openMediaSource(mime) {
    mediaSource = new MediaSource();
    video.src = URL.createObjectURL(mediaSource);
    await new Promise((resolve) => mediaSource.addEventListener("sourceopen", resolve, { once: true }));
    sb = mediaSource.addSourceBuffer(mime);
    sb.mode = "segments";
    const init = new Uint8Array(await (await fetch("/init.mp4")).arrayBuffer());
    await exclusive(() => appendBytes(init));
  }

  async function start() {
    // Joining a stream over the network, the header may take a while to arrive.
    for (;;) {
      try {
        await loadTimeline(1);
        break;
      } catch (err) {
        setStatus(`waiting for the stream… (${err.message})`);
        await sleep(1000);
      }
    }
    $("title").textContent = state.info.title || "swarmcast";
    document.title = `${state.info.title} – swarmcast`;
    if (!window.MediaSource || !MediaSource.isTypeSupported(state.info.mime)) {
      setStatus(`This browser cannot play ${state.info.mime}; open /live.m3u8 in VLC or mpv.`);
      return;
    }
    await openMediaSource(state.info.mime);
    followEvents();
    pollStats();
    setInterval(watchdog, 250);
    setInterval(render, 250);
    pump();
    const untouched = state.generation;
    while (!lastMediaIndex()) await napUntilKicked(500);
    const at = parseFloat(new URLSearchParams(location.search).get("at"));
    const origin = state.rows[0].pts;
    // A finished stream (an archive) starts at its beginning, a live one at its edge, unless
    // the viewer already picked a point while the page was starting.
    if (state.generation === untouched) {
      if (!isNaN(at)) await seekTo(origin + at, false);
      else if (state.ended) await seekTo(origin, false);
      else await goLive();
    }
    state.ready = true;
    if (!state.skipped) setStatus(""); // else it says where playback went on, and why
  }

  // Running dry at the live edge means the offset was too small for this network: grow it.
  video.addEventListener("waiting", () => {
    if (!state.ready || !state.followLive || state.ended || video.seeking) return;
    if (bufferedAhead() > 0.1) return; // decoding after a jump of ours: not a stall

    state.stalls++;
    state.lastStall = performance.now();
    state.hold = Math.min(HOLD_MAX_S, hold() + Math.max(0.1, part() / 2));
  });

  video.addEventListener("seeking", () => {
    const t = video.currentTime;
    if (state.expectSeek !== null && Math.abs(t - state.expectSeek) < 0.01) {
      state.expectSeek = null;
      return;
    }
    state.expectSeek = null;
    seekTo(t, false);
  });

  $("timeline").addEventListener("click", (ev) => {
    const box = ev.currentTarget.getBoundingClientRect();
    const start = state.rows.length ? state.rows[0].pts : 0;
    const t = start + ((ev.clientX - box.left) / box.width) * (state.liveEdge - start);
    seekTo(t, false);
  });
  $("live").addEventListener("click", () => goLive());

  window.player = {
    state, seekTo, goLive, delayBehindLive, video, hold,
    get mediaSource() { return mediaSource; },
  };
  start().catch((err) => setStatus(`player error: ${err.message}`));
})();
