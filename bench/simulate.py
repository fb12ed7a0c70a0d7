"""Swarm simulator: one broadcaster and N viewers running the real sessions and replicators over an
in-memory network with a virtual clock, per-node upload bandwidth, latency, joins and departures.

Real-world peers: mixed uploads (`--upload-mix 0.3:0.5,0.5:2,0.2:5` = share:multiple of the stream
rate), a share of viewers behind symmetric NATs that connect only to reachable peers
(`--symmetric 0.2`), a flash crowd (`--flash 10`: all join within 10 s) and churn (`--churn`).
Blocks are parts (`--part`, by default the broadcaster's 0.1 s: bitrate x part bytes appended
every part seconds, every `--segment / --part`-th one independent, where a viewer starts;
`--part` equal to `--segment` gives one block per GOP, the format before parts).

Reports the broadcaster's upload ratio beside the client/server baseline (N x the stream), each
viewer's delay behind live (a block's append to its verification at the viewer) with the number of
relays it passed (hops), the per-hop delay and the theoretical floor (hops x (part / upload) + one
way delays), stalls, starved viewers and duplicates, and draws the delay over time to a PNG. Feeds
are real (proofs, signatures, verification), kept in memory. The defaults are the product's: pull
with waiting requests, no live push (`--push` turns it on; `--no-wait` turns waiting requests
off).

Cost: every data-channel message still goes through the real Session and Replicator (decode, the
proof checks, a scheduling pass), so CPU grows with viewers x simulated seconds x messages, and a
little faster than linearly (a bigger event heap, colder caches). What the simulator adds is kept
small: the small messages waiting on an idle uplink leave in one go, each channel's batch arriving
when its last message would have one by one (the others of the batch some 20 us late at 5 Mbit/s);
a node keeps at most one timer wake-up on the heap; signed roots are checked with ed25519 once
and the answer shared (VerifyCache; every feed still runs its own verification path). It prints
its wall and CPU time; `--progress S` prints the pace and the recent delay every S simulated
seconds, for runs too long to wait for; `--profile FILE` writes cProfile stats.

    python3 bench/simulate.py --viewers 1000 --seconds 60 --bitrate 1.0 --upload 5 --rtt 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from simnet import MemoryFeed, SimNet, SimNode, VerifyCache  # noqa: E402

from streamer.core import crypto  # noqa: E402
from streamer.core.replication import BlockVerified, Event, PeerMisbehaved, Session  # noqa: E402
from streamer.core.scheduler import Replicator, ReplicatorConfig  # noqa: E402
from streamer.media.parts import DEFAULT_PART  # noqa: E402

# A viewer is starved if it got less than half of what it watched or stalled more than a quarter
# of it, over a visit of at least this many seconds (a shorter visit with a stall while joining
# is counted apart).
STARVED_MIN_WATCH = 10.0


@dataclass(eq=False)
class Viewer:
    node: SimNode
    joined: float
    first_block: int  # the independent block it starts from (the first appended after it joined)
    arrived: dict[int, float] = field(default_factory=dict)
    hops: dict[int, int] = field(default_factory=dict)  # relays a block passed to get here
    left: float | None = None
    symmetric: bool = False  # behind a symmetric NAT: reaches only reachable peers


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
        self.stream_rate = args.bitrate * 1e6 / 8
        self.upload = args.upload * 1e6 / 8
        self.mix = (
            parse_mix(args.upload_mix) if args.upload_mix else [(1.0, args.upload / args.bitrate)]
        )
        writer_up = args.writer_upload if args.writer_upload else args.upload
        self.latency = args.rtt / 2000
        self.verified = VerifyCache()
        writer_feed = MemoryFeed(
            keys.public_key, secret_key=keys.secret_key, pool=self.pool, cache=self.verified
        )
        wcfg = self._config()
        wcfg.writer_extra_ratio = max(0.0, args.upload_budget - 1.0)
        self.writer = self.net.add_node(
            SimNode("writer", Replicator(writer_feed, wcfg), writer_up * 1e6 / 8, self._event)
        )
        self.symmetric: set[SimNode] = set()
        self.node_hops: dict[SimNode, dict[int, int]] = {self.writer: {}}
        self.viewers: list[Viewer] = []
        self.alive: list[SimNode] = []  # viewers online, in the order they joined
        self.by_node: dict[SimNode, Viewer] = {}
        self.appended: list[float] = []  # append time of each block
        self.block_bytes: list[int] = []
        self.misbehaved = 0
        self.count = 0
        self.hop_delays: dict[str, list[float]] = {}

    def _config(self) -> ReplicatorConfig:
        part = self.args.part
        return ReplicatorConfig(
            seed=self.rng.randrange(1 << 30),
            block_duration=part,  # the windows are seconds of media
            live_window=4 * self.args.segment,
            playback_window=4 * self.args.segment,
            hot_window=4 * self.args.segment,
            push=self.args.push,
            upgrade_with_block=self.args.upgrade_with_block,
            wait_requests=not self.args.no_wait,
            wait_peers=self.args.wait_peers,
        )

    def _viewer_upload(self) -> float:
        x = self.rng.random()
        for share, mult in self.mix:
            if x < share:
                return mult * self.stream_rate
            x -= share
        return self.mix[-1][1] * self.stream_rate

    # ------------------------------------------------------------ events from nodes

    def _event(self, node: SimNode, s: Session, event: Event, now: float) -> None:
        if isinstance(event, PeerMisbehaved):
            self.misbehaved += 1
            if self.args.verbose:
                print(f"{node.name} dropped {s.name}: {event.reason}", file=sys.stderr)
        elif isinstance(event, BlockVerified):
            viewer = self.by_node.get(node)
            if viewer is not None:
                link = node.links.get(s)
                source = self.node_hops.get(link[0]) if link is not None else None
                hops = 1 + (source.get(event.index, 0) if source is not None else 0)
                self.node_hops[node][event.index] = hops
                if self.args.verbose and link is not None:
                    src = self.by_node.get(link[0])
                    since = (
                        src.arrived.get(event.index)
                        if src is not None
                        else self.appended[event.index]
                        if event.index < len(self.appended)
                        else None
                    )
                    if since is not None:
                        kind = "push" if node.rep._pushed_block_seen else "pull"
                        self.hop_delays.setdefault(kind, []).append(now - since)
                viewer.arrived.setdefault(event.index, now)
                rep = node.rep
                head = rep.playhead
                if head is not None and event.index == head:
                    while rep.feed.has(head):
                        head += 1
                    rep.set_playhead(head, now)

    # ------------------------------------------------------------ swarm dynamics

    def _dial(self, node: SimNode, count: int) -> None:
        """Connect to `count` random live viewers. A full one makes room by dropping a random
        neighbour that keeps enough others, so the graph stays random however viewers join
        (without that, late joiners could only reach each other and the swarm became a chain)."""
        alive = self.alive
        linked = {peer for peer, _, _ in node.links.values()}
        blocked = node in self.symmetric
        for _ in range(4 * count):
            if count <= 0 or len(linked) + 1 >= len(alive):
                break
            peer = self.rng.choice(alive)
            if peer is node or peer in linked:
                continue
            if blocked and peer in self.symmetric:
                continue  # two symmetric NATs: no direct path (and no TURN in this swarm)
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
        feed = MemoryFeed(self.key, pool=self.pool, cache=self.verified)
        rep = Replicator(feed, self._config())
        node = self.net.add_node(SimNode(f"v{self.count}", rep, self._viewer_upload(), self._event))
        # The next independent block to be appended: earlier ones are history.
        every = self.independent_every
        first = -(-len(self.appended) // every) * every
        rep.set_playhead(first, now)
        viewer = Viewer(node, now, first)
        if self.rng.random() < self.args.symmetric:
            viewer.symmetric = True
            self.symmetric.add(node)
        self.viewers.append(viewer)
        self.alive.append(node)
        self.by_node[node] = viewer
        self.node_hops[node] = viewer.hops
        self._dial(node, self.args.degree)
        writer_links = len(self.writer.links)
        if writer_links < self.args.writer_degree:
            self.net.connect(self.writer, node, self.latency)

    @property
    def independent_every(self) -> int:
        return max(1, round(self.args.segment / self.args.part))

    def leave(self) -> None:
        alive = self.alive
        if not alive:
            return
        node = self.rng.choice(alive)
        self.by_node[node].left = self.net.now
        alive.remove(node)
        self.net.leave(node)
        for peer in alive:
            if len(peer.links) < self.args.min_peers:
                self._dial(peer, self.args.degree - len(peer.links))
        if len(self.writer.links) < self.args.writer_degree:
            self._dial(self.writer, self.args.writer_degree - len(self.writer.links))

    def append(self) -> None:
        size = int(self.stream_rate * self.args.part * self.rng.uniform(0.8, 1.2))
        value = self.rng.randbytes(size)
        self.appended.append(self.net.now)
        self.block_bytes.append(size)
        self.writer.rep.feed.append([value])  # type: ignore[attr-defined]
        self.writer.rep.feed_changed(self.net.now)
        self.net.touch(self.writer)

    # ------------------------------------------------------------ run

    def run(self) -> dict[str, object]:
        args, net = self.args, self.net
        join_window = min(args.flash or args.join_window, args.seconds / 2)
        for _ in range(args.viewers):
            net.at(self.rng.uniform(0, join_window), self.join)
        blocks = int(args.seconds / args.part)
        for i in range(blocks):
            net.at(args.part * (i + 1), self.append)
        departures = int(args.churn * args.viewers)
        for _ in range(departures):
            when = self.rng.uniform(join_window, args.seconds)
            net.at(when, self.leave)
            net.at(when + 0.001, self.join)
        started, cpu = time.perf_counter(), time.process_time()
        end = args.part * blocks + args.drain
        step = args.progress or end
        t = 0.0
        while t < end:
            t = min(end, t + step)
            net.run_until(t)
            if args.progress:
                self.progress(t, step, time.perf_counter() - started, time.process_time() - cpu)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        return self.report(wall, cpu)

    def progress(self, t: float, step: float, wall: float, cpu: float) -> None:
        """One line on stderr (--progress): the run's pace, and the delay of the blocks appended
        between 2 and 1 steps ago at the viewers online that watch them."""
        lo, hi = t - 2 * step, t - step
        blocks = [i for i, at in enumerate(self.appended) if lo <= at < hi]
        delays: list[float] = []
        missing = 0
        for v in self.viewers:
            if v.left is not None:
                continue
            for i in blocks:
                if i >= v.first_block:
                    got = v.arrived.get(i)
                    if got is None:
                        missing += 1
                    else:
                        delays.append(got - self.appended[i])
        print(
            f"[{t:5.1f} s simulated: {wall:7.1f} s wall, {cpu:7.1f} s CPU; {len(self.alive)} "
            f"online; blocks of {max(lo, 0):.0f}-{max(hi, 0):.0f} s: delay p50 "
            f"{percentile(delays, 0.5):.2f} s, p95 {percentile(delays, 0.95):.2f} s, "
            f"{missing} copies not there]",
            file=sys.stderr,
            flush=True,
        )

    def report(self, wall: float, cpu: float = float("nan")) -> dict[str, object]:
        args = self.args
        part = args.part
        stream = sum(self.block_bytes)
        writer_up = self.writer.bytes_up
        delays: list[float] = []
        hops: list[int] = []
        per_hop: list[float] = []
        per_viewer_p95: list[float] = []
        missing = 0
        stalls = 0
        stall_time = 0.0
        watch_time = 0.0
        starved = 0  # watched at least STARVED_MIN_WATCH and got too little of it
        short_stalled = 0  # shorter visits that stalled as much (mostly a stall while joining)
        # Blocks a viewer should have: appended after it joined, and (if it left) a while before.
        horizon = len(self.appended)
        for v in self.viewers:
            mine: list[float] = []
            end = horizon
            if v.left is not None:
                end = sum(1 for t in self.appended if t < v.left - 10.0)
            got = 0
            for i in range(v.first_block, end):
                t = v.arrived.get(i)
                if t is None:
                    missing += 1
                    if args.verbose:
                        print(
                            f"{v.node.name} never got block {i} of {horizon} "
                            f"(joined {v.joined:.1f}, left {v.left}, alive {v.node.alive})",
                            file=sys.stderr,
                        )
                    continue
                got += 1
                d = t - self.appended[i]
                mine.append(d)
                h = v.hops.get(i, 1)
                hops.append(h)
                per_hop.append(d / h)
            if mine:
                delays.extend(mine)
                per_viewer_p95.append(percentile(mine, 0.95))
            s, st = self._stalls(v, end)
            stalls += s
            stall_time += st
            watched = max(0, end - v.first_block) * part
            watch_time += watched
            if watched > 0 and (got < 0.5 * (end - v.first_block) or st > 0.25 * watched):
                if watched >= STARVED_MIN_WATCH:
                    starved += 1
                else:
                    short_stalled += 1
        dupes = sum(n.rep.totals.duplicates for n in self.net.nodes)
        downloads = sum(
            n.rep.totals.blocks_from_peers + n.rep.totals.blocks_from_writer for n in self.net.nodes
        )
        viewer_up = [v.node.bytes_up / stream for v in self.viewers if v.left is None]
        # What the same viewers downloaded: over the swarm, uploads are the downloads less the
        # broadcaster's share, so viewers who joined late (and download less than the stream)
        # hold the mean upload below 1x however much of their uplink they give.
        viewer_down = [v.node.bytes_down / stream for v in self.viewers if v.left is None]
        # The most the same viewers could have uploaded on average: every byte any viewer (those
        # who left too) downloaded that the broadcaster did not send. A mean upload above it is
        # impossible whatever the scheduler does; only more downloads (duplicates) would raise it.
        upload_ceiling = (
            (sum(v.node.bytes_down for v in self.viewers) - writer_up) / len(viewer_up) / stream
            if viewer_up
            else 0.0
        )
        # The same against what each viewer watched (the blocks appended while it was online): a
        # viewer that joined halfway and uploaded half the stream carried its share (1.0x).
        viewer_share = [
            v.node.bytes_up / max(1, sum(self.block_bytes[v.first_block :]))
            for v in self.viewers
            if v.left is None and v.first_block < len(self.block_bytes)
        ]
        # The floor: each hop costs one part's transmission over the sender's uplink plus a one-way
        # delay (the writer's uplink for the first hop, the viewers' mean uplink after that).
        part_bytes = stream / max(1, len(self.block_bytes))
        tx_writer = part_bytes / self.writer.upload
        tx_viewer = part_bytes / statistics.fmean(v.node.upload for v in self.viewers)

        def floor(h: float) -> float:
            return tx_writer + max(0.0, h - 1) * tx_viewer + h * self.latency

        h50, h95 = (
            percentile([float(h) for h in hops], 0.5),
            percentile([float(h) for h in hops], 0.95),
        )
        wstats = self.writer.rep.stats(self.net.now)
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
            "hops_p50": h50,
            "hops_p95": h95,
            "hops_mean": statistics.fmean(hops) if hops else float("nan"),
            "per_hop_delay": statistics.fmean(per_hop) if per_hop else float("nan"),
            "floor_p50": floor(h50),
            "floor_p95": floor(h95),
            "tx_viewer": tx_viewer,
            "missing_blocks": missing,
            "stalls": stalls,
            "stall_seconds": stall_time,
            "stall_share": stall_time / watch_time if watch_time else 0.0,
            "starved": starved,
            "short_stalled": short_stalled,
            "duplicates": dupes,
            "duplicate_share": dupes / downloads if downloads else 0.0,
            "viewer_upload_ratio_mean": statistics.fmean(viewer_up) if viewer_up else 0.0,
            "viewer_upload_ratio_max": max(viewer_up) if viewer_up else 0.0,
            "viewer_download_ratio_mean": statistics.fmean(viewer_down) if viewer_down else 0.0,
            "viewer_upload_ceiling": upload_ceiling,
            "viewer_upload_of_watched_mean": statistics.fmean(viewer_share) if viewer_share else 0.0,
            "pushed_share": sum(n.rep.relay.stats.pushes_received for n in self.net.nodes)
            / downloads
            if downloads
            else 0.0,
            "writer_swarm_short": wstats.swarm_short,
            "misbehaved": self.misbehaved,
            "wall_seconds": wall,
            "cpu_seconds": cpu,
        }

    def _stalls(self, v: Viewer, end: int) -> tuple[int, float]:
        """A player that starts `--buffer` seconds after the viewer's first block arrived and plays
        each block for one part; a block that has not arrived when its turn comes is a stall."""
        part = self.args.part
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
            clock += part
        return count, total

    def relay_summary(self) -> None:
        """How the live-push tree looks at the end (for tuning; --verbose)."""
        alive = [v.node for v in self.viewers if v.node.alive]
        with_parent = sum(
            1
            for n in alive
            if n.rep.relay.parent is not None and n.rep.relay.parent.sub_state == "on"
        )
        children: dict[int, int] = {}
        for n in alive:
            c = n.rep.relay.children
            children[c] = children.get(c, 0) + 1
        totals: dict[str, int] = {}
        for n in self.net.nodes:
            for k, val in (
                vars(n.rep.relay.stats).items()
                if hasattr(n.rep.relay.stats, "__dict__")
                else ((f, getattr(n.rep.relay.stats, f)) for f in n.rep.relay.stats.__slots__)
            ):
                totals[k] = totals.get(k, 0) + val
        by_session: dict[Session, SimNode] = {}
        for n in self.net.nodes:
            for sess, (peer, _, _) in n.links.items():
                by_session[sess] = peer
        depths: dict[str, int] = {}
        for n in alive:
            d, cur, seen = 0, n, set()
            while True:
                p = cur.rep.relay.parent
                if p is None or p.sub_state != "on":
                    depths["none"] = depths.get("none", 0) + 1
                    break
                cur = by_session[p]
                d += 1
                if cur is self.writer:
                    depths[str(d)] = depths.get(str(d), 0) + 1
                    break
                if cur in seen:
                    depths["cycle"] = depths.get("cycle", 0) + 1
                    break
                seen.add(cur)
        print(f"push tree depth (to the broadcaster): {depths}")
        for kind, ds in sorted(self.hop_delays.items()):
            print(
                f"hop delay by {kind}: n {len(ds)}, p50 {percentile(ds, 0.5):.3f} s, "
                f"p95 {percentile(ds, 0.95):.3f} s, mean {statistics.fmean(ds):.3f} s"
            )
        print(
            f"relay: {with_parent}/{len(alive)} viewers have a push parent; children "
            f"{dict(sorted(children.items()))}; writer children {self.writer.rep.relay.children}; "
            f"{totals}"
        )

    def delay_series(self) -> dict[str, object]:
        """The delay behind live per appended block (p50, p95, max over viewers) and a title: what
        the plot draws, plain enough for JSON (a run without matplotlib hands it on)."""
        xs, p50, p95, worst = [], [], [], []
        for i, t in enumerate(self.appended):
            ds = [v.arrived[i] - t for v in self.viewers if i in v.arrived and i >= v.first_block]
            if ds:
                xs.append(t)
                p50.append(percentile(ds, 0.5))
                p95.append(percentile(ds, 0.95))
                worst.append(max(ds))
        title = (
            f"{self.args.viewers} viewers, {self.args.bitrate} Mbit/s stream, "
            f"{self.args.upload} Mbit/s uploads, {self.args.rtt:.0f} ms RTT"
        )
        return {"title": title, "t": xs, "p50": p50, "p95": p95, "max": worst}


def draw(series: dict, path: Path) -> None:
    """The delay-over-time plot of `delay_series` as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(series["t"], series["p50"], label="p50")
    ax.plot(series["t"], series["p95"], label="p95")
    ax.plot(series["t"], series["max"], label="max", alpha=0.6)
    ax.set_xlabel("stream time (s) at append")
    ax.set_ylabel("delay behind live (s)")
    ax.set_title(series["title"])
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(series: dict, path: Path) -> str:
    """Draw the plot here, or where matplotlib is missing (PyPy) hand the series to the Python
    named by $SIMULATE_PLOT_PYTHON (scripts/simulate-pypy sets the project's .venv); what
    happened, for the report."""
    try:
        draw(series, path)
        return f"delay plot: {path}"
    except ImportError:
        pass
    other = os.environ.get("SIMULATE_PLOT_PYTHON")
    if not other:
        return "delay plot skipped: matplotlib is not installed"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "series.json"
        data.write_text(json.dumps(series))
        done = subprocess.run(
            [other, str(Path(__file__).resolve()), "--plot-from", str(data), "--png", str(path)],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        return f"delay plot skipped: {other} could not draw it ({done.stderr.strip()[-200:]})"
    return f"delay plot: {path} (drawn by {other})"


def parse_mix(spec: str) -> list[tuple[float, float]]:
    """`0.3:0.5,0.5:2,0.2:5` -> [(share, multiple of the stream rate)], shares summing to 1."""
    mix: list[tuple[float, float]] = []
    try:
        for item in spec.split(","):
            share, mult = item.split(":")
            mix.append((float(share), float(mult)))
    except ValueError:
        raise SystemExit(
            f"--upload-mix {spec!r}: write share:multiple pairs, e.g. 0.3:0.5,0.7:2"
        ) from None
    total = sum(s for s, _ in mix)
    if not mix or abs(total - 1.0) > 1e-6 or any(s < 0 or m <= 0 for s, m in mix):
        raise SystemExit(f"--upload-mix {spec!r}: shares must be >= 0 and sum to 1, multiples > 0")
    return mix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="stream duration simulated")
    parser.add_argument("--bitrate", type=float, default=1.0, help="stream Mbit/s")
    parser.add_argument("--upload", type=float, default=5.0, help="each node's upload Mbit/s")
    parser.add_argument(
        "--upload-mix",
        help="viewers' uploads as share:multiple-of-stream-rate pairs, e.g. 0.3:0.5,0.5:2,0.2:5",
    )
    parser.add_argument(
        "--writer-upload", type=float, help="the broadcaster's upload Mbit/s (default --upload)"
    )
    parser.add_argument(
        "--upload-budget",
        type=float,
        default=1.2,
        help="copies of the stream the broadcaster may upload when the swarm is short",
    )
    parser.add_argument("--rtt", type=float, default=50.0, help="round-trip time, ms")
    parser.add_argument(
        "--segment", type=float, default=1.0, help="seconds between independent blocks (GOP)"
    )
    parser.add_argument(
        "--part",
        type=float,
        help=f"seconds of media per block (default {DEFAULT_PART:g}, the broadcaster's, at most "
        "--segment; --part equal to --segment: one block per GOP)",
    )
    parser.add_argument("--degree", type=int, default=6, help="neighbours a joining viewer dials")
    parser.add_argument("--min-peers", type=int, default=4)
    parser.add_argument("--max-peers", type=int, default=12)
    parser.add_argument(
        "--writer-degree", type=int, default=4, help="neighbours of the broadcaster"
    )
    parser.add_argument("--join-window", type=float, default=10.0, help="viewers join during this")
    parser.add_argument("--flash", type=float, help="flash crowd: every viewer joins within S s")
    parser.add_argument(
        "--symmetric",
        type=float,
        default=0.0,
        help="share of viewers behind symmetric NATs (they reach only reachable peers)",
    )
    parser.add_argument(
        "--churn", type=float, default=0.05, help="share of viewers replaced mid-run"
    )
    parser.add_argument(
        "--buffer", type=float, default=2.0, help="player start-up buffer (s) for counting stalls"
    )
    parser.add_argument("--drain", type=float, default=10.0, help="seconds simulated after the end")
    parser.add_argument(
        "--push", action="store_true", help="live push on (ReplicatorConfig.push; off in the product)"
    )
    parser.add_argument(
        "--no-push", dest="push", action="store_false", help="live push off (the default)"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="baseline: no waiting requests (ReplicatorConfig.wait_requests off)",
    )
    parser.add_argument(
        "--wait-peers",
        type=int,
        default=1,
        help="neighbours a new block waits at, at once (ReplicatorConfig.wait_peers)",
    )
    parser.add_argument(
        "--upgrade-with-block",
        action="store_true",
        help="ask for the newest block with the upgrade (ReplicatorConfig.upgrade_with_block)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="print why peers were dropped")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the run here")
    parser.add_argument(
        "--progress", type=float, help="every S simulated seconds, print the pace and the delay"
    )
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
    parser.add_argument(
        "--plot-from", type=Path, help="only draw --png from a delay series a run saved as JSON"
    )
    args = parser.parse_args(argv)
    if args.plot_from:
        try:
            draw(json.loads(args.plot_from.read_text()), args.png)
        except ImportError:
            parser.error("--plot-from needs matplotlib: pip install -e '.[bench]'")
        except (OSError, ValueError, KeyError) as e:
            parser.error(f"--plot-from {args.plot_from}: not a delay series ({e})")
        return 0
    if args.viewers < 1 or args.seconds <= 0 or args.bitrate <= 0 or args.upload <= 0:
        parser.error("viewers, seconds, bitrate and upload must be positive")
    if args.part is None:
        args.part = min(DEFAULT_PART, args.segment)
    if args.part <= 0 or args.part > args.segment or not 0 <= args.symmetric <= 1:
        parser.error("--part must be in (0, --segment]; --symmetric in [0, 1]")
    if args.keep:
        from simkeep import main as keep_main

        return keep_main(args)

    sim = Simulation(args)
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        r = prof.runcall(sim.run)
        prof.dump_stats(args.profile)
    else:
        r = sim.run()
    uploads = (
        f"upload mix {args.upload_mix} x stream"
        if args.upload_mix
        else f"{args.upload:g} Mbit/s uploads"
    )
    print(
        f"swarm: {r['viewers']} viewers, {r['blocks']} blocks of {args.part:g} s "
        f"(independent every {args.segment:g} s), {args.bitrate:g} Mbit/s stream, {uploads}, "
        f"{args.rtt:g} ms RTT, churn {args.churn:.0%}, symmetric NAT {args.symmetric:.0%}, "
        f"{'flash crowd ' + format(args.flash, 'g') + ' s, ' if args.flash else ''}"
        f"live push {'on' if args.push else 'off'}, "
        f"waiting requests {'off' if args.no_wait else 'on'}, seed {args.seed}"
    )
    print(
        f"broadcaster upload: {r['writer_upload_bytes'] / 1e6:.1f} MB = "
        f"{r['upload_ratio']:.2f} x stream (swarm_short at the end: {r['writer_swarm_short']})"
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
        f"hops: p50 {r['hops_p50']:.0f}, p95 {r['hops_p95']:.0f}, mean {r['hops_mean']:.1f}; "
        f"per-hop delay {r['per_hop_delay']:.3f} s; floor (hops x part/upload + one-way delays): "
        f"p50 {r['floor_p50']:.2f} s, p95 {r['floor_p95']:.2f} s "
        f"(one part over a mean viewer uplink {r['tx_viewer']:.3f} s)"
    )
    print(
        f"stalls (player with a {args.buffer:g} s start-up buffer): {r['stalls']} "
        f"({r['stall_seconds']:.1f} s total, {r['stall_share']:.3%} of watch time); "
        f"starved viewers: {r['starved']} (visits under {STARVED_MIN_WATCH:g} s that stalled "
        f"as much: {r['short_stalled']}); blocks never received: {r['missing_blocks']}; "
        f"duplicate downloads: {r['duplicates']} ({r['duplicate_share']:.2%}); "
        f"pushed: {r['pushed_share']:.0%} of downloads"
    )
    print(
        f"viewer upload: mean {r['viewer_upload_ratio_mean']:.2f} x stream (ceiling "
        f"{r['viewer_upload_ceiling']:.2f} x: all viewers' downloads less the broadcaster's "
        "upload, per viewer counted; "
        f"{r['viewer_upload_of_watched_mean']:.2f} x what each watched; their mean download "
        f"{r['viewer_download_ratio_mean']:.2f} x), "
        f"max {r['viewer_upload_ratio_max']:.2f} x; peers dropped as misbehaving: {r['misbehaved']}"
    )
    if args.verbose:
        sim.relay_summary()
    print(
        f"simulated {args.seconds + args.drain:g} s in {r['wall_seconds']:.1f} s wall, "
        f"{r['cpu_seconds']:.1f} s CPU ({platform.python_implementation()} "
        f"{platform.python_version()})"
    )
    print(plot(sim.delay_series(), args.png))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
