"""The Replicator: one per feed, it decides which block to ask from which peer, and when.

It owns the sessions of one feed (see replication.Session), asks for what matters most first (the
playback window from the playhead, then the live edge, then explicit wants, then history in archive
mode), never asks two peers for one block unless the first is late, and caps what is in flight
per peer; what waits for our uplink is the upload policy's (core.admission). Sans-IO like the
sessions, in the shape of aioquic's H3Connection over its QuicConnection: it consumes the sessions'
events (their verified answers, refusals, closes) and calls only their public methods; time is
passed in, and it never stores anything (the sessions verify and store).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from streamer.core.admission import UploadAdmission, blocks_of
from streamer.core.backfill import Backfill, Safety, missing_runs, to_runs, unavailable_runs
from streamer.core.compat import SLOTS
from streamer.core.handshake import Handshaker
from streamer.core.relay import LiveRelay
from streamer.core.replication import (
    MAX_EVENTS,
    BlockVerified,
    Event,
    FeedLike,
    LocalError,
    OutRequest,
    PeerMisbehaved,
    Pushed,
    RemoteSynced,
    RequestAnswered,
    RequestRefused,
    Session,
    SubscribeAsked,
    SubscriptionChanged,
    Upgraded,
)
from streamer.core.stats import NeighbourStats, PeerStats, RateMeter, ReplicationStats
from streamer.core.wire import MAX_CHUNK

__all__ = ["PRIORITY_HIGH", "PRIORITY_LOW", "Replicator", "ReplicatorConfig", "ReplicatorTotals"]

PRIORITY_HIGH = 2  # want(): after the playback window, before the live edge
PRIORITY_LOW = 0  # want(): after the live edge, before archive history

MAX_WANTS = 64  # explicit want ranges remembered; the oldest is dropped beyond this
MAX_REFUSALS = 4096  # (peer, block) back-offs remembered (block -1: the upgrade; WAIT_KEY: waits)
WAIT_KEY = -2  # refusal key: the peer answered a waiting request missing (it keeps none now)
REVEALED_MEMORY = 64  # newest blocks whose reveal time is kept, for playback deadlines


@dataclass(**SLOTS)
class ReplicatorConfig:
    """How one node replicates one feed. Times and windows in seconds (windows are seconds of
    media, turned into blocks with `block_duration`: `blocks()`), sizes in blocks unless noted."""

    max_inflight_per_peer: int = 16  # our requests waiting at one peer, at least...
    # ...and as many more as fit in this many bytes of average blocks: small blocks need more in
    # flight to keep a channel busy over a round trip (16 x 16 KiB starved a local aiortc link).
    max_inflight_bytes_per_peer: int = 1024 * 1024
    max_queued_uploads: int = 1  # a writer's extra copies waiting for its uplink; more: NoData(busy)
    # A viewer's answers of new blocks waiting for its uplink (more: NoData(busy)). Two, not one:
    # the next copy is already queued when one finishes, so the uplink never idles for a request's
    # round trip (with one and a live window of 2, 1,000 simulated viewers of a 2.5 Mbit/s stream
    # on 5 Mbit/s uplinks fell further behind every second).
    max_queued_relays: int = 2
    max_queued_history: int = 1  # answers of older blocks waiting for our uplink
    # Seconds of media this close to the live edge are "new": many peers want them now.
    hot_window: float = 4.0
    playback_window: float = 8.0  # seconds of media from the playhead fetched first
    # Seconds of the newest media fetched while following the live edge: a block needs several
    # hops to reach everyone, and a viewer that asks for it only once it is among the newest two
    # 1 s blocks relays it late.
    live_window: float = 4.0
    live: bool = True  # follow the live edge
    archive: bool = False  # also fetch all history (oldest first)
    # Seconds of media per block (the stream header's part or segment duration; the viewer sets
    # it once it read the header): turns the windows into blocks and sets playback deadlines.
    block_duration: float = 1.0
    deadline_margin: float = 0.5  # re-request a playback block this long before it is due
    late_after: float = 2.0  # a request unanswered this long goes to a second peer too
    # Ask for the newest block together with the upgrade that reveals it (_request_upgrade). Off:
    # in bench/simulate.py (300 viewers, 0.2 s parts, pull) it cut T1's p95 (2.5 Mbit/s on 5 Mbit/s,
    # 50 ms: 2.42 s vs 2.69 s, seed 2; 2.37 s vs 2.51 s, seed 3) but raised stalls in the tighter
    # swarms (T3, 1.5x uploads, 80 ms: 1.37 % vs 0.45 % of watch time; T2, mixed uploads and
    # symmetric NATs: 288 of 300 viewers starved vs 4), not yet understood.
    upgrade_with_block: bool = False
    # Waiting requests: a new block that we know exists (our length includes it) but no neighbour
    # announced yet is asked of the neighbour that usually gets new blocks first, which answers
    # the moment it verifies the block: a hop then costs the transmission and half a round trip,
    # not an announcement, a request and the answer. If another neighbour announces it first,
    # the request moves there.
    wait_requests: bool = True
    # Neighbours a new block waits at, at once (the earliest ones by lead): when one announces
    # it the others are cancelled. One: two looked better at 300 viewers (bench/simulate.py,
    # 20 s, 0.2 s parts: 2.5 Mbit/s on 5 Mbit/s uplinks, p95 2.23 -> 2.20 s; 1.5x uploads with
    # 20 % churn, 3.80 -> 3.63 s, stalls 1.25 -> 0.91 %) but not at 1,000 (60 s: T1 seed 2 p95
    # 2.46 -> 2.45 s, T3 seed 3 4.08 -> 4.03 s, stalls 0.26 -> 0.28 %), and duplicate downloads
    # rose from about 2.5 % to 4-5 % (an answer on its way when the cancel arrives).
    wait_peers: int = 1
    request_timeout: float = 8.0  # a request unanswered this long is given up, the peer avoided
    busy_backoff: float = 0.25  # wait before asking a peer that said "busy" for the same block
    missing_backoff: float = 2.0  # wait before asking a peer that said it lacks a block
    writer_copies: int = 1  # a writer serves each block this many times freely...
    root_grace: float = 0.3  # ...and not first to a peer that was first for a recent block
    writer_extra_ratio: float = 0.2  # ...plus extra copies worth this share of the stream's bytes
    writer_extra_burst: float = 4.0  # ...saving up at most this many seconds of extra copies
    scan_limit: int = 256  # wanted blocks examined per scheduling pass
    chunk_size: int = MAX_CHUNK  # bytes per data-channel message (smaller: less head-of-line wait)
    # Live push (core.relay, docs/replication.md#live-push-relay-at-the-live-edge): a viewer
    # subscribes to one neighbour, which pushes it each new block as soon as it verifies; pulls
    # are the fallback. Off by default: in bench/simulate.py the single push tree measured worse
    # than the pull mesh (1,000 viewers, 2.5 Mbit/s on 5 Mbit/s uplinks: p95 4.4 s vs 3.0 s).
    push: bool = False
    max_push_children: int = 3  # subscribers a viewer pushes to (fewer once its uplink falls behind)
    writer_push_children: int = 1  # subscribers a writer pushes to: each block about once
    # Hold a pull of a new length or block for the push at least push_grace_min and at most
    # push_grace_max seconds (1.5x the usual push delay + 50 ms in between). Short: a push that
    # is late must not make the pull late too (a longer hold measured worse in bench/simulate.py).
    push_grace_min: float = 0.0
    push_grace_max: float = 0.3
    switch_every: int = 10  # move parents at most once per this many new blocks...
    switch_depth: int = 2  # ...to a neighbour this many relays nearer the broadcaster
    refused_backoff: float = 5.0  # do not ask a neighbour that refused or that we left for this long
    shed_cooldown: float = 10.0  # after shedding a subscriber, take no new one for this long
    seed: int | None = None  # for the random tie-breaks (tests and the simulator fix it)

    def blocks(self, seconds: float) -> int:
        """Blocks that hold `seconds` of media (at least one)."""
        return blocks_of(seconds, self.block_duration)


@dataclass(**SLOTS)
class ReplicatorTotals:
    """What the replicator counts over its life (the traffic itself is the sessions'; see stats())."""

    blocks_from_writer: int = 0
    blocks_from_peers: int = 0
    block_bytes_from_writer: int = 0
    block_bytes_from_peers: int = 0
    duplicates: int = 0  # blocks received again (a re-request raced the first answer)
    duplicate_bytes: int = 0
    rerequests: int = 0  # late requests sent to a second peer
    timeouts: int = 0  # requests given up
    peers_dropped: int = 0  # sessions closed for misbehaving


@dataclass(**SLOTS)
class _Want:
    start: int
    end: int
    priority: int
    seq: int = 0


class Replicator:
    """Coordinates the sessions of one feed. The asyncio adapter is expected to:

    - `add_session(...)` per verified channel, `remove_session(s)` when the channel closes;
    - pass each received message to `receive(session, data, now)`;
    - after any call into the replicator, send `s.datagrams_to_send(now, room)` of every session
      in `sessions` (and of the one it just fed), `room` being what the channel can take (e.g.
      256 KiB minus its buffered amount), and read `next_event()` until it returns None (also
      after sending: an answer may find our own feed failing);
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
        self.totals = ReplicatorTotals()
        self._closed = PeerStats()  # the traffic of sessions that closed
        self.uploads = UploadAdmission(feed, self.config)
        self._pushed_block = False  # the BlockVerified being handled came by push
        self._hold_until: float | None = None  # the first block pull held for a push ends then
        self._pushed_block_seen = False  # the last verified block came by push (for the simulator)
        self._events: deque[tuple[Session, Event]] = deque(maxlen=MAX_EVENTS)
        self._rates = RateMeter()
        self._dirty: set[Session] = set()  # sessions with unread events, or closed
        self._stale = True  # something changed that may call for a request since the last pass
        self._archive_cursor = 0  # blocks below this are held (see _archive_start)
        self._rng = random.Random(self.config.seed)
        self._inflight: dict[int, list[tuple[Session, OutRequest]]] = {}
        self._upgrade: tuple[Session, OutRequest] | None = None
        self._refusals: dict[tuple[Session, int], float] = {}  # (peer, block or -1 = upgrade)
        self._playhead: int | None = None
        self._playhead_at = 0.0
        self._wants: list[_Want] = []
        self._want_seq = 0
        self._seen_length = feed.length  # our own appends announced so far
        self._announce_length = False  # an upgrade verified: announce our length after its block
        self._revealed_to = feed.length  # the length whose blocks' reveal times are known
        self._now = 0.0  # the latest time passed in
        self._revealed: dict[int, float] = {}  # recent blocks -> when an upgrade revealed them
        self._answer_time = 0.5  # seconds a block request usually takes here (moving average)
        self.relay = LiveRelay(feed, self.config, self._rng)
        self.uploads.pushing = self.relay.pushing
        self.uploads.held_elsewhere = self._held_elsewhere
        self._appended: deque[tuple[float, int]] = deque()  # writer: (time, byte_length) samples
        # Our own feed failed (a full disk, say): replication is over, whoever sent the data.
        self.failure: Exception | None = None
        # History for the swarm's sake (core.backfill): off until a viewer turns it on.
        self.backfill = Backfill(seed=self.config.seed)

    # ------------------------------------------------------------ sessions

    def add_session(
        self,
        *,
        name: str = "",
        remote_is_writer: bool = False,
        handshake: Handshaker | None = None,
    ) -> Session:
        """A session for a new channel. With a Handshaker the session sends our handshake first
        and checks the peer's; without one the connection already did, and remote_is_writer says
        what it found."""
        session = Session(
            self.feed,
            self.uploads,
            name=name,
            chunk_size=self.config.chunk_size,
            handshake=handshake,
            remote_is_writer=remote_is_writer,
        )
        session.notify = self._dirty.add
        if self.failure is not None:
            session.close("replication stopped by a local error")
        self._stale = True
        if not session.closed:
            self.sessions.append(session)
            self.uploads.peer_added()
            self.relay.session_added(session)
        self._consume(session)
        return session

    @property
    def peers(self) -> int:
        """Neighbours with an open session."""
        return sum(1 for s in self.sessions if s.is_open)

    @property
    def writer_connected(self) -> bool:
        return any(s.is_open and s.remote_is_writer for s in self.sessions)

    def remove_session(self, session: Session) -> None:
        """Forget a session whose channel closed; idempotent."""
        session.close("channel closed")
        self._consume_all()

    def receive(self, session: Session, data: bytes, now: float) -> None:
        """One data-channel message from `session`'s peer: the session checks and applies it, and
        the replicator acts on what came of it and sends the requests that should go out now."""
        self._now = now
        before = session.changes
        session.receive(data, now)
        self._consume(session)
        if self._stale or session.changes != before:
            self.schedule(now)
        else:
            # A request or cancel for our uplink, or the announcement of a block we hold,
            # changes nothing we would ask for.
            self._consume_all()
        self._sample(now)

    def next_event(self) -> tuple[Session, Event] | None:
        """The next event for the adapter, with the session it happened on (the scheduler's own
        RequestAnswered and RequestRefused are not passed on)."""
        if not self._events:
            self._consume_all()
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------ session events

    def _consume_all(self) -> None:
        """Read what every session has to say (calls into one session may close another); the
        sessions mark themselves in `_dirty` when they emit an event or close."""
        dirty = self._dirty
        while dirty:
            self._consume(dirty.pop())

    def _consume(self, s: Session) -> None:
        self._dirty.discard(s)
        while (event := s.next_event()) is not None:
            self._on_event(s, event)
        if self._announce_length:
            self._announce_length = False
            for t in self.sessions:
                t.announce_length()
        if s.closed and s in self.sessions:
            self._session_closed(s)

    def _on_event(self, s: Session, event: Event) -> None:
        self._stale = True
        if isinstance(event, (Pushed, SubscribeAsked, SubscriptionChanged)):
            self._on_relay_event(s, event)
            return
        if isinstance(event, RequestAnswered):
            self._answered(s, event)
            return
        if isinstance(event, RequestRefused):
            self._refused(s, event.request, event.busy)
            return
        if isinstance(event, Upgraded):
            # Blocks an upgrade revealed are due from now on, if the playhead is near them.
            length = event.length
            for b in range(max(self._revealed_to, length - REVEALED_MEMORY), length):
                self._revealed[b] = self._now
            self._revealed_to = max(self._revealed_to, length)
            while len(self._revealed) > REVEALED_MEMORY:
                self._revealed.pop(next(iter(self._revealed)))
            # With upgrade_with_block, announced once this session's events are read: the block
            # that came with the upgrade is announced first, so a neighbour learns we hold it
            # before it hears the length and asks for both in one request (_request_upgrade).
            if self.config.upgrade_with_block:
                self._announce_length = True
            else:
                for t in self.sessions:
                    t.announce_length()
            self.relay.upgraded(self._now, self._longest())
        elif isinstance(event, BlockVerified):
            block = event.index
            for t, other in self._inflight.pop(block, []):
                t.cancel(other)
                if self._upgrade is not None and self._upgrade[1] is other:
                    self._upgrade = None
            # Every neighbour, even one that holds it or sent it: each counts the copies around it
            # (core.backfill), the broadcaster too.
            now = self._now
            for t in self.sessions:
                t.announce(block, block + 1)
                t.verified(block, now)
            self._relay_block(s, block)
        elif isinstance(event, RemoteSynced):
            self.relay.remote_synced(event.length, self._now)
        elif isinstance(event, PeerMisbehaved):
            self.totals.peers_dropped += 1
        elif isinstance(event, LocalError):
            self._stop(event.error)
        self._events.append((s, event))

    # ------------------------------------------------------------ live push (core.relay)

    def _on_relay_event(
        self, s: Session, event: Pushed | SubscribeAsked | SubscriptionChanged
    ) -> None:
        relay, now = self.relay, self._now
        if isinstance(event, SubscribeAsked):
            relay.subscribe_asked(s, event.start, now)
        elif isinstance(event, SubscriptionChanged):
            relay.subscription_changed(s, event.on, now)
        else:
            relay.pushed(s, event)
            self._pushed_block = not (event.duplicate or event.unusable)
            if event.duplicate:
                self.totals.duplicates += 1
                self.totals.duplicate_bytes += event.size
            elif event.unusable:
                pass
            elif s.remote_is_writer:
                self.totals.blocks_from_writer += 1
                self.totals.block_bytes_from_writer += event.size
            else:
                self.totals.blocks_from_peers += 1
                self.totals.block_bytes_from_peers += event.size

    def _relay_block(self, s: Session, block: int) -> None:
        """A block verified from `s`: learn who is early, push it on to our subscribers."""
        pushed, self._pushed_block = self._pushed_block, False
        self._pushed_block_seen = pushed
        relay = self.relay
        relay.block_verified(block, s, self.sessions, self._now, pushed)
        relay.have(block, s, self._now)

    def _held_elsewhere(self, peer: object, block: int) -> bool:
        """Whether a viewer among our neighbours other than `peer` announced `block` (the
        broadcaster holds every block but serves few copies)."""
        return any(
            t is not peer and not t.remote_is_writer and block in t.remote_has
            for t in self.sessions
        )

    def _longest(self) -> int:
        return max((t.remote_length for t in self.sessions if t.is_open), default=0)

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
        self._stale = True
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
        self._stale = True

    def _wanted(self) -> Iterator[int]:
        cfg, length = self.config, self.feed.length
        head = self._playhead
        played = (0, 0)  # the playback window, which the live edge need not repeat
        if head is not None:
            played = (max(head, 0), min(head + cfg.blocks(cfg.playback_window), length))
            yield from range(*played)
        for w in self._wants:
            if w.priority >= PRIORITY_HIGH:
                yield from range(w.start, min(w.end, length))
        if cfg.live:
            live = max(0, length - cfg.blocks(cfg.live_window))
            if played[1] > played[0]:
                yield from range(live, min(length, played[0]))
                yield from range(max(live, played[1]), length)
            else:
                yield from range(live, length)
        for w in self._wants:
            if w.priority < PRIORITY_HIGH:
                yield from range(w.start, min(w.end, length))
        if cfg.archive:
            # The blocks we lack, not everything from the first gap: a block nobody holds must
            # not hide the ones after it from the scan limit; none below the first we lack.
            first = self._archive_start()
            for start, end in missing_runs(length, self.feed.present_ranges()):
                yield from range(max(start, first), end)

    def _archive_start(self) -> int:
        """The first block we lack from the start (the feed's contiguous length moves only when
        it flushes; this follows what verified since, so a pass never rescans those)."""
        feed = self.feed
        c = max(self._archive_cursor, feed.contiguous_length)
        length = feed.length
        while c < length and feed.has(c):
            c += 1
        self._archive_cursor = c
        return c

    def _deadline(self, block: int) -> float | None:
        """When a block in the playback window is due: counted from when the playhead moved or,
        for a block that did not exist yet then, from when an upgrade revealed it."""
        head, cfg = self._playhead, self.config
        if head is None or not head <= block < head + cfg.blocks(cfg.playback_window):
            return None
        base = max(self._playhead_at, self._revealed.get(block, 0.0))
        return base + (block - head + 1) * cfg.block_duration

    # ------------------------------------------------------------ the local feed

    def feed_changed(self, now: float) -> None:
        """Announce what our own appends added (a writer calls this after feed.append)."""
        feed = self.feed
        if feed.length <= self._seen_length:
            return
        self._now = now
        start = self._seen_length
        self.uploads.feed_grew()
        self._seen_length = feed.length
        self._appended.append((now, feed.byte_length))
        while len(self._appended) > 2 and now - self._appended[1][0] >= 10.0:
            self._appended.popleft()
        first = self.config.upgrade_with_block  # the blocks before the length: _request_upgrade
        for s in self.sessions:
            if first:
                s.announce(start, feed.length)
            s.announce_length()
            if not first:
                s.announce(start, feed.length)
        for block in range(start, feed.length):
            self.relay.have(block, None, now)
            for s in self.sessions:
                s.verified(block, now)
        self._consume_all()

    # ------------------------------------------------------------ scheduling

    def schedule(self, now: float) -> None:
        """Send the requests that should be in flight now (run after every input)."""
        self._now = now
        self._stale = False
        if self.failure is None:
            self.relay.tick(self.sessions, now)
        if not self.feed.writable and self.failure is None:
            self._request_upgrade(now)
            self._request_blocks(now)
            self._request_backfill(now)
            self._consume_all()  # what this and the input before it did to the other sessions

    def _capacity(self, s: Session) -> bool:
        return s.is_open and len(s.inflight) < self._inflight_limit()

    def _inflight_limit(self) -> int:
        """Requests we keep waiting at one peer: a count, raised for small blocks so that about
        max_inflight_bytes_per_peer is in flight (capped below the peer's MAX_REMOTE_REQUESTS)."""
        cfg, feed = self.config, self.feed
        if feed.length == 0:
            return cfg.max_inflight_per_peer
        average = max(1, feed.byte_length // feed.length)
        return max(cfg.max_inflight_per_peer, min(128, cfg.max_inflight_bytes_per_peer // average))

    def _blocked(self, s: Session, key: int, now: float) -> bool:
        until = self._refusals.get((s, key))
        return until is not None and until > now

    def _request_upgrade(self, now: float) -> None:
        """Ask the peer with the longest signed length for its upgrade, alone: it is small, so it
        is answered at once even by a peer whose uplink is busy, and block requests need it first."""
        if self._upgrade is not None:
            return
        held = self.relay.upgrade_held_until()
        if held is not None and now < held:
            return  # our push parent brings the new length with the block
        feed = self.feed
        best: Session | None = None
        best_key: tuple[int, bool, bool, int, float] | None = None
        for s in self.sessions:
            if not (s.synced and s.remote_can_upgrade and s.remote_fork == feed.fork):
                continue
            if s.remote_length <= feed.length or not self._capacity(s) or self._blocked(s, -1, now):
                continue
            key = (
                s.remote_length,
                self._newest_from(s, now) is not None,
                not s.remote_is_writer,
                -len(s.inflight),
                self._rng.random(),
            )
            if best_key is None or key > best_key:
                best, best_key = s, key
        if best is None:
            return
        block = self._newest_from(best, now)
        out = best.request(now, block=block, upgrade_to=best.remote_length)
        out.check_at = now + self.config.request_timeout
        self._upgrade = (best, out)
        if block is not None:
            self._inflight[block] = [(best, out)]
            self._mark_checks(out)
            # Every newer block waits for this upgrade: look sooner whether it is late.
            out.check_at = min(out.check_at, now + 2 * self._answer_time)
            self.relay.note("req", now)

    def _newest_from(self, s: Session, now: float) -> int | None:
        """The newest block `s` announced, to ask for with the upgrade that reveals it (one round
        trip per hop instead of two: the upgrade, then the block): when we follow the live edge,
        lack it, have not asked anyone for it and `s` did not refuse it lately. None otherwise."""
        block = s.remote_length - 1
        if (
            not self.config.upgrade_with_block
            or not self.config.live
            or block < self.feed.length
            or block not in s.remote_has
            or block in self._inflight
            or self._blocked(s, block, now)
        ):
            return None
        return block

    def _request_blocks(self, now: float) -> None:
        feed = self.feed
        ready: list[Session] | None = None  # peers with room, found once a block needs one
        limit = 0
        scanned = 0
        revealed = self._revealed
        # While our push parent is on, blocks from its subscription start come by push: pull one
        # only if it has not come `grace` after it was revealed.
        hold_from, grace = self.relay.hold_blocks()
        hold_until: float | None = None
        inflight = self._inflight
        cfg = self.config
        # New blocks nobody near holds yet are asked of an early neighbour, to wait there.
        wait_from = feed.length - cfg.blocks(cfg.live_window) if cfg.wait_requests else feed.length
        for block in self._wanted():
            scanned += 1
            if scanned > cfg.scan_limit:
                break
            if feed.has(block):
                continue
            entries = inflight.get(block)
            waiting: list[tuple[Session, OutRequest]] = []
            if entries is not None:
                # Asked already, unless all we have is waiting requests at peers that still lack
                # the block: then one more may wait elsewhere, or all of them move to a peer that
                # announced the block meanwhile.
                if any(not o.wait for _, o in entries) or self._one_waiter_holds(block, entries):
                    continue
                waiting = entries
            elif hold_from is not None and block >= hold_from:
                at = revealed.get(block)
                if at is not None and now < at + grace:
                    if hold_until is None or at + grace < hold_until:
                        hold_until = at + grace
                    continue
            if ready is None:
                limit = self._inflight_limit()
                ready = self._ready(limit)
                if not ready:
                    return
            s = self._pick(block, now, ready)
            if s is not None:
                self._withdraw(block, waiting)
                asks, wait = [s], False
            elif block < wait_from or len(waiting) >= cfg.wait_peers:
                continue
            else:
                count = cfg.wait_peers - len(waiting)
                asks = self._pick_waits(block, now, ready, [t for t, _ in waiting], count)
                wait = True
            for s in asks:
                out = s.request(now, block=block, wait=wait)
                self.relay.note("req", now)
                inflight.setdefault(block, []).append((s, out))
                self._mark_checks(out)
                if len(s.inflight) >= limit:
                    ready.remove(s)
                    if not ready:
                        self._hold_until = hold_until
                        return
        if ready is None and hold_until != self._hold_until:
            if not self._ready(self._inflight_limit()):
                return  # with no peer to ask, a pass leaves the hold as it was
        self._hold_until = hold_until

    def _ready(self, limit: int) -> list[Session]:
        """Open sessions on our fork with room for another request."""
        fork = self.feed.fork
        return [
            s
            for s in self.sessions
            if s.is_open and len(s.inflight) < limit and s.remote_fork == fork
        ]

    def _count_unavailable(self) -> int:
        """Wanted blocks that no neighbour holds (for stats)."""
        feed, count = self.feed, 0
        for scanned, block in enumerate(self._wanted()):
            if scanned >= self.config.scan_limit:
                break
            if not feed.has(block) and not any(block in t.remote_has for t in self.sessions):
                count += 1
        return count

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

    def _one_waiter_holds(self, block: int, entries: list[tuple[Session, OutRequest]]) -> bool:
        """Whether a peer keeping one of our waiting requests for `block` announced it: its
        answer is coming, so our waiting requests at the others are cancelled."""
        kept = next((o for t, o in entries if block in t.remote_has), None)
        if kept is None:
            return False
        self._withdraw(block, entries, kept)
        return True

    def _withdraw(
        self, block: int, entries: list[tuple[Session, OutRequest]], kept: OutRequest | None = None
    ) -> None:
        """Cancel and forget these requests for `block`, all but `kept`."""
        for t, o in entries:
            if o is not kept:
                t.cancel(o)
                self._forget(block, t, o)

    def _pick_waits(
        self, block: int, now: float, ready: list[Session], waiting: list[Session], count: int
    ) -> list[Session]:
        """The peers to ask for a block nobody near holds yet, to wait for it there: the `count`
        that usually get new blocks earliest, among those with room that did not refuse it
        lately and do not keep a wait of ours for it already; random among equals. (The
        broadcaster holds every block it announced: `_pick` asks it, and only once it refused
        does the block wait elsewhere.)"""
        lead = self.relay.lead
        keyed: list[tuple[float, float, Session]] = []
        for s in ready:
            if s in waiting or self._blocked(s, block, now) or self._blocked(s, WAIT_KEY, now):
                continue
            keyed.append((-lead(s), self._rng.random(), s))
        keyed.sort(key=lambda k: (k[0], k[1]))
        return [s for _, _, s in keyed[:count]]

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

    # ------------------------------------------------------------ backfill (core.backfill)

    def _neighbour_runs(self) -> list[list[tuple[int, int]]]:
        """What each open non-broadcaster neighbour announced it holds."""
        return [s.remote_has.runs() for s in self.sessions if s.is_open and not s.remote_is_writer]

    def _request_backfill(self, now: float) -> None:
        """History the swarm holds fewest copies of, after everything else was asked for, paced
        and capped by the Backfill policy, one request per peer, none while a request of ours is
        late; peers answer history only when nothing else waits for their uplink
        (core.admission), so the live edge does not wait behind it."""
        plan = self.backfill
        if not plan.fetch or plan.inflight(self._inflight.__contains__) >= plan.max_inflight:
            return
        if any(now >= out.check_at for e in self._inflight.values() for _, out in e):
            return  # a request of ours is late: the swarm around us has no capacity to spare
        feed, fork = self.feed, self.feed.fork
        busy = {t for b in plan.blocks for t, _ in self._inflight.get(b, ())}
        # The broadcaster's uplink carries the first copy of each new block: history waits until
        # that copy is out (we or a viewer neighbour hold the newest block).
        newest = feed.length - 1
        writer_ok = feed.has(newest) or any(
            newest in s.remote_has for s in self.sessions if not s.remote_is_writer
        )
        ready = [
            s
            for s in self.sessions
            if self._capacity(s)
            and s.remote_fork == fork
            and s not in busy
            and (writer_ok or not s.remote_is_writer)
        ]
        if not ready:
            return
        candidates = plan.choose(
            now,
            feed.length,
            feed.present_ranges(),
            self._neighbour_runs(),
            [s.remote_has.runs() for s in self.sessions if s.is_open],
            self._inflight.__contains__,
        )
        placed = False
        for block in candidates:
            s = self._pick(block, now, ready)
            if s is None:
                continue
            out = s.request(now, block=block)
            self._inflight[block] = [(s, out)]
            self._mark_checks(out)
            plan.sent(block, now, self.config.block_duration)
            placed = True
            ready.remove(s)
            if not ready or not plan.room():
                return
        if candidates and not placed:
            plan.blocked(now, self.config.busy_backoff)  # the holders refused or are busy

    @property
    def inflight_blocks(self) -> int:
        """Block requests out now."""
        return sum(len(e) for e in self._inflight.values())

    def nowhere(self, end: int) -> list[tuple[int, int]]:
        """Runs of blocks below `end` that we lack and no open neighbour announced holding."""
        holders = [s.remote_has.runs() for s in self.sessions if s.is_open]
        return unavailable_runs(min(end, self.feed.length), self.feed.present_ranges(), holders)

    def holes(self, last_media: int) -> list[tuple[int, int]]:
        """Runs of blocks held by no one we know (runs of `nowhere`) that a media block we or an
        open neighbour hold follows (one at most `last_media`): playback goes on at a hole's end.
        A run up to the newest block is no hole (it may be only slow). The tab's player
        (web/player.js _goesOnAt) has the same rule; the caller decides how long a run must stay
        one before it counts (the neighbours' announcements arrive after they connect)."""
        return [(start, end) for start, end in self.nowhere(last_media + 1) if end <= last_media]

    def _backfill_timer(self, best: float | None) -> float | None:
        wake = None if self.feed.writable else self.backfill.wake_at(self._now)
        return wake if wake is not None and (best is None or wake < best) else best

    def safety(self) -> Safety:
        """How many copies of each block our neighbours (and we, as a viewer) hold."""
        own = None if self.feed.writable else self.feed.present_ranges()
        return self.backfill.safety(self.feed.length, self._neighbour_runs(), own)

    def evictions(self, over: int, size: Callable[[int], int]) -> list[int]:
        """Held blocks to drop to free `over` bytes (core.backfill.Backfill.evictions), never the
        header, the playback window or the live edge."""
        cfg, length = self.config, self.feed.length
        head = self._playhead
        edge = length - cfg.blocks(max(cfg.live_window, cfg.hot_window))
        window = cfg.blocks(cfg.playback_window)

        def protect(block: int) -> bool:
            if block == 0 or block >= edge:
                return True
            return head is not None and head - 1 <= block < head + window

        return self.backfill.evictions(
            over, self.feed.present_ranges(), self._neighbour_runs(), size, protect
        )

    def _safety_stats(self, out: ReplicationStats) -> None:
        safety = self.safety()
        out.keep = safety.target
        out.replicated_share = safety.share
        out.rarest_copies = safety.rarest
        out.unreplicated_blocks = safety.only_here_blocks
        out.backfill_requests = self.backfill.requested
        out.evicted = self.backfill.evicted

    def dropped(self, blocks: list[int]) -> None:
        """We no longer hold these blocks (evicted): tell every neighbour."""
        self.backfill.evicted += len(blocks)
        if blocks:
            self._archive_cursor = min(self._archive_cursor, min(blocks))
        for start, end in to_runs(blocks):
            for s in self.sessions:
                s.announce_drop(start, end)
        self._consume_all()

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
        hold = self._hold_until
        if hold is not None and hold > self._now and (best is None or hold < best):
            best = hold
        held = self.relay.upgrade_held_until()
        if (
            held is not None
            and held > self._now
            and self._upgrade is None
            and (best is None or held < best)
        ):
            best = held
        return self._backfill_timer(best)

    def handle_timer(self, now: float) -> None:
        self._now = now
        self._sample(now)
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
        if self._upgrade is not None and self._upgrade[1] is out:
            # A block asked for with its upgrade is late: the upgrade no longer waits for it (it
            # goes to another peer now; _apply copes with an answer that comes after that), and
            # the block is looked at again once that upgrade may have come.
            self._upgrade = None
            if block >= self.feed.length:
                out.check_at = now + self.config.busy_backoff
                return
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

    # ------------------------------------------------------------ what the sessions report

    def _answered(self, s: Session, ev: RequestAnswered) -> None:
        """A verified answer to one of our requests (Upgraded and BlockVerified follow it)."""
        out, now = ev.request, self._now
        if self._upgrade is not None and self._upgrade[1] is out:
            self._upgrade = None
        if out.block is not None:
            self._forget(out.block, s, out)
        if ev.ignored:
            return
        if ev.declined:
            assert out.block is not None
            self._refuse(s, out.block, now + self.config.busy_backoff)
        if ev.block_size is None:
            return
        size = ev.block_size
        if not ev.stale:
            self._answer_time += 0.1 * (now - out.sent_at - self._answer_time)
        if ev.duplicate:
            self.totals.duplicates += 1
            self.totals.duplicate_bytes += size
        elif s.remote_is_writer:
            self.totals.blocks_from_writer += 1
            self.totals.block_bytes_from_writer += size
        else:
            self.totals.blocks_from_peers += 1
            self.totals.block_bytes_from_peers += size

    def _refused(self, s: Session, out: OutRequest, busy: bool) -> None:
        cfg, now = self.config, self._now
        backoff = cfg.busy_backoff if busy else cfg.missing_backoff
        if busy and out.block is not None:
            self.relay.note("busy", now)
        if self._upgrade is not None and self._upgrade[1] is out:
            self._upgrade = None
            self._refuse(s, -1, now + backoff)
        if out.block is not None:
            self._forget(out.block, s, out)
            if out.wait and not busy:
                # It will not keep waiting requests (a peer without the extension, or one that
                # has enough of ours) or gave this one up: none to it for a while, but the block
                # may still be asked of it normally once it announces it.
                self._refuse(s, WAIT_KEY, now + backoff)
            else:
                self._refuse(s, out.block, now + backoff)

    def fail(self, error: Exception) -> None:
        """Our feed failed (a session reported LocalError, or the adapter's flush failed): stop
        for good. Every session closes; none counts as misbehaving."""
        self._stop(error)
        self._consume_all()

    def _stop(self, error: Exception) -> None:
        if self.failure is not None:
            return
        self.failure = error
        for s in list(self.sessions):
            s.close("replication stopped by a local error")

    def _session_closed(self, s: Session) -> None:
        self._stale = True
        if s in self.sessions:
            self.sessions.remove(s)
            self.uploads.peer_closed(s)
            self.relay.session_closed(s)
        closed, traffic = self._closed, s.stats
        closed.bytes_up += traffic.bytes_up
        closed.bytes_down += traffic.bytes_down
        closed.blocks_up += traffic.blocks_up
        closed.block_bytes_up += traffic.block_bytes_up
        for block, entries in list(self._inflight.items()):
            for t, out in entries:
                if t is s:
                    self._forget(block, t, out)
        if self._upgrade is not None and self._upgrade[0] is s:
            self._upgrade = None
        for key in [k for k in self._refusals if k[0] is s]:
            del self._refusals[key]

    # ------------------------------------------------------------ stats

    def stats(self, now: float) -> ReplicationStats:
        """What this node has replicated so far, with byte rates sampled once a second."""
        self._sample(now)
        snapshot = self._snapshot()
        snapshot.up_rate, snapshot.down_rate = self._rates.rates
        self._relay_stats(snapshot, now)
        return snapshot

    def _relay_stats(self, out: ReplicationStats, now: float) -> None:
        relay = self.relay
        out.pushes_sent = relay.stats.pushes_sent
        out.pushes_received = relay.stats.pushes_received
        out.push_children = relay.children
        out.push_parent = relay.parent is not None and relay.parent.sub_state == "on"
        out.parent_switches = relay.stats.parent_switches
        out.swarm_short = relay.swarm_short(now, self.uploads.over_budget_at)
        if self.feed.writable:
            samples = self._appended
            if len(samples) >= 2 and samples[-1][1] > samples[0][1]:
                rate = (samples[-1][1] - samples[0][1]) / max(samples[-1][0] - samples[0][0], 1e-9)
                out.upload_capacity_ratio = round(out.up_rate / rate, 3)
        elif out.down_rate > 0:
            out.upload_capacity_ratio = round(out.up_rate / out.down_rate, 3)

    def _sample(self, now: float) -> None:
        if self._rates.due(now):
            up, down = self._traffic()
            self._rates.sample(now, up, down)

    def _traffic(self) -> tuple[int, int]:
        up, down = self._closed.bytes_up, self._closed.bytes_down
        for s in self.sessions:
            up += s.stats.bytes_up
            down += s.stats.bytes_down
        return up, down

    def _snapshot(self) -> ReplicationStats:
        t, closed = self.totals, self._closed
        out = ReplicationStats(
            bytes_up=closed.bytes_up,
            bytes_down=closed.bytes_down,
            blocks_up=closed.blocks_up,
            block_bytes_up=closed.block_bytes_up,
            blocks_from_writer=t.blocks_from_writer,
            blocks_from_peers=t.blocks_from_peers,
            block_bytes_from_writer=t.block_bytes_from_writer,
            block_bytes_from_peers=t.block_bytes_from_peers,
            duplicates=t.duplicates,
            duplicate_bytes=t.duplicate_bytes,
            rerequests=t.rerequests,
            timeouts=t.timeouts,
            uploads_refused=self.uploads.refused,
            writer_copies_alone=self.uploads.copies_alone,
            writer_copies_demanded=self.uploads.copies_demanded,
            peers_dropped=t.peers_dropped,
            inflight=sum(len(e) for e in self._inflight.values()),
            unavailable=self._count_unavailable(),
            peers=self.peers,
            writer_connected=self.writer_connected,
        )
        self._safety_stats(out)
        for s in self.sessions:
            traffic = s.stats
            out.bytes_up += traffic.bytes_up
            out.bytes_down += traffic.bytes_down
            out.blocks_up += traffic.blocks_up
            out.block_bytes_up += traffic.block_bytes_up
            out.neighbours.append(
                NeighbourStats(s.name, s.remote_is_writer, s.remote_length, replace(traffic))
            )
        return out
