"""In-memory swarm for the simulator: feeds in RAM and a network on a virtual clock.

MemoryFeed is a real feed (real Merkle proofs, real signatures, real verification) kept in memory,
sharing identical block values between peers so a thousand copies of a stream fit in RAM.
SimNet moves the sessions' data-channel messages over links with latency through each node's
uplink of fixed bandwidth, driven by an event heap. It never sleeps and never touches a socket.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamer.core import crypto
from streamer.core.errors import BlockNotFoundError, ForkMismatchError
from streamer.core.feed import ApplyResult
from streamer.core.merkle import CompatVerifier, MemoryNodeStore, MerkleTree
from streamer.core.replication import Event, RangeSet, Session
from streamer.core.scheduler import Replicator
from streamer.core.wire import Data, Request


class VerifyCache:
    """Signature checks shared by every feed of a simulation: each signed root is checked with
    ed25519 once, then remembered (the same root reaches every viewer; the check itself is real)."""

    def __init__(self) -> None:
        self._ok: dict[tuple[bytes, int, int, bytes], bool] = {}

    def wrap(self, verifier: CompatVerifier) -> _CachedVerifier:
        return _CachedVerifier(verifier, self._ok)


class _CachedVerifier:
    def __init__(
        self, inner: CompatVerifier, ok: dict[tuple[bytes, int, int, bytes], bool]
    ) -> None:
        self._inner = inner
        self._ok = ok

    def sign(self, tree_hash: bytes, length: int, fork: int, secret_key: bytes) -> bytes:
        return self._inner.sign(tree_hash, length, fork, secret_key)

    def verify(self, tree_hash: bytes, length: int, fork: int, signature: bytes) -> bool:
        key = (tree_hash, length, fork, bytes(signature))
        ok = self._ok.get(key)
        if ok is None:
            ok = self._ok[key] = self._inner.verify(tree_hash, length, fork, signature)
        return ok


class MemoryFeed:
    """A feed held in memory with the FeedLike API of core.feed.Feed (no persistence).

    `pool` maps a block's leaf hash to its bytes, shared by all feeds of a simulation: a
    verified block is stored as a reference to the pooled copy instead of a copy of its own.
    """

    def __init__(
        self,
        key: bytes,
        *,
        secret_key: bytes | None = None,
        pool: dict[bytes, bytes] | None = None,
        cache: VerifyCache | None = None,
    ) -> None:
        self.key = key
        self._secret_key = secret_key
        self._nodes = MemoryNodeStore()
        verifier = CompatVerifier(key)
        self._tree = MerkleTree(
            self._nodes,
            verifier if cache is None else cache.wrap(verifier),  # type: ignore[arg-type]
        )
        self._blocks: dict[int, bytes] = {}
        self._present = RangeSet(limit=1 << 30)
        self._contiguous = 0
        self._pool = pool if pool is not None else {}
        self._byte_length = (0, 0)  # (signed length, its byte length)

    @property
    def writable(self) -> bool:
        return self._secret_key is not None

    @property
    def length(self) -> int:
        return self._tree.length

    @property
    def fork(self) -> int:
        return self._tree.fork

    @property
    def byte_length(self) -> int:
        # The sum over the roots, asked for on every scheduling pass: kept per signed length.
        length = self._tree.length
        if self._byte_length[0] != length:
            self._byte_length = (length, self._tree.byte_length)
        return self._byte_length[1]

    @property
    def contiguous_length(self) -> int:
        return self._contiguous

    def has(self, index: int) -> bool:
        return index in self._blocks

    def get(self, index: int) -> bytes:
        try:
            return self._blocks[index]
        except KeyError:
            raise BlockNotFoundError(f"block {index} is not here") from None

    def present_ranges(self) -> list[tuple[int, int]]:
        return self._present.runs()

    def missing_nodes(self, index: int) -> int:
        return self._tree.missing_nodes(index)

    def append(self, blocks: list[bytes]) -> int:
        assert self._secret_key is not None
        start = self._tree.length
        batch = self._tree.append(blocks, self._secret_key)
        self._nodes.put(batch.nodes)
        self._tree.commit(batch)
        for i, value in enumerate(blocks, start):
            self._store(i, value, crypto.leaf_hash(value))
        return self._tree.length

    def _store(self, index: int, value: bytes, leaf: bytes) -> None:
        self._blocks[index] = self._pool.setdefault(leaf, value)
        self._present.add(index, index + 1)
        while self._contiguous in self._blocks:
            self._contiguous += 1

    def proof(self, request: Request) -> Data:
        if request.block is not None and request.block.index not in self._blocks:
            raise BlockNotFoundError(f"block {request.block.index} is not here")
        data = self._tree.proof(request)
        if data.block is not None:
            data.block.value = self._blocks[data.block.index]
        return data

    def verify_and_apply(self, data: Data) -> ApplyResult:
        batch = self._tree.verify(data)
        if batch.reorg:
            raise ForkMismatchError("simulated writers never truncate")
        self._nodes.put(batch.nodes)
        new_block = batch.block is not None and batch.block not in self._blocks
        if batch.upgraded:
            self._tree.commit(batch)
        if new_block:
            assert batch.block is not None and batch.value is not None
            # The leaf is in the batch, or was held already (a proof stops at a node we hold).
            leaf = self._nodes.get_node(2 * batch.block)
            assert leaf is not None
            self._store(batch.block, batch.value, leaf.hash)
        return ApplyResult(batch.upgraded, self._tree.length, batch.block if new_block else None)


@dataclass(eq=False)
class SimNode:
    """One peer: a replicator, an uplink of `upload` bytes/s, and its open sessions."""

    name: str
    rep: Replicator
    upload: float
    on_event: Callable[[SimNode, Session, Event, float], None]
    links: dict[Session, tuple[SimNode, Session, float]] = field(default_factory=dict)
    alive: bool = True
    busy: bool = False
    current: Session | None = None  # the session whose message is going out
    timer_at: float | None = None  # when the replicator's timer is due
    wake_at: float | None = None  # the earliest wake-up on the event heap for it
    bytes_up: int = 0
    bytes_down: int = 0


class SimNet:
    """Nodes, links and an event heap; `run_until(t)` advances the virtual clock to t."""

    def __init__(self) -> None:
        self.now = 0.0
        # (when, sequence, action, its arguments): no closure per event
        self._heap: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self.nodes: list[SimNode] = []

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action, *args))

    def run_until(self, end: float) -> None:
        heap, pop = self._heap, heapq.heappop
        while heap and heap[0][0] <= end:
            item = pop(heap)
            self.now = item[0]
            item[2](*item[3:])
        self.now = end

    # ------------------------------------------------------------ topology

    def add_node(self, node: SimNode) -> SimNode:
        self.nodes.append(node)
        return node

    def connect(self, x: SimNode, y: SimNode, latency: float) -> None:
        """A channel between two nodes whose handshake already happened (as the swarm does it)."""
        a = x.rep.add_session(name=y.name, remote_is_writer=y.rep.feed.writable)
        b = y.rep.add_session(name=x.name, remote_is_writer=x.rep.feed.writable)
        x.links[a] = (y, b, latency)
        y.links[b] = (x, a, latency)
        self.touch(x)
        self.touch(y)

    def disconnect(self, x: SimNode, a: Session) -> None:
        y, b, _ = x.links.pop(a)
        y.links.pop(b, None)
        x.rep.remove_session(a)
        y.rep.remove_session(b)
        if x.current is a:
            x.current = None
        if y.current is b:
            y.current = None
        self.touch(y)

    def leave(self, x: SimNode) -> None:
        x.alive = False
        for a in list(x.links):
            self.disconnect(x, a)

    # ------------------------------------------------------------ moving bytes

    def touch(self, node: SimNode) -> None:
        """After anything happened at a node: read events, drop bad peers, send, rearm its timer."""
        if not node.alive:
            return
        rep = node.rep
        links = node.links
        while (item := rep.next_event()) is not None:
            s, event = item
            if s in links:
                node.on_event(node, s, event, self.now)
        # The replicator forgets a session once it closed (next_event read its close), so a
        # closed one among our links shows as a count mismatch: scan only then.
        if len(links) != len(rep.sessions):
            for s in list(links):
                if s.closed:
                    self.disconnect(node, s)
        if not node.busy:
            self._send(node)
        timer = rep.get_timer()
        if timer is not None and timer != node.timer_at:
            node.timer_at = timer
            self._wake(node, max(timer, self.now))

    def _wake(self, node: SimNode, when: float) -> None:
        """Have _timer run at `when` unless a wake-up at or before it is on the heap already: a
        timer that moves later waits for that one, so stale wake-ups do not pile up."""
        if node.wake_at is None or when < node.wake_at:
            node.wake_at = when
            self.at(when, self._timer, node, when)

    def _timer(self, node: SimNode, when: float) -> None:
        if node.wake_at == when:
            node.wake_at = None
        due = node.timer_at
        if not node.alive or due is None:
            return
        if due > self.now:
            self._wake(node, due)  # the timer moved later since this wake-up was set
            return
        node.timer_at = None
        node.rep.handle_timer(self.now)
        self.touch(node)

    @staticmethod
    def _pick(node: SimNode, wanting: list[Session]) -> Session | None:
        """The channel whose block answer goes out next, among those with something to send:
        the rest of the answer going out, then any other answer part-sent, then live pushes,
        then a new answer; one at a time, since finishing one copy before starting the next
        spreads a block fastest. New answers take turns by channel (the one after the channel
        served last), as separate connections share an uplink: always the first channel in link
        order let a busy node's later channels wait behind every new request of its first."""
        current = node.current
        if current is not None and current in wanting and current.mid_message:
            return current
        pushing = None
        for s in wanting:
            if s.mid_message:
                return s
            if pushing is None and s.pushes_waiting:
                pushing = s  # live pushes before answers to requests
        if pushing is not None:
            return pushing
        if current is not None and len(wanting) > 1:
            candidates = set(wanting)
            after = False
            for s in node.links:
                if s is current:
                    after = True
                elif after and s in candidates:
                    return s
        return wanting[0]

    def _send(self, node: SimNode) -> None:
        """Start the next transmission on an idle uplink. Small messages of any channel go first,
        all that wait in one go, channel by channel, each channel's batch arriving when its last
        message would have one by one (the others of the batch by so much later: at 5 Mbit/s,
        some 20 us per message); otherwise one chunk of a block answer."""
        wanting = [s for s in node.links if s.wants_to_send()]
        if not wanting:
            return
        now, upload, links = self.now, node.upload, node.links
        done = now
        for s in wanting:
            if not s.control_waiting or s.mid_message:
                continue
            batch: list[bytes] = []
            while s.control_waiting and not s.mid_message:
                chunks = s.datagrams_to_send(now, max_bytes=1)
                if not chunks:
                    break
                batch.extend(chunks)
            if batch:
                size = sum(len(c) for c in batch)
                node.bytes_up += size
                done += size / upload
                peer, remote, latency = links[s]
                self.at(done + latency, self._deliver, peer, remote, batch)
        if done == now:
            # Nothing small was waiting: one chunk of a block answer, if any still wants to go.
            wanting = [s for s in wanting if s.wants_to_send()]
            if not wanting:
                return
            s = self._pick(node, wanting)
            chunks = s.datagrams_to_send(now, max_bytes=1)
            if not chunks:
                return
            node.current = s
            peer, remote, latency = links[s]
            chunk = chunks[0]
            node.bytes_up += len(chunk)
            done = now + len(chunk) / upload
            self.at(done + latency, self._deliver, peer, remote, chunks)
        node.busy = True
        self.at(done, self._uplink_free, node)

    def _uplink_free(self, node: SimNode) -> None:
        node.busy = False
        self.touch(node)

    def _deliver(self, node: SimNode, s: Session, chunks: list[bytes]) -> None:
        if not node.alive or s not in node.links:
            return
        rep, now = node.rep, self.now
        for chunk in chunks:
            node.bytes_down += len(chunk)
            rep.receive(s, chunk, now)
        self.touch(node)
