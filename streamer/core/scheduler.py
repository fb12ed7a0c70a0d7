"""The Replicator: one per feed, it decides which block to ask from which peer, and when.

It owns the sessions of one feed (see replication.Session), asks for what matters most first (the
playback window from the playhead, then the live edge, then explicit wants, then history in archive
mode), never asks two peers for one block unless the first is late, caps what is in flight per peer
and what waits for our uplink, and keeps a writer's upload near one copy of the stream. Sans-IO like
the sessions: time is passed in, and it never stores anything a session has not verified.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from streamer.core.replication import (
    BlockVerified,
    FeedLike,
    OutRequest,
    Session,
    Upgraded,
)
from streamer.core.wire import MAX_CHUNK, Data, Handshake

__all__ = ["PRIORITY_HIGH", "PRIORITY_LOW", "Replicator", "ReplicatorConfig", "ReplicatorStats"]

PRIORITY_HIGH = 2  # want(): after the playback window, before the live edge
PRIORITY_LOW = 0  # want(): after the live edge, before archive history

MAX_WANTS = 64  # explicit want ranges remembered; the oldest is dropped beyond this
MAX_REFUSALS = 4096  # (peer, block) back-offs remembered
REVEALED_MEMORY = 64  # newest blocks whose reveal time is kept, for playback deadlines
COPY_MEMORY = 4096  # blocks behind the live edge for which a writer remembers copies served


@dataclass(slots=True)
class ReplicatorConfig:
    """How one node replicates one feed. Times in seconds, sizes in blocks unless noted."""

    max_inflight_per_peer: int = 16  # our requests waiting at one peer
    max_queued_uploads: int = 1  # a writer's extra copies waiting for its uplink; more: NoData(busy)
    # A viewer's answers of new blocks waiting for its uplink (more: NoData(busy)). Two, not one:
    # the next copy is already queued when one finishes, so the uplink never idles for a request's
    # round trip (with one and a live window of 2, 1,000 simulated viewers of a 2.5 Mbit/s stream
    # on 5 Mbit/s uplinks fell further behind every second).
    max_queued_relays: int = 2
    max_queued_history: int = 1  # answers of older blocks waiting for our uplink
    hot_window: int = 4  # blocks this close to the live edge are "new": many peers want them now
    playback_window: int = 8  # blocks from the playhead fetched first
    # Newest blocks fetched while following the live edge: a block needs several hops to reach
    # everyone, and a viewer that asks for it only once it is among the newest two relays it late.
    live_window: int = 4
    live: bool = True  # follow the live edge
    archive: bool = False  # also fetch all history (oldest first)
    block_duration: float = 1.0  # seconds of media per block, for playback deadlines
    deadline_margin: float = 0.5  # re-request a playback block this long before it is due
    late_after: float = 2.0  # a request unanswered this long goes to a second peer too
    request_timeout: float = 8.0  # a request unanswered this long is given up, the peer avoided
    busy_backoff: float = 0.25  # wait before asking a peer that said "busy" for the same block
    missing_backoff: float = 2.0  # wait before asking a peer that said it lacks a block
    writer_copies: int = 1  # a writer serves each block this many times freely...
    root_grace: float = 0.3  # ...and not first to a peer that was first for a recent block
    writer_extra_ratio: float = 0.2  # ...plus extra copies worth this share of the stream's bytes
    writer_extra_burst: int = 4  # ...saving up at most this many average blocks of extra copies
    scan_limit: int = 256  # wanted blocks examined per scheduling pass
    chunk_size: int = MAX_CHUNK  # bytes per data-channel message (smaller: less head-of-line wait)
    seed: int | None = None  # for the random tie-breaks (tests and the simulator fix it)


@dataclass(slots=True)
class ReplicatorStats:
    """Totals over the replicator's life (closed sessions included)."""

    bytes_up: int = 0
    bytes_down: int = 0
    blocks_up: int = 0
    block_bytes_up: int = 0
    blocks_from_writer: int = 0
    blocks_from_peers: int = 0
    block_bytes_from_writer: int = 0
    block_bytes_from_peers: int = 0
    duplicates: int = 0  # blocks received again (a re-request raced the first answer)
    duplicate_bytes: int = 0
    rerequests: int = 0  # late requests sent to a second peer
    timeouts: int = 0  # requests given up
    uploads_refused: int = 0  # block requests we declined as busy (or over the writer's budget)
    peers_dropped: int = 0  # sessions closed for misbehaving


@dataclass(slots=True)
class _Want:
    start: int
    end: int
    priority: int
    seq: int = 0


class Replicator:
    """Coordinates the sessions of one feed. The asyncio adapter is expected to:

    - `add_session(...)` per verified channel, `remove_session(s)` when the channel closes;
    - pass each received message to `session.receive(data, now)`;
    - after any call into the replicator or a session, send `s.datagrams_to_send(now, room)` of
      every session in `sessions` (and of the one it just fed), `room` being what the channel can
      take (e.g. 256 KiB minus its buffered amount), and read every session's events;
    - close and ban the peer on PeerMisbehaved;
    - stop replicating and report the error on LocalError (our own disk or feed failed: `failure`
      holds it, every session is closed, nothing more is requested, and nobody is banned);
    - run `handle_timer(now)` at `get_timer()`;
    - call `feed_changed(now)` after appending to the feed itself.
    """

    def __init__(self, feed: FeedLike, config: ReplicatorConfig | None = None) -> None:
        self.feed = feed
        self.config = config or ReplicatorConfig()
        self.sessions: list[Session] = []
        self.totals = ReplicatorStats()
        self._rng = random.Random(self.config.seed)
        self._inflight: dict[int, list[tuple[Session, OutRequest]]] = {}
        self._upgrade: tuple[Session, OutRequest] | None = None
        self._refusals: dict[tuple[Session, int], float] = {}  # (peer, block or -1 = upgrade)
        self._playhead: int | None = None
        self._playhead_at = 0.0
        self._wants: list[_Want] = []
        self._want_seq = 0
        self._uploads_waiting = 0
        self._copies: dict[int, int] = {}  # writer: block -> copies admitted
        self._tokens = 0.0  # writer: bytes of extra copies it may still serve
        self._roots: deque[Session] = deque()  # writer: who got the newest blocks' first copies
        self._root_asked: dict[int, float] = {}  # writer: block -> when its last root asked
        self._seen_length = feed.length
        self._seen_bytes = feed.byte_length
        self._revealed: dict[int, float] = {}  # recent blocks -> when an upgrade revealed them
        self._unavailable = 0  # wanted blocks no neighbour has, at the last full scheduling pass
        self._answer_time = 0.5  # seconds a block request usually takes here (moving average)
        # Our own feed failed (a full disk, say): replication is over, whoever sent the data.
        self.failure: Exception | None = None

    # ------------------------------------------------------------ sessions

    def add_session(
        self,
        *,
        name: str = "",
        remote_is_writer: bool = False,
        handshake: Handshake | None = None,
        verify_handshake: Callable[[Handshake], bool] | None = None,
    ) -> Session:
        """A session for a new channel. With handshake and verify_handshake the session sends our
        handshake first and checks the peer's (see replication.make_handshake/check_handshake);
        without them the connection already did, and remote_is_writer says what it found."""
        session = Session(
            self,
            name=name,
            handshake=handshake,
            verify_handshake=verify_handshake,
            remote_is_writer=remote_is_writer,
        )
        if self.failure is not None:
            session.close("replication stopped by a local error")
        if not session.closed:
            self.sessions.append(session)
        return session

    def remove_session(self, session: Session) -> None:
        """Forget a session whose channel closed; idempotent."""
        session.close("channel closed")

    # ------------------------------------------------------------ what to fetch

    def want(
        self, start: int, end: int, priority: int = PRIORITY_LOW, *, now: float | None = None
    ) -> None:
        """Fetch blocks start..end-1 (end may lie beyond the current length); with `now`, the
        requests go out at once (then send what the sessions have)."""
        if start >= end:
            return
        self._want_seq += 1
        self._wants.append(_Want(start, end, priority, self._want_seq))
        if len(self._wants) > MAX_WANTS:
            self._wants.pop(0)
        self._wants.sort(key=lambda w: (-w.priority, w.seq))
        if now is not None:
            self.schedule(now)

    def unwant(self, start: int, end: int) -> None:
        """Drop explicit wants that lie inside start..end-1."""
        self._wants = [w for w in self._wants if not (start <= w.start and w.end <= end)]

    def set_playhead(self, block: int | None, now: float) -> None:
        """The block being played (None: not playing); the window after it is fetched first.
        Requests go out at once: send what the sessions have afterwards."""
        self._playhead = block
        self._playhead_at = now
        self.schedule(now)

    @property
    def playhead(self) -> int | None:
        return self._playhead

    def set_archive(self, archive: bool) -> None:
        self.config.archive = archive

    def _wanted(self) -> Iterator[int]:
        cfg, length = self.config, self.feed.length
        if self._playhead is not None:
            yield from range(
                max(self._playhead, 0), min(self._playhead + cfg.playback_window, length)
            )
        for w in self._wants:
            if w.priority >= PRIORITY_HIGH:
                yield from range(w.start, min(w.end, length))
        if cfg.live:
            yield from range(max(0, length - cfg.live_window), length)
        for w in self._wants:
            if w.priority < PRIORITY_HIGH:
                yield from range(w.start, min(w.end, length))
        if cfg.archive:
            yield from range(self.feed.contiguous_length, length)

    def _deadline(self, block: int) -> float | None:
        """When a block in the playback window is due: counted from when the playhead moved or,
        for a block that did not exist yet then, from when an upgrade revealed it."""
        head = self._playhead
        if head is None or not head <= block < head + self.config.playback_window:
            return None
        base = max(self._playhead_at, self._revealed.get(block, 0.0))
        return base + (block - head + 1) * self.config.block_duration

    # ------------------------------------------------------------ the local feed

    def feed_changed(self, now: float) -> None:
        """Announce what our own appends added (a writer calls this after feed.append)."""
        feed = self.feed
        if feed.length <= self._seen_length:
            return
        start = self._seen_length
        if feed.writable:
            cfg = self.config
            added = feed.byte_length - self._seen_bytes
            average = feed.byte_length / max(feed.length, 1)
            self._tokens = min(
                self._tokens + cfg.writer_extra_ratio * added, cfg.writer_extra_burst * average
            )
        self._seen_length = feed.length
        self._seen_bytes = feed.byte_length
        for s in self.sessions:
            s.announce_length()
            s.announce(start, feed.length)

    # ------------------------------------------------------------ scheduling

    def schedule(self, now: float) -> None:
        """Send the requests that should be in flight now (run after every input)."""
        if self.feed.writable or self.failure is not None:
            return
        self._request_upgrade(now)
        self._request_blocks(now)

    def _capacity(self, s: Session) -> bool:
        return s.is_open and len(s.inflight) < self.config.max_inflight_per_peer

    def _blocked(self, s: Session, key: int, now: float) -> bool:
        until = self._refusals.get((s, key))
        return until is not None and until > now

    def _request_upgrade(self, now: float) -> None:
        """Ask the peer with the longest signed length for its upgrade, alone: it is small, so it
        is answered at once even by a peer whose uplink is busy, and block requests need it first."""
        if self._upgrade is not None:
            return
        feed = self.feed
        best: Session | None = None
        best_key: tuple[int, bool, int, float] | None = None
        for s in self.sessions:
            if not (s.synced and s.remote_can_upgrade and s.remote_fork == feed.fork):
                continue
            if s.remote_length <= feed.length or not self._capacity(s) or self._blocked(s, -1, now):
                continue
            key = (s.remote_length, not s.remote_is_writer, -len(s.inflight), self._rng.random())
            if best_key is None or key > best_key:
                best, best_key = s, key
        if best is None:
            return
        out = best.request(now, upgrade_to=best.remote_length)
        out.check_at = now + self.config.request_timeout
        self._upgrade = (best, out)

    def _request_blocks(self, now: float) -> None:
        limit = self.config.max_inflight_per_peer
        fork = self.feed.fork
        ready = [
            s
            for s in self.sessions
            if s.is_open and len(s.inflight) < limit and s.remote_fork == fork
        ]
        if not ready:
            return
        feed = self.feed
        scanned = 0
        unavailable = 0
        for block in self._wanted():
            scanned += 1
            if scanned > self.config.scan_limit:
                break
            if block in self._inflight or feed.has(block):
                continue
            s = self._pick(block, now, ready)
            if s is None:
                if not any(block in t.remote_has for t in self.sessions):
                    unavailable += 1
                continue
            out = s.request(now, block=block)
            self._inflight[block] = [(s, out)]
            self._mark_checks(out)
            if len(s.inflight) >= limit:
                ready.remove(s)
                if not ready:
                    return
        self._unavailable = unavailable

    def _pick(
        self, block: int, now: float, ready: list[Session], exclude: Session | None = None
    ) -> Session | None:
        """The peer to ask for a block among those with room: one that has it, viewers before the
        writer (that keeps the writer's upload flat), then the least loaded; random among equals."""
        best: Session | None = None
        best_key: tuple[bool, int, float] | None = None
        refusals = self._refusals
        for s in ready:
            if s is exclude or block not in s.remote_has:
                continue
            until = refusals.get((s, block))
            if until is not None and until > now:
                continue
            key = (s.remote_is_writer, len(s.inflight), self._rng.random())
            if best_key is None or key < best_key:
                best, best_key = s, key
        return best

    def _mark_checks(self, out: OutRequest) -> None:
        """When to look whether a request is late. Lateness is measured against how long blocks
        usually take to arrive here: a second request to a peer that is merely as slow as
        everyone only doubles the load of a swarm that is already busy."""
        cfg = self.config
        usual = self._answer_time
        out.check_at = out.sent_at + max(cfg.late_after, 3 * usual)
        if out.block is not None:
            deadline = self._deadline(out.block)
            if deadline is not None:
                # Near its playback deadline a request counts as late sooner, but not at once.
                soon = max(out.sent_at + 2 * usual, deadline - cfg.deadline_margin)
                out.check_at = min(out.check_at, soon)

    def _refuse(self, s: Session, key: int, until: float) -> None:
        if len(self._refusals) >= MAX_REFUSALS:
            self._refusals.pop(next(iter(self._refusals)))
        self._refusals[(s, key)] = until

    def _forget(self, block: int, s: Session, out: OutRequest) -> list[tuple[Session, OutRequest]]:
        """Remove one request for a block; returns the others still out for it."""
        entries = self._inflight.get(block)
        if entries is None:
            return []
        rest = [(t, o) for t, o in entries if o is not out]
        if rest:
            self._inflight[block] = rest
        else:
            del self._inflight[block]
        return rest

    # ------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """When handle_timer must run next, or None."""
        timeout = self.config.request_timeout
        best: float | None = None
        for entries in self._inflight.values():
            for _, out in entries:
                t = out.sent_at + timeout if out.late else min(out.check_at, out.sent_at + timeout)
                if best is None or t < best:
                    best = t
        if self._upgrade is not None:
            t = self._upgrade[1].sent_at + timeout
            if best is None or t < best:
                best = t
        for (_, key), until in self._refusals.items():
            if (key < 0 or not self.feed.has(key)) and (best is None or until < best):
                best = until
        return best

    def handle_timer(self, now: float) -> None:
        timeout = self.config.request_timeout
        for block, entries in list(self._inflight.items()):
            for s, out in list(entries):
                if now >= out.sent_at + timeout:  # the very sum get_timer returns
                    self.totals.timeouts += 1
                    s.cancel(out)
                    self._forget(block, s, out)
                    if self._upgrade is not None and self._upgrade[1] is out:
                        self._upgrade = None
                    self._refuse(s, block, now + timeout)
                elif not out.late and now >= out.check_at:
                    self._rerequest(block, s, out, now)
        if self._upgrade is not None:
            s, out = self._upgrade
            if now >= out.sent_at + timeout:  # the very sum get_timer returns
                self.totals.timeouts += 1
                s.cancel(out)
                self._upgrade = None
                self._refuse(s, -1, now + timeout)
        for key, until in list(self._refusals.items()):
            if until <= now:
                del self._refusals[key]
        self.schedule(now)

    def _rerequest(self, block: int, s: Session, out: OutRequest, now: float) -> None:
        if self.feed.has(block) or block >= self.feed.length:
            out.late = True
            return
        ready = [t for t in self.sessions if self._capacity(t) and t.remote_fork == self.feed.fork]
        other = self._pick(block, now, ready, exclude=s)
        if other is None:
            # Nobody else has it yet: look again shortly rather than spin.
            out.check_at = now + self.config.busy_backoff
            return
        out.late = True
        second = other.request(now, block=block)
        second.late = True
        self._inflight.setdefault(block, []).append((other, second))
        self.totals.rerequests += 1

    # ------------------------------------------------------------ called by sessions

    def _admit_upload(self, s: Session, block: int, now: float) -> bool:
        """May we answer a block request now? False: the session answers busy."""
        cfg = self.config
        if self.feed.writable:
            copies = self._copies.get(block, 0)
            if copies == 0 and s in self._roots and len(self.sessions) > len(self._roots):
                # A peer that got one of the last new blocks first is busy passing it on: let
                # another neighbour be this block's first holder, unless none asks for a while.
                asked = self._root_asked.setdefault(block, now)
                if now - asked < cfg.root_grace:
                    self.totals.uploads_refused += 1
                    return False
            if copies >= cfg.writer_copies:
                average = self.feed.byte_length / max(self.feed.length, 1)
                if self._tokens < average or self._uploads_waiting >= cfg.max_queued_uploads:
                    self.totals.uploads_refused += 1
                    return False
                self._tokens -= average
            if copies == 0:
                self._roots.append(s)
                while len(self._roots) > max(1, len(self.sessions) // 2):
                    self._roots.popleft()
                self._root_asked.pop(block, None)
                if len(self._root_asked) > REVEALED_MEMORY:
                    self._root_asked.pop(next(iter(self._root_asked)))
            self._copies[block] = copies + 1
            if len(self._copies) > COPY_MEMORY:
                floor = self.feed.length - COPY_MEMORY
                self._copies = {b: n for b, n in self._copies.items() if b >= floor}
        elif block >= self.feed.length - cfg.hot_window:
            # Everyone near wants a new block at once: keep only a short queue for it, so a peer
            # we cannot serve soon asks one that just got it (that is how a block spreads fast).
            if self._uploads_waiting >= cfg.max_queued_relays:
                self.totals.uploads_refused += 1
                return False
        elif self._uploads_waiting >= cfg.max_queued_history:
            self.totals.uploads_refused += 1
            return False
        self._uploads_waiting += 1
        return True

    def _upload_started(self) -> None:
        self._uploads_waiting -= 1

    def _upload_dropped(self, block: int) -> None:
        """An admitted answer was cancelled or its session closed before it went out."""
        self._uploads_waiting -= 1
        if self.feed.writable and self._copies.get(block, 0) > 0:
            self._copies[block] -= 1

    def _block_uploaded(self, s: Session, block: int, size: int) -> None:
        self.totals.blocks_up += 1
        self.totals.block_bytes_up += size

    def _data(self, s: Session, out: OutRequest, data: Data, stale: bool, now: float) -> None:
        """A Data answering one of our requests; ProofError (the peer is dropped) if invalid, or
        the feed's own error (LocalStorageError, ...) if our disk refused what verified."""
        feed = self.feed
        if self._upgrade is not None and self._upgrade[1] is out:
            self._upgrade = None
        if out.block is not None:
            self._forget(out.block, s, out)
        if stale and data.upgrade is not None and data.upgrade.start != feed.length:
            # The answer to an upgrade we gave up on; our length moved on, so it no longer applies.
            return
        had = out.block is not None and feed.has(out.block)
        old_length = feed.length
        feed.verify_and_apply(data)
        if feed.length > old_length:
            for b in range(max(old_length, feed.length - REVEALED_MEMORY), feed.length):
                self._revealed[b] = now
            while len(self._revealed) > REVEALED_MEMORY:
                self._revealed.pop(next(iter(self._revealed)))
            s._emit(Upgraded(feed.length))
            for t in self.sessions:
                t.announce_length()
        if data.block is None:
            if out.block is not None:
                # The peer sent the upgrade but declined the block: it is busy.
                s.stats.refused += 1
                self._refuse(s, out.block, now + self.config.busy_backoff)
            return
        block, size = data.block.index, len(data.block.value)
        if not stale:
            self._answer_time += 0.1 * (now - out.sent_at - self._answer_time)
        if had:
            self.totals.duplicates += 1
            self.totals.duplicate_bytes += size
            s.stats.duplicates += 1
            return
        s.stats.blocks_down += 1
        s.stats.block_bytes_down += size
        if s.remote_is_writer:
            self.totals.blocks_from_writer += 1
            self.totals.block_bytes_from_writer += size
        else:
            self.totals.blocks_from_peers += 1
            self.totals.block_bytes_from_peers += size
        s._emit(BlockVerified(block, s.remote_is_writer))
        for t, other in self._inflight.pop(block, []):
            t.cancel(other)
            if self._upgrade is not None and self._upgrade[1] is other:
                self._upgrade = None
        for t in self.sessions:
            if t is not s and block not in t.remote_has:
                t.announce(block, block + 1)

    def _refused(self, s: Session, out: OutRequest, busy: bool, now: float) -> None:
        cfg = self.config
        backoff = cfg.busy_backoff if busy else cfg.missing_backoff
        if self._upgrade is not None and self._upgrade[1] is out:
            self._upgrade = None
            self._refuse(s, -1, now + backoff)
        if out.block is not None:
            self._forget(out.block, s, out)
            self._refuse(s, out.block, now + backoff)
            if not busy:
                s.remote_has.remove(out.block, out.block + 1)

    def _fail(self, error: Exception) -> None:
        """Our feed failed: stop for good. Every session closes; none counts as misbehaving."""
        if self.failure is not None:
            return
        self.failure = error
        for s in list(self.sessions):
            s.close("replication stopped by a local error")

    def _session_closed(self, s: Session) -> None:
        if s in self.sessions:
            self.sessions.remove(s)
        self.totals.bytes_up += s.stats.bytes_up
        self.totals.bytes_down += s.stats.bytes_down
        for block, entries in list(self._inflight.items()):
            for t, out in entries:
                if t is s:
                    self._forget(block, t, out)
        if self._upgrade is not None and self._upgrade[0] is s:
            self._upgrade = None
        for key in [k for k in self._refusals if k[0] is s]:
            del self._refusals[key]
        if s in self._roots:
            self._roots.remove(s)

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, object]:
        """JSON-ready totals and per-peer traffic; `writer_share` is the share of downloaded block
        bytes that came straight from the writer."""
        totals = asdict(self.totals)
        for s in self.sessions:
            totals["bytes_up"] += s.stats.bytes_up
            totals["bytes_down"] += s.stats.bytes_down
        down = totals["block_bytes_from_writer"] + totals["block_bytes_from_peers"]
        totals["writer_share"] = totals["block_bytes_from_writer"] / down if down else 0.0
        totals["inflight"] = sum(len(e) for e in self._inflight.values())
        # Wanted blocks that no neighbour holds: a sign to find other peers.
        totals["unavailable"] = self._unavailable
        totals["peers"] = [
            {
                "name": s.name,
                "is_writer": s.remote_is_writer,
                "remote_length": s.remote_length,
                **asdict(s.stats),
            }
            for s in self.sessions
        ]
        return totals
