"""One replication session with one peer, sans-IO, in the shape of aioquic's QuicConnection.

Bytes in (`receive`), data-channel messages out (`datagrams_to_send`), events out (`next_event`),
time always passed in. A Session parses and checks what its peer sends, matches answers to our
requests, verifies and applies them to the feed, and keeps what we know of that peer (length,
which blocks it holds, our requests to it, its requests to us) within fixed bounds. It knows
nothing of the scheduler: it emits events (which the scheduler.Replicator consumes) and asks a
small upload policy (core.admission) whether to answer a block request now. It never stores,
announces or serves a block that has not verified, never does I/O, and never blames the peer for
our own failures (a full disk is a LocalError, not a PeerMisbehaved).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol, Union

from streamer.core.compat import SLOTS
from streamer.core.errors import (
    BlockNotFoundError,
    FeedError,
    HandshakeFailed,
    ProofError,
    ProtocolViolation,
    WireError,
)
from streamer.core.feed import ApplyResult
from streamer.core.flat_tree import depth, full_roots, left_span, right_span
from streamer.core.handshake import Handshaker
from streamer.core.stats import PeerStats
from streamer.core.wire import (
    MAX_CHUNK,
    PUSH_REQUEST_ID,
    Bitfield,
    Cancel,
    Data,
    Extension,
    Framer,
    Message,
    NoData,
    Range,
    Reassembler,
    Request,
    RequestBlock,
    RequestUpgrade,
    Subscribe,
    Sync,
    Unwant,
    Want,
    decode_message,
    encode_message,
)

__all__ = [
    "BlockVerified",
    "Event",
    "FeedLike",
    "HandshakeComplete",
    "LocalError",
    "NO_DATA_BUSY",
    "NO_DATA_MISSING",
    "OutRequest",
    "PeerMisbehaved",
    "Pushed",
    "RangeSet",
    "RemoteSynced",
    "RequestAnswered",
    "RequestRefused",
    "Session",
    "SubscribeAsked",
    "SubscriptionChanged",
    "UploadPolicy",
    "Upgraded",
    "is_local_error",
]

# NoData reasons (our own codes; hypercore peers send none, which reads as NO_DATA_MISSING).
NO_DATA_MISSING = 0  # we do not hold what was asked, or cannot prove it
NO_DATA_BUSY = 1  # we hold it but our upload queue is full: ask someone else, or again later

MAX_CONTROL_MESSAGES = 4096  # queued small messages to one peer; more means it stopped reading
MAX_REMOTE_REQUESTS = 256  # unanswered requests a peer may have with us before it is dropped
MAX_REMOTE_RANGES = 1024  # disjoint runs remembered of a peer's blocks; more are forgotten
MAX_BITFIELD_WORDS = 1024  # u32 words in one bitfield message: one hypercore page, 32 Ki blocks
MAX_BLOCK_INDEX = 1 << 48  # beyond any real stream; larger indexes are hostile
MAX_EVENTS = 1024  # unread events kept; the oldest are dropped (a closing event is also a state)
RECENT_CANCELLED = 256  # cancelled requests whose late answers we still verify and use
ANNOUNCED_MEMORY = 32  # newest single-block announcements of a peer whose arrival time we keep
MAX_PUSHES = 64  # pushes queued to one subscriber; older ones are dropped (it pulls them)
MAX_DEPTH = 64  # relays from the broadcaster on the push tree; this many or more means no path
# Waiting requests (a peer asks for a block we do not hold yet; we answer when it verifies here):
MAX_WAITING = 8  # kept per peer; more are answered missing at once
WAIT_AHEAD = 16  # only for blocks this close past our length (further: missing at once)
WAIT_BEHIND = 8  # given up (answered missing) when a block this many newer verifies first

_HANDSHAKE, _OPEN, _CLOSED = "handshake", "open", "closed"
LOCAL_ERROR_REASON = "replication stopped by a local error"



# ---------------------------------------------------------------- events


@dataclass(frozen=True, **SLOTS)
class HandshakeComplete:
    """The peer proved it knows the feed key; messages may flow."""

    remote_is_writer: bool  # the peer also proved it holds the writer's secret key


@dataclass(frozen=True, **SLOTS)
class RemoteSynced:
    """The peer announced its signed length (sent on open and whenever it grows)."""

    length: int
    fork: int


@dataclass(frozen=True, **SLOTS)
class BlockVerified:
    """A block from this peer verified and is stored (and announced to the other peers)."""

    index: int
    from_writer: bool  # the block came straight from the broadcaster


@dataclass(frozen=True, **SLOTS)
class Upgraded:
    """Our signed length grew to `length` through a proof from this peer."""

    length: int


@dataclass(frozen=True, **SLOTS)
class PeerMisbehaved:
    """The peer sent bytes that do not decode, an invalid proof, an unrequested block or broke the
    protocol. The session is closed already; the adapter must close the channel and ban the peer."""

    reason: str


@dataclass(frozen=True, **SLOTS)
class LocalError:
    """Our own node failed while handling this peer's traffic: the disk refused a read or write,
    or the feed is closed or damaged. The peer is not at fault. The replicator has stopped and
    closed every session; the adapter must stop replicating, report `error`, and ban nobody."""

    error: Exception


@dataclass(**SLOTS)
class OutRequest:
    """A request we sent and whose answer we still expect."""

    id: int
    block: int | None
    upgrade: bool
    fork: int
    sent_at: float
    check_at: float = 0.0  # when the replicator looks whether it is late
    late: bool = False  # already re-requested from another peer because this one was slow
    upgrade_from: int = -1  # with an upgrade: our length when we asked (where its proof starts)
    wait: bool = False  # asked before the peer held the block: it answers when it does


@dataclass(frozen=True, **SLOTS)
class RequestAnswered:
    """The peer answered one of our requests with data that verified and is applied (for the
    scheduler; comes before the Upgraded and BlockVerified it caused)."""

    request: OutRequest
    stale: bool  # it answers a request we had cancelled
    block_size: int | None = None  # bytes of the block it carried; None: no block came
    duplicate: bool = False  # we already held that block
    declined: bool = False  # we asked for a block, it sent only the upgrade: it is busy
    ignored: bool = False  # a stale upgrade that no longer applies: nothing was verified


@dataclass(frozen=True, **SLOTS)
class RequestRefused:
    """The peer declined one of our requests (NoData; for the scheduler)."""

    request: OutRequest
    busy: bool  # it holds the block but its uplink is full; else it lacks it


@dataclass(frozen=True, **SLOTS)
class SubscribeAsked:
    """The peer asks us to push it blocks >= start as they verify here (the replicator answers with
    accept_push or refuse_push); `start` None: it withdrew its subscription (already acknowledged)."""

    start: int | None


@dataclass(frozen=True, **SLOTS)
class SubscriptionChanged:
    """The peer answered our subscription: it pushes to us from now on (`on`), or refused or stopped."""

    on: bool


@dataclass(frozen=True, **SLOTS)
class Pushed:
    """A block the peer pushed to us arrived (for the scheduler; comes before the Upgraded and
    BlockVerified it caused). `duplicate`: we held it already; `unusable`: it was built for a length
    we no longer have and did not verify against ours, so it was dropped unread (not the peer's
    fault: our length moved while it was on the way)."""

    index: int
    size: int
    duplicate: bool = False
    unusable: bool = False


# Union, not |: this runs at import, and the core also runs on PyPy 3.9 (compat.py).
Event = Union[  # noqa: UP007
    HandshakeComplete,
    RemoteSynced,
    BlockVerified,
    Upgraded,
    PeerMisbehaved,
    LocalError,
    RequestAnswered,
    RequestRefused,
    SubscribeAsked,
    SubscriptionChanged,
    Pushed,
]


def is_local_error(exc: BaseException) -> bool:
    """True if exc is our own node's fault rather than the peer's: a disk error, or a feed that is
    closed, locked or damaged. BlockNotFoundError is not: hostile requests raise it."""
    if isinstance(exc, BlockNotFoundError):
        return False
    return isinstance(exc, (FeedError, OSError))


# ---------------------------------------------------------------- what a session needs of a feed


class FeedLike(Protocol):
    """The part of core.feed.Feed that replication uses (an in-memory feed works as well)."""

    @property
    def key(self) -> bytes: ...
    @property
    def writable(self) -> bool: ...
    @property
    def length(self) -> int: ...
    @property
    def fork(self) -> int: ...
    @property
    def byte_length(self) -> int: ...
    @property
    def contiguous_length(self) -> int: ...
    def has(self, index: int) -> bool: ...
    def missing_nodes(self, index: int) -> int: ...
    def present_ranges(self) -> list[tuple[int, int]]: ...
    def proof(self, request: Request) -> Data: ...
    def verify_and_apply(self, data: Data) -> ApplyResult: ...


class UploadPolicy(Protocol):
    """Whether to answer a peer's block request now (core.admission.UploadAdmission), shared by
    every session of one feed."""

    def admit(self, peer: Hashable, block: int, now: float) -> bool: ...
    def started(self) -> None: ...
    def dropped(self, peer: Hashable, block: int) -> None: ...
    def pushed(self, peer: Hashable, block: int) -> None: ...


class AdmitAll:
    """An UploadPolicy that answers every request (tests, tools)."""

    def admit(self, peer: Hashable, block: int, now: float) -> bool:
        return True

    def started(self) -> None:
        return None

    def dropped(self, peer: Hashable, block: int) -> None:
        return None

    def pushed(self, peer: Hashable, block: int) -> None:
        return None


# ---------------------------------------------------------------- remote bitfield


class RangeSet:
    """Disjoint half-open runs of block indexes, at most `limit` of them (extra runs are forgotten:
    we then merely do not know the peer holds those blocks)."""

    __slots__ = ("_starts", "_ends", "limit")

    def __init__(self, limit: int = MAX_REMOTE_RANGES) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.limit = limit

    def __contains__(self, index: int) -> bool:
        starts = self._starts
        if starts and index >= starts[-1]:
            # The common case for a live stream: at or past the start of the newest run.
            return index < self._ends[-1]
        i = bisect.bisect_right(starts, index) - 1
        return i >= 0 and index < self._ends[i]

    def __len__(self) -> int:
        return len(self._starts)

    def runs(self) -> list[tuple[int, int]]:
        ends = self._ends
        return [(start, ends[i]) for i, start in enumerate(self._starts)]

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        lo = bisect.bisect_left(ends, start)  # first run that ends at or after start
        hi = bisect.bisect_right(starts, end)  # runs before hi start at or before end
        if lo < hi:
            start = min(start, starts[lo])
            end = max(end, ends[hi - 1])
        elif len(starts) >= self.limit:
            return
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]

    def remove(self, start: int, end: int) -> None:
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        lo = bisect.bisect_right(ends, start)
        hi = bisect.bisect_left(starts, end)
        if lo >= hi:
            return
        keep_s: list[int] = []
        keep_e: list[int] = []
        if starts[lo] < start:
            keep_s.append(starts[lo])
            keep_e.append(start)
        if ends[hi - 1] > end:
            keep_s.append(end)
            keep_e.append(ends[hi - 1])
        starts[lo:hi] = keep_s
        ends[lo:hi] = keep_e
        if len(starts) > self.limit:
            del starts[self.limit :], ends[self.limit :]


# ---------------------------------------------------------------- session


class Session:
    """Replication with one peer over one ordered, reliable message channel.

    Create it with Replicator.add_session, which also consumes its events. Feed every received
    data-channel message to `Replicator.receive(session, data, now)`; send what
    `datagrams_to_send(now, max_bytes)` returns, in order. With a Handshaker the session sends our
    handshake first and takes none of the peer's messages until its handshake verified; without
    one, the connection already did the handshake and `remote_is_writer` says what it found.
    """

    def __init__(
        self,
        feed: FeedLike,
        uploads: UploadPolicy | None = None,
        *,
        name: str = "",
        chunk_size: int = MAX_CHUNK,
        handshake: Handshaker | None = None,
        remote_is_writer: bool = False,
    ) -> None:
        self.name = name
        self._feed = feed
        self._uploads_policy = uploads if uploads is not None else AdmitAll()
        self._handshake = handshake
        self.remote_is_writer = remote_is_writer
        self.remote_length = 0
        self.remote_fork = 0
        self.remote_can_upgrade = False
        self.synced = False  # a Sync arrived, so remote_length is meaningful
        self.remote_has = RangeSet()
        self.inflight: dict[int, OutRequest] = {}
        self._cancelled: OrderedDict[int, OutRequest] = OrderedDict()
        self._next_id = 1
        self._uploads: deque[Request] = deque()  # block requests admitted, answered when sent
        self._parked: list[Request] = []  # requests for blocks we lack, answered when they verify
        self._control: deque[bytes] = deque()
        self._outbox: deque[bytes] = deque()  # chunks of the message being sent
        self._framer = Framer(chunk_size)
        self._reassembler = Reassembler()
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._announced_length = 0
        # Live push (docs/wire.md#11-subscribe). Ours of the peer's pushes: None, "asked", "on", or
        # "closing" (we said stop; pushes may still arrive until its answer does).
        self.sub_state: str | None = None
        self.sub_start = 0
        # The peer's of ours: whether we push to it, from which block, and what waits to be pushed.
        self.push_on = False
        self.push_start = 0
        self._pushes: deque[int] = deque()
        self._pushed_length = 0  # the length our last push with an upgrade took the peer to
        # Relays between the broadcaster and the peer on the push tree (its notice; None: no path).
        self.remote_depth: int | None = None
        self._told_depth: int | None = -1  # what we last told the peer of our own (-1: nothing)
        # When the peer announced each of its newest single blocks (how early it gets new blocks).
        self.announced: dict[int, float] = {}
        self.stats = PeerStats()
        self.close_reason: str | None = None
        # Called with this session when it emits an event or closes (the replicator's dirty set).
        self.notify: Callable[[Session], None] | None = None
        self.changes = 0  # counts received messages that may change what we ask of the peer
        if handshake is not None:
            self._state = _HANDSHAKE
            self._queue(handshake.message)
        else:
            self._state = _OPEN
            self._on_open()

    # ------------------------------------------------------------ public surface

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def mid_message(self) -> bool:
        """Part of a message went out: the rest must follow before anything else on this channel."""
        return bool(self._outbox)

    @property
    def control_waiting(self) -> bool:
        """Small protocol messages (not block answers) wait to be sent."""
        return bool(self._control)

    @property
    def uploads_waiting(self) -> int:
        """Admitted block requests not yet serialized (they wait for `datagrams_to_send`)."""
        return len(self._uploads)

    def receive(self, data: bytes, now: float) -> None:
        """Take one data-channel message from the peer (Replicator.receive calls this)."""
        if self._state == _CLOSED:
            return
        self.stats.bytes_down += len(data)
        try:
            if self._state == _HANDSHAKE:
                assert self._handshake is not None
                self.remote_is_writer = self._handshake.receive(data)
                self._state = _OPEN
                self._on_open()
                return
            for raw in self._reassembler.feed(data):
                self._handle(decode_message(raw), now)
                if self._state == _CLOSED:
                    return
        except HandshakeFailed as e:
            self._misbehaved(f"bad handshake: {e}")
        except WireError as e:
            self._misbehaved(f"undecodable bytes: {e}")
        except (ProofError, ProtocolViolation) as e:
            self._misbehaved(str(e))
        except Exception as e:  # noqa: BLE001 - a peer must never be able to crash the node
            if is_local_error(e):
                self._local_error(e)
            else:
                self._misbehaved(
                    f"internal error on a message from the peer: {type(e).__name__}: {e}"
                )

    def datagrams_to_send(self, now: float, max_bytes: int | None = None) -> list[bytes]:
        """Data-channel messages (each <= 64 KiB) to send now, in order.

        With max_bytes (what the channel can take before its buffer is too full) it stops once that
        many bytes are out (the last chunk may overrun it); block responses wait here meanwhile, so
        the replicator can still cancel them or send them elsewhere.
        """
        out: list[bytes] = []
        if self._state == _CLOSED:
            return out
        budget = float("inf") if max_bytes is None else max_bytes
        while budget > 0:
            if not self._outbox and not self._next_message():
                break
            chunk = self._outbox.popleft()
            out.append(chunk)
            budget -= len(chunk)
        self.stats.bytes_up += sum(map(len, out))
        return out

    def wants_to_send(self) -> bool:
        """True if datagrams_to_send would return something now."""
        return self._state != _CLOSED and bool(
            self._outbox or self._control or self._pushes or self._uploads
        )

    @property
    def pushes_waiting(self) -> int:
        """Blocks queued to be pushed to the peer, not yet serialized."""
        return len(self._pushes)

    @property
    def oldest_push(self) -> int | None:
        """The oldest block queued to be pushed to the peer, if any."""
        return self._pushes[0] if self._pushes else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def close(self, reason: str | None = None) -> None:
        """Stop: nothing more is sent or accepted; our requests to the peer go elsewhere."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self.close_reason = reason
        if self.notify is not None:
            self.notify(self)
        self._outbox.clear()
        self._control.clear()
        self._pushes.clear()
        self.push_on = False
        self.sub_state = None
        for req in self._uploads:
            assert req.block is not None
            self._uploads_policy.dropped(self, req.block.index)
        self._uploads.clear()
        self._parked.clear()

    # ------------------------------------------------------------ used by the replicator

    def request(
        self,
        now: float,
        *,
        block: int | None = None,
        upgrade_to: int | None = None,
        wait: bool = False,
    ) -> OutRequest:
        """Send a request for a block and/or an upgrade of our length to `upgrade_to`. With
        `wait`, a peer that lacks the block keeps the request and answers when it has it."""
        feed = self._feed
        rid = self._next_id
        self._next_id += 1
        msg = Request(id=rid, fork=feed.fork, wait=wait)
        if block is not None:
            msg.block = RequestBlock(block, feed.missing_nodes(block))
        if upgrade_to is not None:
            msg.upgrade = RequestUpgrade(feed.length, upgrade_to - feed.length)
        out = OutRequest(rid, block, upgrade_to is not None, feed.fork, now, wait=wait)
        if upgrade_to is not None:
            out.upgrade_from = feed.length
        self.inflight[rid] = out
        self._queue(msg)
        return out

    def cancel(self, out: OutRequest) -> None:
        """Withdraw a request; a late answer to it is then accepted quietly, not as unrequested."""
        if self.inflight.pop(out.id, None) is None:
            return
        self._cancelled[out.id] = out
        while len(self._cancelled) > RECENT_CANCELLED:
            self._cancelled.popitem(last=False)
        if self._state == _OPEN:
            self._queue(Cancel(out.id))

    def verified(self, block: int, now: float) -> None:
        """`block` verified here (or we appended it): answer the peer's requests that waited for
        it, as if they came now (admission may still say busy), and give up those for blocks
        WAIT_BEHIND older that are still not here."""
        if not self._parked or self._state != _OPEN:
            return
        parked, self._parked = self._parked, []  # those answered now no longer count as waiting
        for req in parked:
            assert req.block is not None
            index = req.block.index
            if index == block:
                req.wait = False
                self._on_request(req, now)
            elif index <= block - WAIT_BEHIND:
                self._queue(NoData(req.id, NO_DATA_MISSING))
            else:
                self._parked.append(req)

    def announce(self, start: int, end: int) -> None:
        """Tell the peer we hold verified blocks start..end-1."""
        if self._state == _OPEN and start < end:
            self._queue(Range(start, end - start))

    def announce_drop(self, start: int, end: int) -> None:
        """Tell the peer we no longer hold blocks start..end-1 (evicted from a bounded store)."""
        if self._state == _OPEN and start < end:
            self._queue(Range(start, end - start, drop=True))

    def announce_length(self) -> None:
        """Tell the peer our signed length if it grew since we last did."""
        feed = self._feed
        if self._state != _OPEN or feed.length <= self._announced_length:
            return
        self._announced_length = feed.length
        self._queue(
            Sync(
                fork=feed.fork,
                length=feed.length,
                remote_length=self.remote_length,
                can_upgrade=True,
                uploading=True,
                downloading=not feed.writable,
            )
        )

    # ------------------------------------------------------------ live push (used by the replicator)

    def subscribe(self, start: int) -> None:
        """Ask the peer to push us every block >= start the moment it verifies there."""
        if self._state == _OPEN and self.sub_state is None:
            self.sub_state = "asked"
            self.sub_start = start
            self._queue(Subscribe(True, start))

    def unsubscribe(self) -> None:
        """Ask the peer to stop pushing; its pushes are accepted until it acknowledges."""
        if self._state == _OPEN and self.sub_state in ("asked", "on"):
            self.sub_state = "closing"
            self._queue(Subscribe(False))

    def accept_push(self, start: int) -> None:
        """Answer the peer's subscription: we push it blocks >= start from now on."""
        if self._state == _OPEN:
            self.push_on = True
            self.push_start = start
            self._queue(Subscribe(True, start, answer=True))

    def refuse_push(self) -> None:
        """Answer the peer's subscription with no, or stop pushing to it (shedding a subscriber)."""
        if self._state == _OPEN:
            self.push_on = False
            self._pushes.clear()
            self._queue(Subscribe(False, answer=True))

    def tell_depth(self, depth: int | None) -> None:
        """Tell the peer how many relays we are from the broadcaster (None: no push path)."""
        if self._state == _OPEN and depth != self._told_depth:
            self._told_depth = depth
            self._queue(Subscribe(False, depth=MAX_DEPTH if depth is None else depth))

    def push(self, block: int) -> bool:
        """Queue a verified block to be pushed to the subscribed peer (skipped at send time if the
        peer announced it meanwhile); False if the peer is not subscribed from that block."""
        if not self.push_on or block < self.push_start or block in self.remote_has:
            return False
        pushes = self._pushes
        if block in pushes:
            return False
        pushes.append(block)
        if len(pushes) > MAX_PUSHES:
            pushes.popleft()
        return True

    # ------------------------------------------------------------ internals

    def _queue(self, msg: Message) -> None:
        if self._state == _CLOSED:
            return
        if len(self._control) >= MAX_CONTROL_MESSAGES:
            self._misbehaved("the peer stopped reading: too many messages queued for it")
            return
        self._control.append(encode_message(msg))

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        if self.notify is not None:
            self.notify(self)

    def _next_message(self) -> bool:
        """Move the next whole message into the outbox as chunks; False if there is none."""
        if self._control:
            self._outbox.extend(self._framer.frame(self._control.popleft()))
            return True
        while self._pushes:
            push = self._build_push(self._pushes.popleft())
            if push is None:
                if self._state == _CLOSED:
                    return False
                continue
            self._outbox.extend(self._framer.frame(encode_message(push)))
            return True
        if self._uploads:
            req = self._uploads.popleft()
            msg = self._answer(req)
            if msg is None:
                return False
            self._outbox.extend(self._framer.frame(encode_message(msg)))
            return True
        return False

    def _answer(self, req: Request) -> Data | NoData | None:
        """Build the proof for an admitted request now (our state may have grown meanwhile);
        None when our own feed failed (this session has stopped)."""
        self._uploads_policy.started()
        try:
            data = self._feed.proof(req)
        except BlockNotFoundError:
            return NoData(req.id, NO_DATA_MISSING)
        except (FeedError, OSError) as e:
            self._local_error(e)
            return None
        if data.block is not None:
            self.stats.blocks_up += 1
            self.stats.block_bytes_up += len(data.block.value)
        return data

    def _build_push(self, block: int) -> Data | None:
        """The push of one block, built now for the length the peer last announced: with an upgrade
        to our length when the block lies beyond it. None when the peer holds it meanwhile, is on
        another fork or ahead of us (it will pull), or our feed failed."""
        feed = self._feed
        if block in self.remote_has or self.remote_fork != feed.fork or not feed.has(block):
            return None
        # What the peer holds once it read our earlier pushes (the channel is ordered, and it applies
        # a push's upgrade even when it held the block).
        known, length = max(self.remote_length, self._pushed_length), feed.length
        if known > length or block >= length:
            return None
        req = Request(id=PUSH_REQUEST_ID, fork=feed.fork)
        if block >= known:
            req.block = RequestBlock(block, 0)
            req.upgrade = RequestUpgrade(known, length - known)
        else:
            req.block = RequestBlock(block, _steps_to_root(block, known))
        try:
            data = self._feed.proof(req)
        except BlockNotFoundError:
            return None
        except (FeedError, OSError) as e:
            self._local_error(e)
            return None
        assert data.block is not None
        if data.upgrade is not None:
            self._pushed_length = length
        # Counted when it goes out, not when queued: a queued push may still be dropped.
        self._uploads_policy.pushed(self, block)
        self.stats.blocks_up += 1
        self.stats.block_bytes_up += len(data.block.value)
        self.stats.blocks_pushed += 1
        self.remote_has.add(block, block + 1)
        return data

    def _misbehaved(self, reason: str) -> None:
        if self._state == _CLOSED:
            return
        self._emit(PeerMisbehaved(reason))
        self.close(reason)

    def _local_error(self, error: Exception) -> None:
        """Our own feed failed: report it and stop. The replicator, reading LocalError, stops
        every other session too, since they share the feed. Nobody is dropped for misbehaving."""
        if self._state == _CLOSED:
            return
        self._emit(LocalError(error))
        self.close(LOCAL_ERROR_REASON)

    def _on_open(self) -> None:
        self._emit(HandshakeComplete(self.remote_is_writer))
        self.announce_length()
        if self._feed.length == 0:
            # An empty Sync still tells the peer we are here and want its length.
            self._queue(Sync(fork=self._feed.fork, length=0, remote_length=0))
        for start, end in self._feed.present_ranges()[:MAX_REMOTE_RANGES]:
            self.announce(start, end)

    def _handle(self, msg: Message, now: float) -> None:
        kind = type(msg)
        if kind is not Request and kind is not Cancel and kind is not Range and kind is not Sync:
            self.changes += 1  # what we know of the peer, or our requests to it, may have moved
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise ProtocolViolation(f"unexpected {type(msg).__name__} message after the handshake")
        handler(self, msg, now)

    def _on_sync(self, msg: Sync, now: float) -> None:
        if msg.length > MAX_BLOCK_INDEX:
            raise ProtocolViolation(f"announced length {msg.length} is beyond any stream")
        changed = (
            not self.synced or msg.length != self.remote_length or msg.fork != self.remote_fork
        )
        self.synced = True
        self.remote_length = msg.length
        self.remote_fork = msg.fork
        if changed or msg.can_upgrade != self.remote_can_upgrade:
            self.changes += 1
        self.remote_can_upgrade = msg.can_upgrade
        if changed:
            self._emit(RemoteSynced(msg.length, msg.fork))

    def _on_subscribe(self, msg: Subscribe, now: float) -> None:
        if msg.depth is not None:
            self.remote_depth = msg.depth if msg.depth < MAX_DEPTH else None
            return
        if msg.start > MAX_BLOCK_INDEX:
            raise ProtocolViolation(f"subscription from block {msg.start} is beyond any stream")
        if not msg.answer:
            if msg.on:
                self._emit(SubscribeAsked(msg.start))
                return
            # It stops: acknowledge, so it knows no push follows.
            was_on = self.push_on
            self.push_on = False
            self._pushes.clear()
            self._queue(Subscribe(False, answer=True))
            if was_on:
                self._emit(SubscribeAsked(None))
            return
        state = self.sub_state
        if msg.on:
            if state == "asked":
                self.sub_state = "on"
                self._emit(SubscriptionChanged(True))
        elif state is not None:
            self.sub_state = None
            if state != "closing":
                self._emit(SubscriptionChanged(False))

    def _on_push(self, msg: Data, now: float) -> None:
        """A block the peer pushed: accepted only while we are subscribed, and verified like any
        answer before it is stored, announced or pushed on."""
        if self.sub_state is None:
            raise ProtocolViolation("data pushed to us without a subscription")
        if msg.hash is not None or msg.seek is not None or msg.manifest is not None:
            raise ProtocolViolation("a push carries a hash, seek or manifest proof")
        block = msg.block
        if block is None:
            raise ProtocolViolation("a push carries no block")
        if block.index < self.sub_start:
            raise ProtocolViolation(f"pushed block {block.index} is before our subscription")
        feed = self._feed
        size = len(block.value)
        self.remote_has.add(block.index, block.index + 1)
        if msg.fork != feed.fork:
            self._emit(Pushed(block.index, size, unusable=True))
            return
        had = feed.has(block.index)
        up = msg.upgrade
        old_length = feed.length
        if up is not None and up.start != old_length:
            # Built for a length other than ours: we grew meanwhile, or the pusher counted on an
            # earlier push having upgraded us. Use the block alone if its proof fits our tree.
            if had:
                self.stats.duplicates += 1
                self._emit(Pushed(block.index, size, duplicate=True))
                return
            msg.upgrade = None
            up = None
        if had and up is None:
            self.stats.duplicates += 1
            self._emit(Pushed(block.index, size, duplicate=True))
            return
        if up is None and not _reaches_our_tree(feed, block.index, len(block.nodes)):
            # Its proof stops short of, or climbs past, the nodes we hold: it was built for
            # another length. Unusable, not hostile; anything that can be checked is checked.
            self._emit(Pushed(block.index, size, unusable=True))
            return
        feed.verify_and_apply(msg)
        if had:
            # A copy we held, but its upgrade verified and applied: the pusher counts on it.
            self.stats.duplicates += 1
            self._emit(Pushed(block.index, size, duplicate=True))
            if feed.length > old_length:
                self._emit(Upgraded(feed.length))
            return
        self.stats.blocks_down += 1
        self.stats.block_bytes_down += size
        self.stats.pushes_received += 1
        self._emit(Pushed(block.index, size))
        if feed.length > old_length:
            self._emit(Upgraded(feed.length))
        self._emit(BlockVerified(block.index, self.remote_is_writer))

    def _on_request(self, msg: Request, now: float) -> None:
        if len(self._uploads) + len(self._parked) >= MAX_REMOTE_REQUESTS:
            raise ProtocolViolation(
                f"the peer has more than {MAX_REMOTE_REQUESTS} requests waiting"
            )
        feed = self._feed
        if msg.hash is not None or msg.seek is not None or msg.manifest or msg.fork != feed.fork:
            self._queue(NoData(msg.id, NO_DATA_MISSING))
            return
        if msg.block is None and msg.upgrade is None:
            self._queue(NoData(msg.id, NO_DATA_MISSING))
            return
        if msg.block is not None and not feed.has(msg.block.index):
            if (
                msg.wait
                and msg.upgrade is None
                and len(self._parked) < MAX_WAITING
                and msg.block.index < feed.length + WAIT_AHEAD
            ):
                self._parked.append(msg)  # answered by `verified` when the block is here
            else:
                self._queue(NoData(msg.id, NO_DATA_MISSING))
            return
        if msg.block is not None and msg.upgrade is None and msg.block.index in self._pushes:
            # Its push is queued already: that is the answer; ask nobody else meanwhile.
            self._queue(NoData(msg.id, NO_DATA_BUSY))
            return
        if msg.block is not None and not self._uploads_policy.admit(self, msg.block.index, now):
            if msg.upgrade is None:
                self._queue(NoData(msg.id, NO_DATA_BUSY))
                return
            # Busy for the block, but the upgrade is small: answer that part alone.
            msg = Request(id=msg.id, fork=msg.fork, upgrade=msg.upgrade)
        if msg.block is None:
            try:
                self._queue(feed.proof(msg))
            except BlockNotFoundError:
                self._queue(NoData(msg.id, NO_DATA_MISSING))
            return
        self._uploads.append(msg)

    def _on_cancel(self, msg: Cancel, now: float) -> None:
        for req in self._parked:
            if req.id == msg.request:
                self._parked.remove(req)
                return
        for req in self._uploads:
            if req.id == msg.request:
                self._uploads.remove(req)
                assert req.block is not None
                self._uploads_policy.dropped(self, req.block.index)
                return

    def _on_data(self, msg: Data, now: float) -> None:
        if msg.request == PUSH_REQUEST_ID:
            self._on_push(msg, now)
            return
        out = self.inflight.pop(msg.request, None)
        stale = out is None
        if out is None:
            out = self._cancelled.pop(msg.request, None)
            if out is None:
                if 0 < msg.request < self._next_id:
                    return  # an answer to a request we gave up on long ago: ignore it unread
                raise ProtocolViolation(f"data for request {msg.request}, which we never sent")
        if msg.hash is not None or msg.seek is not None or msg.manifest is not None:
            raise ProtocolViolation(
                "data carries a hash, seek or manifest proof we never asked for"
            )
        if msg.block is not None and msg.block.index != out.block:
            raise ProtocolViolation(
                f"data carries block {msg.block.index}, which we did not ask it for"
            )
        if msg.upgrade is not None and not out.upgrade:
            raise ProtocolViolation("data carries an upgrade we did not ask for")
        if msg.block is None and msg.upgrade is None:
            raise ProtocolViolation("data answers nothing")
        if msg.fork != out.fork:
            raise ProtocolViolation(f"data is for fork {msg.fork}, we asked about fork {out.fork}")
        self._apply(out, msg, stale)

    def _apply(self, out: OutRequest, data: Data, stale: bool) -> None:
        """Verify an answer to one of our requests and store what it proves; ProofError (the peer
        is dropped) if invalid, or the feed's own error (LocalStorageError, ...) if our disk
        refused what verified."""
        feed = self._feed
        if stale and data.upgrade is not None and data.upgrade.start != feed.length:
            # The answer to an upgrade we gave up on; our length moved on, so it no longer applies.
            self._emit(RequestAnswered(out, stale, ignored=True))
            return
        had = out.block is not None and feed.has(out.block)
        old_length = feed.length
        if data.upgrade is not None and data.upgrade.start < old_length and data.block is None:
            # An upgrade answer overtaken by a push that upgraded us first: nothing to verify.
            self._emit(RequestAnswered(out, stale, ignored=True))
            return
        if data.upgrade is not None and data.upgrade.start == out.upgrade_from < old_length:
            # A block asked for with the upgrade that reveals it, answered after another answer
            # upgraded us (the scheduler asked elsewhere for the upgrade when this one was late).
            # Use the block alone if its proof fits our tree; else nothing was verified.
            assert data.block is not None
            if had or not _reaches_our_tree(feed, data.block.index, len(data.block.nodes)):
                self._emit(RequestAnswered(out, stale, ignored=True))
                return
            data.upgrade = None
        feed.verify_and_apply(data)
        size = None if data.block is None else len(data.block.value)
        declined = data.block is None and out.block is not None
        if declined:
            # The peer sent the upgrade but declined the block: it is busy.
            self.stats.refused += 1
        elif size is not None and had:
            self.stats.duplicates += 1
        elif size is not None:
            self.stats.blocks_down += 1
            self.stats.block_bytes_down += size
        self._emit(RequestAnswered(out, stale, size, had, declined))
        if feed.length > old_length:
            self._emit(Upgraded(feed.length))
        if data.block is not None and not had:
            self._emit(BlockVerified(data.block.index, self.remote_is_writer))

    def _on_no_data(self, msg: NoData, now: float) -> None:
        out = self.inflight.pop(msg.request, None)
        if out is None:
            # An answer to a request we cancelled (or a peer's confusion): harmless.
            self._cancelled.pop(msg.request, None)
            return
        self.stats.refused += 1
        busy = msg.reason == NO_DATA_BUSY
        if not busy and out.block is not None:
            self.remote_has.remove(out.block, out.block + 1)
        self._emit(RequestRefused(out, busy))

    def _on_range(self, msg: Range, now: float) -> None:
        end = msg.start + msg.length
        if end > MAX_BLOCK_INDEX:
            raise ProtocolViolation(f"range up to block {end} is beyond any stream")
        # Only a block we lack can change what we ask for: the announcements of blocks we hold
        # (most of them: every neighbour announces every block) leave the scheduler alone.
        if msg.length != 1 or msg.drop or not self._feed.has(msg.start):
            self.changes += 1
        if msg.drop:
            self.remote_has.remove(msg.start, end)
        else:
            self.remote_has.add(msg.start, end)
            if msg.length == 1:
                announced = self.announced
                announced[msg.start] = now
                if len(announced) > ANNOUNCED_MEMORY:
                    del announced[next(iter(announced))]

    def _on_bitfield(self, msg: Bitfield, now: float) -> None:
        if msg.start % 32 or len(msg.bitfield) > MAX_BITFIELD_WORDS:
            raise ProtocolViolation("bitfield message is misaligned or too large")
        if msg.start + 32 * len(msg.bitfield) > MAX_BLOCK_INDEX:
            raise ProtocolViolation("bitfield reaches beyond any stream")
        run_start = -1
        base = msg.start
        for n, word in enumerate(msg.bitfield):
            for bit in range(32):
                have = word >> bit & 1
                index = base + 32 * n + bit
                if have and run_start < 0:
                    run_start = index
                elif not have and run_start >= 0:
                    self.remote_has.add(run_start, index)
                    run_start = -1
        if run_start >= 0:
            self.remote_has.add(run_start, base + 32 * len(msg.bitfield))

    def _on_ignored(self, msg: Want | Unwant | Extension, now: float) -> None:
        # We announce every verified block unasked, so wants need no answer; no extensions yet.
        return


_HANDLERS: dict[type, Callable[[Session, Message, float], None]] = {
    Sync: Session._on_sync,  # type: ignore[dict-item]
    Request: Session._on_request,  # type: ignore[dict-item]
    Cancel: Session._on_cancel,  # type: ignore[dict-item]
    Data: Session._on_data,  # type: ignore[dict-item]
    NoData: Session._on_no_data,  # type: ignore[dict-item]
    Range: Session._on_range,  # type: ignore[dict-item]
    Bitfield: Session._on_bitfield,  # type: ignore[dict-item]
    Want: Session._on_ignored,  # type: ignore[dict-item]
    Unwant: Session._on_ignored,  # type: ignore[dict-item]
    Extension: Session._on_ignored,  # type: ignore[dict-item]
    Subscribe: Session._on_subscribe,  # type: ignore[dict-item]
}


def _reaches_our_tree(feed: FeedLike, block: int, nodes: int) -> bool:
    """Whether a proof of `nodes` nodes for `block`, without an upgrade, ends at a node we hold
    and can trust (so that failing to verify means the peer lied)."""
    if block >= feed.length:
        return False
    return feed.missing_nodes(block) <= nodes <= _steps_to_root(block, feed.length)


def _steps_to_root(block: int, length: int) -> int:
    """Proof nodes from a block's leaf up to the root of a `length`-block tree that covers it."""
    leaf = 2 * block
    for root in full_roots(2 * length):
        if left_span(root) <= leaf <= right_span(root):
            return depth(root)
    raise BlockNotFoundError(f"block {block} is beyond length {length}")
