"""Swarm simulator: one broadcaster and N viewers running the real sessions and replicators over an
in-memory network with a virtual clock, per-node upload bandwidth, latency, joins and departures.

Reports the broadcaster's upload ratio (bytes it uploaded / stream bytes) beside the client/server
baseline measured in the same run (N x the stream), each viewer's delay behind live (the time from
a block's append to its verification at the viewer), stalls and duplicate downloads, and draws the
delay over time to a PNG. Feeds are real (proofs, signatures, verification), kept in memory.

    python3 bench/simulate.py --viewers 1000 --seconds 60 --bitrate 1.0 --upload 5 --rtt 50
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from simnet import MemoryFeed, SimNet, SimNode  # noqa: E402

from streamer.core import crypto  # noqa: E402
from streamer.core.replication import BlockVerified, Event, PeerMisbehaved, Session  # noqa: E402
from streamer.core.scheduler import Replicator, ReplicatorConfig  # noqa: E402


@dataclass(eq=False)
class Viewer:
    node: SimNode
    joined: float
    first_block: int  # the live block when it joined: it plays from here
    arrived: dict[int, float] = field(default_factory=dict)
    left: float | None = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Simulation:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.net = SimNet()
        self.pool: dict[bytes, bytes] = {}
        keys = crypto.key_pair(bytes([args.seed % 256]) * 32)
        self.key = keys.public_key
        self.upload = args.upload * 1e6 / 8
        self.latency = args.rtt / 2000
        writer_feed = MemoryFeed(keys.public_key, secret_key=keys.secret_key, pool=self.pool)
        self.writer = self.net.add_node(
            SimNode("writer", Replicator(writer_feed, self._config()), self.upload, self._event)
        )
        self.viewers: list[Viewer] = []
        self.by_node: dict[SimNode, Viewer] = {}
        self.appended: list[float] = []  # append time of each block
        self.block_bytes: list[int] = []
        self.misbehaved = 0
        self.count = 0

    def _config(self) -> ReplicatorConfig:
        return ReplicatorConfig(
            seed=self.rng.randrange(1 << 30),
            block_duration=self.args.segment,
            live_window=4,
            playback_window=4,
        )

    # ------------------------------------------------------------ events from nodes

    def _event(self, node: SimNode, s: Session, event: Event, now: float) -> None:
        if isinstance(event, PeerMisbehaved):
            self.misbehaved += 1
        elif isinstance(event, BlockVerified):
            viewer = self.by_node.get(node)
            if viewer is not None:
                viewer.arrived.setdefault(event.index, now)
                rep = node.rep
                head = rep.playhead
                if head is not None and event.index == head:
                    while rep.feed.has(head):
                        head += 1
                    rep.set_playhead(head, now)

    # ------------------------------------------------------------ swarm dynamics

    def _alive(self) -> list[SimNode]:
        return [v.node for v in self.viewers if v.node.alive]

    def _dial(self, node: SimNode, count: int) -> None:
        """Connect to `count` random live viewers. A full one makes room by dropping a random
        neighbour that keeps enough others, so the graph stays random however viewers join
        (without that, late joiners could only reach each other and the swarm became a chain)."""
        alive = self._alive()
        linked = {peer for peer, _, _ in node.links.values()}
        for _ in range(4 * count):
            if count <= 0 or len(linked) + 1 >= len(alive):
                break
            peer = self.rng.choice(alive)
            if peer is node or peer in linked:
                continue
            if len(peer.links) >= self.args.max_peers and not self._evict(peer):
                continue
            self.net.connect(node, peer, self.latency * self.rng.uniform(0.8, 1.2))
            linked.add(peer)
            count -= 1

    def _evict(self, peer: SimNode) -> bool:
        sessions = [
            s
            for s, (other, _, _) in peer.links.items()
            if other is not self.writer and len(other.links) > self.args.min_peers
        ]
        if not sessions:
            return False
        self.net.disconnect(peer, self.rng.choice(sessions))
        return True

    def join(self) -> None:
        now = self.net.now
        self.count += 1
        feed = MemoryFeed(self.key, pool=self.pool)
        rep = Replicator(feed, self._config())
        node = self.net.add_node(SimNode(f"v{self.count}", rep, self.upload, self._event))
        first = len(self.appended)  # the next block to be appended: earlier ones are history
        rep.set_playhead(first, now)
        viewer = Viewer(node, now, first)
        self.viewers.append(viewer)
        self.by_node[node] = viewer
        self._dial(node, self.args.degree)
        writer_links = len(self.writer.links)
        if writer_links < self.args.writer_degree:
            self.net.connect(self.writer, node, self.latency)

    def leave(self) -> None:
        alive = self._alive()
        if not alive:
            return
        node = self.rng.choice(alive)
        self.by_node[node].left = self.net.now
        self.net.leave(node)
        for peer in self._alive():
            if len(peer.links) < self.args.min_peers:
                self._dial(peer, self.args.degree - len(peer.links))
        if len(self.writer.links) < self.args.writer_degree:
            self._dial(self.writer, self.args.writer_degree - len(self.writer.links))

    def append(self) -> None:
        size = int(self.args.bitrate * 1e6 / 8 * self.args.segment * self.rng.uniform(0.8, 1.2))
        value = self.rng.randbytes(size)
        self.appended.append(self.net.now)
        self.block_bytes.append(size)
        self.writer.rep.feed.append([value])  # type: ignore[attr-defined]
        self.writer.rep.feed_changed(self.net.now)
        self.net.touch(self.writer)

    # ------------------------------------------------------------ run

    def run(self) -> dict[str, object]:
        args, net = self.args, self.net
        join_window = min(args.join_window, args.seconds / 2)
        for _ in range(args.viewers):
            net.at(self.rng.uniform(0, join_window), self.join)
        blocks = int(args.seconds / args.segment)
        for i in range(blocks):
            net.at(args.segment * (i + 1), self.append)
        departures = int(args.churn * args.viewers)
        for _ in range(departures):
            when = self.rng.uniform(join_window, args.seconds)
            net.at(when, self.leave)
            net.at(when + 0.001, self.join)
        started = time.perf_counter()
        net.run_until(args.segment * blocks + args.drain)
        wall = time.perf_counter() - started
        return self.report(wall)

    def report(self, wall: float) -> dict[str, object]:
        args = self.args
        stream = sum(self.block_bytes)
        writer_up = self.writer.bytes_up
        delays: list[float] = []
        per_viewer_p95: list[float] = []
        missing = 0
        stalls = 0
        stall_time = 0.0
        # Blocks a viewer should have: appended after it joined and at least `drain` before the end.
        horizon = len(self.appended)
        for v in self.viewers:
            mine: list[float] = []
            end = horizon
            if v.left is not None:
                end = sum(1 for t in self.appended if t < v.left - 10 * args.segment)
            for i in range(v.first_block, end):
                t = v.arrived.get(i)
                if t is None:
                    missing += 1
                    continue
                mine.append(t - self.appended[i])
            if mine:
                delays.extend(mine)
                per_viewer_p95.append(percentile(mine, 0.95))
            s, st = self._stalls(v, end)
            stalls += s
            stall_time += st
        dupes = sum(n.rep.totals.duplicates for n in self.net.nodes)
        downloads = sum(
            n.rep.totals.blocks_from_peers + n.rep.totals.blocks_from_writer for n in self.net.nodes
        )
        viewer_up = [v.node.bytes_up / stream for v in self.viewers if v.left is None]
        return {
            "viewers": args.viewers,
            "blocks": len(self.appended),
            "stream_bytes": stream,
            "writer_upload_bytes": writer_up,
            "upload_ratio": writer_up / stream,
            "baseline_upload_bytes": args.viewers * stream,
            "baseline_ratio": float(args.viewers),
            "delay_p50": percentile(delays, 0.50),
            "delay_p95": percentile(delays, 0.95),
            "delay_max": max(delays) if delays else float("nan"),
            "viewer_p95_median": statistics.median(per_viewer_p95)
            if per_viewer_p95
            else float("nan"),
            "missing_blocks": missing,
            "stalls": stalls,
            "stall_seconds": stall_time,
            "duplicates": dupes,
            "duplicate_share": dupes / downloads if downloads else 0.0,
            "viewer_upload_ratio_mean": statistics.fmean(viewer_up) if viewer_up else 0.0,
            "viewer_upload_ratio_max": max(viewer_up) if viewer_up else 0.0,
            "misbehaved": self.misbehaved,
            "wall_seconds": wall,
        }

    def _stalls(self, v: Viewer, end: int) -> tuple[int, float]:
        """A player that starts `--buffer` seconds after the viewer's first block arrived and plays
        each block for one segment; a block that has not arrived when its turn comes is a stall."""
        seg = self.args.segment
        clock: float | None = None
        count, total = 0, 0.0
        for i in range(v.first_block, end):
            t = v.arrived.get(i)
            if t is None:
                break
            if clock is None:
                clock = t + self.args.buffer
            elif t > clock:
                count += 1
                total += t - clock
                clock = t
            clock += seg
        return count, total

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs, p50, p95, worst = [], [], [], []
        for i, t in enumerate(self.appended):
            ds = [v.arrived[i] - t for v in self.viewers if i in v.arrived and i >= v.first_block]
            if ds:
                xs.append(t)
                p50.append(percentile(ds, 0.5))
                p95.append(percentile(ds, 0.95))
                worst.append(max(ds))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.plot(xs, p50, label="p50")
        ax.plot(xs, p95, label="p95")
        ax.plot(xs, worst, label="max", alpha=0.6)
        ax.set_xlabel("stream time (s) at append")
        ax.set_ylabel("delay behind live (s)")
        ax.set_title(
            f"{self.args.viewers} viewers, {self.args.bitrate} Mbit/s stream, "
            f"{self.args.upload} Mbit/s uploads, {self.args.rtt:.0f} ms RTT"
        )
        ax.grid(alpha=0.3)
        ax.legend()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="stream duration simulated")
    parser.add_argument("--bitrate", type=float, default=1.0, help="stream Mbit/s")
    parser.add_argument("--upload", type=float, default=5.0, help="each node's upload Mbit/s")
    parser.add_argument("--rtt", type=float, default=50.0, help="round-trip time, ms")
    parser.add_argument("--segment", type=float, default=1.0, help="seconds of media per block")
    parser.add_argument("--degree", type=int, default=6, help="neighbours a joining viewer dials")
    parser.add_argument("--min-peers", type=int, default=4)
    parser.add_argument("--max-peers", type=int, default=12)
    parser.add_argument(
        "--writer-degree", type=int, default=4, help="neighbours of the broadcaster"
    )
    parser.add_argument("--join-window", type=float, default=10.0, help="viewers join during this")
    parser.add_argument(
        "--churn", type=float, default=0.05, help="share of viewers replaced mid-run"
    )
    parser.add_argument(
        "--buffer", type=float, default=2.0, help="player start-up buffer (s) for counting stalls"
    )
    parser.add_argument("--drain", type=float, default=10.0, help="seconds simulated after the end")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--png", type=Path, default=Path(__file__).parent / "out" / "simulate.png")
    parser.add_argument(
        "--keep",
        type=int,
        default=0,
        help="K > 0: run the swarm twice, without and with history backfill to K copies, and "
        "compare (bench/simkeep.py)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="with --keep: blocks appended before the first viewer joins (history nobody watched)",
    )
    args = parser.parse_args(argv)
    if args.keep:
        from simkeep import main as keep_main

        return keep_main(args)
    if args.viewers < 1 or args.seconds <= 0 or args.bitrate <= 0 or args.upload <= 0:
        parser.error("viewers, seconds, bitrate and upload must be positive")

    sim = Simulation(args)
    r = sim.run()
    print(
        f"swarm: {r['viewers']} viewers, {r['blocks']} blocks of {args.segment:g} s, "
        f"{args.bitrate:g} Mbit/s stream, {args.upload:g} Mbit/s uploads, {args.rtt:g} ms RTT, "
        f"churn {args.churn:.0%}, seed {args.seed}"
    )
    print(
        f"broadcaster upload: {r['writer_upload_bytes'] / 1e6:.1f} MB = "
        f"{r['upload_ratio']:.2f} x stream"
    )
    print(
        f"client/server baseline (same run): {r['baseline_upload_bytes'] / 1e6:.1f} MB = "
        f"{r['baseline_ratio']:.0f} x stream; swarm/baseline = "
        f"{r['upload_ratio'] / r['baseline_ratio']:.4f} "
        f"({r['baseline_ratio'] / r['upload_ratio']:.0f}x less)"
    )
    print(
        f"delay behind live: p50 {r['delay_p50']:.2f} s, p95 {r['delay_p95']:.2f} s, "
        f"max {r['delay_max']:.2f} s (median viewer's p95 {r['viewer_p95_median']:.2f} s)"
    )
    print(
        f"stalls (player with a {args.buffer:g} s start-up buffer): {r['stalls']} "
        f"({r['stall_seconds']:.1f} s total); blocks never received: "
        f"{r['missing_blocks']}; duplicate downloads: {r['duplicates']} "
        f"({r['duplicate_share']:.2%})"
    )
    print(
        f"viewer upload: mean {r['viewer_upload_ratio_mean']:.2f} x stream, "
        f"max {r['viewer_upload_ratio_max']:.2f} x; peers dropped as misbehaving: {r['misbehaved']}"
    )
    print(f"simulated {args.seconds + args.drain:g} s in {r['wall_seconds']:.1f} s wall")
    sim.plot(args.png)
    print(f"delay plot: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
