"""NetworkReplicator: runs the sans-IO replication (core.scheduler.Replicator and its Sessions) over
the verified channels of a Swarm, in the manner of aioquic's asyncio protocol.

Per neighbour it feeds received messages into a Session, sends what the Session has to send with
the channel's backpressure, arms one loop timer for the Replicator, and acts on events (a peer
that misbehaves is closed and banned; our own disk failing stops everything, bans nobody and is
kept in `failure` for the command to report); a worker thread makes what the Feed stored durable
about once a second. It never parses, stores or decides anything itself, and never touches the disk
on the loop: the Feed stores, the Replicator decides, the Sessions check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamer.core.errors import ChannelClosed, FeedError, LocalStorageError, SwarmcastError
from streamer.core.feed import Feed, FeedEvent
from streamer.core.replication import Event, LocalError, PeerMisbehaved, Session
from streamer.core.scheduler import PRIORITY_HIGH, Replicator, ReplicatorConfig
from streamer.core.stats import ReplicationStats
from streamer.core.storage import storage_error
from streamer.net.aio import call_on_loop, wait_event, within
from streamer.net.channel import MessageChannel
from streamer.net.swarm import Swarm

__all__ = ["NetworkReplicator", "PRIORITY_HIGH"]

log = logging.getLogger(__name__)

# What one pass takes out of a session before awaiting the channel: small enough that block
# answers still waiting in the session can be cancelled or sent elsewhere, large enough to keep
# the data channel busy (it buffers up to ~1 MiB itself before send() waits).
SEND_BUDGET = 256 * 1024
MIN_TIMER_STEP = 0.001  # a timer never fires sooner than this after being armed (no spinning)
# Verified blocks become durable within about this long: one flush (a few fsyncs) per interval
# while blocks arrive, instead of one per block.
FLUSH_INTERVAL_S = 1.0

EventListener = Callable[[Event], None]


@dataclass(slots=True)
class _Peer:
    conn: MessageChannel
    session: Session
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class NetworkReplicator:
    """Replicates `feed` with every neighbour `swarm` verifies, until stop().

    A writer (a writable feed) serves its appends; a reader fetches what the Replicator wants
    (playback window, live edge, explicit wants, all history with archive=True) and re-shares
    everything it holds; what it verified is flushed to disk in a worker thread about every
    FLUSH_INTERVAL_S and at stop() (wait_durable() waits for that). start() joins the swarm;
    stop() leaves it. Without a swarm, channels come from add_connection() (benchmarks, or a
    caller that dials peers itself).
    """

    def __init__(
        self,
        feed: Feed,
        swarm: Swarm | None,
        *,
        archive: bool = False,
        live: bool = True,
        config: ReplicatorConfig | None = None,
    ) -> None:
        config = config or ReplicatorConfig()
        config.archive = archive or config.archive
        config.live = live and config.live
        self.feed = feed
        self.swarm = swarm
        self.replicator = Replicator(feed, config)
        if swarm is not None:
            # A writer serves every block to a neighbour that can reach nobody else.
            self.replicator.uploads.neighbours_of = lambda s: swarm.neighbour_count(
                getattr(s, "name", "")
            )
        self._peers: dict[Session, _Peer] = {}
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._started = False
        self._stopping = False
        # The flusher: one task that runs Feed.flush in a worker thread, one flush at a time.
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_wanted = asyncio.Event()  # verified data arrived since the last flush began
        self._flush_now = asyncio.Event()  # stop(): skip the batching wait
        self._flush_done = asyncio.Condition()
        self._flushes_started = 0
        self._flushes_done = 0
        # Our own feed or disk failed: replication has stopped; the command reports this.
        self.failure: SwarmcastError | None = None
        self.failed = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Join the swarm and replicate with every neighbour from now on."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self.feed.add_listener(self._on_feed_event)
        self._flush_task = asyncio.ensure_future(self._flush_loop())
        if self.feed.flush_due:
            self._flush_wanted.set()
        if self.swarm is not None:
            self.swarm.on_connection(self.add_connection)
            await self.swarm.join()

    async def stop(self) -> None:
        """Leave the swarm, close every session and make what was verified durable. Idempotent."""
        if self._stopping or not self._started:
            return
        self._stopping = True
        with contextlib.suppress(ValueError):
            self.feed.remove_listener(self._on_feed_event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.swarm is not None:
            await self.swarm.leave()
        tasks = [t for p in self._peers.values() for t in p.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for peer in list(self._peers.values()):
            self.replicator.remove_session(peer.session)
        self._peers.clear()
        if self._flush_task is not None:
            self._flush_now.set()
            self._flush_wanted.set()
            # Shielded: a cancelled stop() must not cancel a flush half way through its wait.
            await asyncio.shield(self._flush_task)
        # Blocks verified while the last flush of the loop ran are not in it.
        if self.feed.flush_due:
            await self._flush()

    def raise_if_failed(self) -> None:
        """Raise `failure` (a one-line SwarmcastError) if our own feed or disk failed."""
        if self.failure is not None:
            raise self.failure

    async def __aenter__(self) -> NetworkReplicator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ what to fetch

    def want(self, start: int, end: int, priority: int = PRIORITY_HIGH) -> None:
        """Fetch blocks start..end-1 (they may lie beyond the current length)."""
        self.replicator.want(start, end, priority)
        self._reschedule()

    def set_playhead(self, block: int | None) -> None:
        """The block being played (None: not playing); the window after it comes first."""
        self.replicator.set_playhead(block, self._now())
        self._reschedule()

    def set_archive(self, archive: bool) -> None:
        """Also fetch all history, oldest first."""
        self.replicator.set_archive(archive)
        self._reschedule()

    def dropped(self, blocks: list[int]) -> None:
        """We evicted these blocks from our store: tell every neighbour they are gone."""
        if self._started and not self._stopping:
            self.replicator.dropped(blocks)
            self._pump()

    def add_listener(self, listener: EventListener) -> None:
        """Call listener(event) on the loop for each session event (BlockVerified, Upgraded, ...)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        self._listeners.remove(listener)

    # ------------------------------------------------------------ state

    @property
    def peers(self) -> int:
        """Neighbours with an open session."""
        return self.replicator.peers

    @property
    def writer_connected(self) -> bool:
        return self.replicator.writer_connected

    def remote_length(self) -> int:
        """The longest signed length any neighbour announced."""
        return max((s.remote_length for s in self._peers if s.is_open), default=0)

    def nowhere(self, end: int) -> list[tuple[int, int]]:
        """Runs of blocks below `end` we lack that no neighbour holds (Replicator.nowhere)."""
        return self.replicator.nowhere(end)

    def stats(self) -> ReplicationStats:
        """What this node replicated so far (Replicator.stats, rates sampled once a second)."""
        return self.replicator.stats(self._now())

    def stats_fields(self) -> dict[str, Any]:
        """The swarm fields of a stats snapshot, as JSON (a Broadcaster stats provider)."""
        return self.stats().as_json()

    async def wait_durable(self, timeout: float) -> bool:
        """Wait until everything the feed verified so far is on disk (a flush that began after
        this call has finished); False if `timeout` passed first. It flushes no sooner than usual."""
        need = self._flushes_started + (1 if self.feed.flush_due else 0)
        # Nodes-only proofs fire no feed event: make sure the flusher knows.
        if self.feed.flush_due:
            self._flush_wanted.set()
        async with self._flush_done:
            return await within(
                self._flush_done.wait_for(lambda: self._flushes_done >= need), timeout
            )

    async def wait_served(self, timeout: float) -> bool:
        """Wait until every neighbour holds our newest block (a writer lingers on this after its
        last append); False if `timeout` passed first or nobody is connected."""
        deadline = self._now() + timeout
        last = self.feed.length - 1
        while self._now() < deadline:
            open_sessions = [s for s in self._peers if s.is_open]
            if open_sessions and all(last in s.remote_has for s in open_sessions):
                return True
            # Announcements arrive as peer messages, which no single event here signals.
            await asyncio.sleep(0.1)
        return False

    # ------------------------------------------------------------ connections

    def add_connection(self, conn: MessageChannel) -> None:
        """Replicate over `conn`, whose feed-key handshake already verified (conn.is_writer says
        whether the peer proved it is the writer). Called by the swarm for each neighbour."""
        if self._stopping or not self._started:
            return
        if self.failure is not None:
            asyncio.ensure_future(conn.close("replication stopped"))
            return
        session = self.replicator.add_session(name=conn.peer_id, remote_is_writer=conn.is_writer)
        peer = _Peer(conn, session)
        self._peers[session] = peer
        peer.tasks.append(asyncio.ensure_future(self._send_loop(peer)))
        peer.tasks.append(asyncio.ensure_future(self._receive_loop(peer)))
        self._pump()

    async def _receive_loop(self, peer: _Peer) -> None:
        session, loop = peer.session, self._loop
        assert loop is not None
        try:
            async for data in peer.conn:
                self.replicator.receive(session, data, loop.time())
                self._pump()
                if session.closed:
                    break
                if peer.wake.is_set():
                    # Let the sender take what this message queued before the next one is read:
                    # an answer admitted a moment ago is otherwise still "waiting for our uplink"
                    # when the rest of a burst of requests arrives, and those are refused busy.
                    await asyncio.sleep(0)
        finally:
            self._drop(peer)

    async def _send_loop(self, peer: _Peer) -> None:
        session, conn, loop = peer.session, peer.conn, self._loop
        assert loop is not None
        try:
            while not session.closed:
                await peer.wake.wait()
                peer.wake.clear()
                while session.wants_to_send():
                    for chunk in session.datagrams_to_send(loop.time(), SEND_BUDGET):
                        await conn.send(chunk)
                    if session.has_events:  # answering found our own feed failing
                        self._pump()
        except ChannelClosed:
            pass
        finally:
            if conn.closed:
                self._drop(peer)

    def _drop(self, peer: _Peer) -> None:
        """The channel closed (or the session did): forget the peer; its requests go elsewhere."""
        if self._peers.pop(peer.session, None) is None:
            return
        self.replicator.remove_session(peer.session)
        current = asyncio.current_task()
        for task in peer.tasks:
            if task is not current:
                task.cancel()
        if not peer.conn.closed:
            asyncio.ensure_future(peer.conn.close(peer.session.close_reason or "replication ended"))
        if not self._stopping and self.failure is None:
            self._pump()

    # ------------------------------------------------------------ the pump

    def _now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    def _reschedule(self) -> None:
        if self._started and not self._stopping:
            self.replicator.schedule(self._now())
            self._pump()

    def _pump(self) -> None:
        """After any input: hand out events, wake the senders that have something, re-arm the
        timer. Any call into one session may have queued messages on the others."""
        while (item := self.replicator.next_event()) is not None:
            session, event = item
            peer = self._peers.get(session)
            if peer is not None or isinstance(event, LocalError):
                self._on_event(peer, event)
        for session, peer in list(self._peers.items()):
            if session.wants_to_send():
                peer.wake.set()
        self._arm_timer()

    def _on_event(self, peer: _Peer | None, event: Event) -> None:
        if isinstance(event, LocalError):
            self._fail(event.error)
        elif isinstance(event, PeerMisbehaved) and peer is not None:
            log.warning(
                "peer %s misbehaved (%s); dropping and banning it",
                peer.conn.peer_id[:8],
                event.reason,
            )
            if self.swarm is not None:
                self.swarm.ban(peer.conn.peer_id)
            asyncio.ensure_future(peer.conn.close(f"misbehaved: {event.reason}"))
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("replication listener %r failed", listener)

    def _fail(self, error: Exception) -> None:
        """Our feed or disk failed: stop replicating with everyone (their channels close, nobody
        is banned: they did nothing wrong) and wake whoever awaits `failed`."""
        if self.failure is not None:
            return
        if isinstance(error, SwarmcastError):
            self.failure = error
        elif isinstance(error, OSError):
            self.failure = storage_error(self.feed.directory, error)
        else:
            self.failure = LocalStorageError(f"the feed in {self.feed.directory} failed: {error}")
        # Reported once, by the command; a log line here would say it twice.
        log.debug("replication stopped by a local error: %s", self.failure)
        # A flush failure reaches the Replicator only from here.
        self.replicator.fail(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for peer in list(self._peers.values()):
            self._drop(peer)
        self.failed.set()

    def _arm_timer(self) -> None:
        loop = self._loop
        if loop is None or self._stopping or self.failure is not None:
            return
        when = self.replicator.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = loop.call_at(max(when, loop.time() + MIN_TIMER_STEP), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.replicator.handle_timer(self._now())
        self._pump()

    # ------------------------------------------------------------ feed changes

    def _on_feed_event(self, event: FeedEvent) -> None:
        # Blocks from peers are announced by the Replicator as they verify; here they only need
        # flushing. Our own appends need announcing (and are durable already). Either may come
        # from a worker thread.
        loop = self._loop
        if loop is None:
            return
        if not event.local:
            call_on_loop(loop, self._flush_wanted.set)
            return
        loop.call_soon_threadsafe(self._local_append)

    def _local_append(self) -> None:
        if self._stopping:
            return
        self.replicator.feed_changed(self._now())
        self._pump()

    # ------------------------------------------------------------ durability

    async def _flush_loop(self) -> None:
        """Flush about every FLUSH_INTERVAL_S while verified data arrives; once more at stop()."""
        while not self._stopping:
            await self._flush_wanted.wait()
            await wait_event(self._flush_now, FLUSH_INTERVAL_S)
            self._flush_wanted.clear()
            await self._flush()

    async def _flush(self) -> None:
        """One Feed.flush in a worker thread: its fsyncs must never stall the loop (every peer)."""
        if self.feed.closed:  # its owner closed it first (close() flushed it)
            return
        self._flushes_started += 1
        try:
            await asyncio.to_thread(self.feed.flush)
        except FeedError as exc:
            # Our disk refused: stop (the data stays due, and a crash merely forgets it); the
            # verified blocks already on disk stay consistent with the head.
            self._fail(exc)
        finally:
            self._flushes_done += 1
            async with self._flush_done:
                self._flush_done.notify_all()
