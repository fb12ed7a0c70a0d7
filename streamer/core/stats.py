"""The one shape of a node's stats, sans-IO: per-peer traffic, the replication snapshot, byte rates
sampled on a one-second tick, and the JSON that the viewer's /stats, its page and a broadcaster's
--stats file all show (each may add fields of its own role: encoder figures, the playhead).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from streamer.core.compat import SLOTS

__all__ = ["NeighbourStats", "NodeStats", "PeerStats", "RateMeter", "ReplicationStats"]

RATE_WINDOW_S = 3.0  # up/down rates are averaged over about this much recent time
RATE_TICK_S = 1.0  # rates are sampled at most this often, whoever reads them


@dataclass(**SLOTS)
class PeerStats:
    """Traffic with one peer (wire bytes include framing)."""

    bytes_up: int = 0
    bytes_down: int = 0
    blocks_up: int = 0
    blocks_down: int = 0
    block_bytes_up: int = 0
    block_bytes_down: int = 0
    duplicates: int = 0  # blocks this peer sent that we already had (after re-requests)
    refused: int = 0  # our block requests it declined (busy or missing)
    blocks_pushed: int = 0  # blocks we pushed to it (live push; counted in blocks_up too)
    pushes_received: int = 0  # blocks it pushed to us that verified (counted in blocks_down)


@dataclass(**SLOTS)
class NeighbourStats:
    """One open session: who, and the traffic with it."""

    name: str
    is_writer: bool
    remote_length: int
    traffic: PeerStats

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "is_writer": self.is_writer,
            "remote_length": self.remote_length,
            **asdict(self.traffic),
        }


@dataclass(**SLOTS)
class ReplicationStats:
    """One node's replication of one feed: totals over its life (closed sessions included), the
    neighbours now, and byte rates. `share_from_peers` is the share of downloaded block bytes that
    came from viewers rather than straight from the writer."""

    peers: int = 0  # neighbours with an open session
    writer_connected: bool = False
    bytes_up: int = 0
    bytes_down: int = 0
    up_rate: float = 0.0  # bytes/s
    down_rate: float = 0.0
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
    # A writer's answers outside its copy budget (core.admission): every answer to a peer with no
    # neighbour but the writer, and copies on credit for blocks asked for again and again.
    writer_copies_alone: int = 0
    writer_copies_demanded: int = 0
    peers_dropped: int = 0  # sessions closed for misbehaving
    inflight: int = 0  # our block requests out now
    unavailable: int = 0  # wanted blocks no neighbour holds: a sign to find other peers
    # How safe the stream is, as this node sees its neighbours (core.backfill): the copies a block
    # needs (`keep`, peers besides the broadcaster), the share of blocks that have them, the
    # rarest block's copies, and the blocks no neighbour holds (only here, or only the writer's).
    keep: int = 0
    replicated_share: float = 0.0
    rarest_copies: int = 0
    unreplicated_blocks: int = 0
    backfill_requests: int = 0  # history fetched for the swarm's sake (requests sent)
    evicted: int = 0  # blocks dropped from a bounded store
    # Live push (core.relay): blocks pushed to subscribers and received by push, subscribers now,
    # whether a push parent is set, and the short-swarm signals.
    pushes_sent: int = 0
    pushes_received: int = 0
    push_children: int = 0
    push_parent: bool = False
    parent_switches: int = 0
    # Viewers' uploads do not carry the stream: a writer refused copies over its --upload-budget in
    # the last 10 s; a viewer saw at least half of its recent block requests answered busy.
    swarm_short: bool = False
    # Upload over the last few seconds divided by what it carries: a viewer's up/down bytes (below
    # 1 it gives back less than it takes), a writer's up bytes per appended byte (copies it sends).
    upload_capacity_ratio: float | None = None
    neighbours: list[NeighbourStats] = field(default_factory=list)

    @property
    def share_from_peers(self) -> float:
        down = self.block_bytes_from_writer + self.block_bytes_from_peers
        return round(self.block_bytes_from_peers / down, 4) if down else 0.0

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name != "neighbours":
                out[name] = getattr(self, name)
        out["share_from_peers"] = self.share_from_peers
        out["neighbours"] = [n.as_json() for n in self.neighbours]
        return out


@dataclass(**SLOTS)
class NodeStats:
    """The stats JSON of one node: its copy of the feed plus its replication."""

    key: str
    length: int
    blocks_have: int
    byte_length: int
    live_delay_s: float | None = None  # how far the newest block is behind the wall clock
    ended: bool = False
    swarm: ReplicationStats = field(default_factory=ReplicationStats)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "length": self.length,
            "blocks_have": self.blocks_have,
            "byte_length": self.byte_length,
            "live_delay_s": self.live_delay_s,
            "ended": self.ended,
            **self.swarm.as_json(),
        }


class RateMeter:
    """Byte rates over the last RATE_WINDOW_S, from samples taken at most once per RATE_TICK_S of
    the time passed in. Reading `rates` changes nothing, so readers never skew each other."""

    __slots__ = ("_samples", "_next")

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque()
        self._next = float("-inf")

    def due(self, now: float) -> bool:
        return now >= self._next

    def sample(self, now: float, up: int, down: int) -> None:
        samples = self._samples
        samples.append((now, up, down))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        self._next = now + RATE_TICK_S

    @property
    def rates(self) -> tuple[float, float]:
        """(up, down) in bytes/s; 0 until two samples exist."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        (t0, up0, down0), (t1, up1, down1) = self._samples[0], self._samples[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0
        return round((up1 - up0) / span, 1), round((down1 - down0) / span, 1)
