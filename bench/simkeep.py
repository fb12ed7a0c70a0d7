"""The self-archiving swarm in the simulator (`simulate.py --keep K`): the same swarm twice with the
same seed, once with viewers that fetch only what they watch (--keep 0) and once with history
backfill until every block is held by K viewers (core.backfill), and a comparison of both.

For each run it reports, when the broadcaster leaves (as `streamer broadcast` does: once none of
its neighbours lacks a block it alone holds, at most --linger's 30 s after its end), the share of blocks held by at least K live viewers and the rarest
block's copies; how long after its append each block first had K copies (p50, p95, slowest) and
when every block had them; and the live-edge delay, stalls and uploads of simulate.py.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from simnet import SimNode
from simulate import Simulation, percentile

from streamer.core.backfill import Backfill
from streamer.core.replication import BlockVerified, Event, Session

LINGER_S = 30.0  # streamer broadcast --linger's default


@dataclass
class Copies:
    """Copies of each block among the viewers online, on the simulator's global view."""

    keep: int
    count: dict[int, int] = field(default_factory=dict)
    reached: dict[int, float] = field(default_factory=dict)  # block -> when it first had `keep`
    at_departure: tuple[float, int] | None = None  # (share with >= keep, rarest) then

    def add(self, block: int, now: float) -> None:
        n = self.count.get(block, 0) + 1
        self.count[block] = n
        if n >= self.keep and block not in self.reached:
            self.reached[block] = now

    def remove(self, blocks: list[int]) -> None:
        for b in blocks:
            self.count[b] -= 1

    def snapshot(self, blocks: int) -> tuple[float, int]:
        counts = [self.count.get(b, 0) for b in range(blocks)]
        safe = sum(1 for n in counts if n >= self.keep)
        return (safe / blocks if blocks else 1.0), min(counts, default=0)


class KeepSimulation(Simulation):
    """simulate.Simulation whose viewers backfill history up to `fetch_keep` copies (0: none);
    copies are counted towards `keep` either way."""

    def __init__(self, args: argparse.Namespace, fetch_keep: int) -> None:
        super().__init__(args)
        self.fetch_keep = fetch_keep
        self.copies = Copies(args.keep)
        self._gone: set[SimNode] = set()
        self._last_append = 0.0
        self.departed_after = float("nan")  # seconds after the last append

    def join(self) -> None:
        super().join()
        rep = self.viewers[-1].node.rep
        rep.backfill = Backfill(self.fetch_keep, fetch=True, seed=self.rng.randrange(1 << 30))

    def _event(self, node: SimNode, s: Session, event: Event, now: float) -> None:
        super()._event(node, s, event, now)
        if isinstance(event, BlockVerified) and node in self.by_node:
            self.copies.add(event.index, now)

    def leave(self) -> None:
        super().leave()
        for v in self.viewers:
            if v.left is not None and v.node not in self._gone:
                self._gone.add(v.node)
                feed = v.node.rep.feed
                self.copies.remove([b for b in range(feed.length) if feed.has(b)])

    def run(self) -> dict[str, object]:
        # History nobody watched: the broadcaster appends it before the first viewer can join.
        for _ in range(self.args.history):
            self.append()
        return super().run()

    def append(self) -> None:
        super().append()
        if len(self.appended) == self.args.history + int(self.args.seconds / self.args.part):
            self._last_append = self.net.now
            self.net.at(self.net.now + self.args.segment, self._departure)

    def _departure(self) -> None:
        """The broadcaster's rule (streamer broadcast --linger): after its end marker, it leaves
        once no block is only on its disk as its neighbours announced, or after LINGER_S."""
        waited = self.net.now - self._last_append
        if self.writer.rep.safety().only_here and waited < LINGER_S:
            self.net.at(self.net.now + 0.1, self._departure)
            return
        self.departed_after = waited
        self.copies.at_departure = self.copies.snapshot(len(self.appended))

    def keep_report(self) -> dict[str, float]:
        blocks = len(self.appended)
        lags = [
            self.copies.reached[b] - self.appended[b]
            for b in range(blocks)
            if b in self.copies.reached
        ]
        share, rarest = self.copies.at_departure or (0.0, 0)
        end_share, end_rarest = self.copies.snapshot(blocks)
        stream_end = self.appended[-1] if self.appended else 0.0
        never = blocks - len(lags)
        all_safe = max(self.copies.reached.values()) - stream_end if not never else float("nan")
        return {
            "share_at_departure": share,
            "rarest_at_departure": rarest,
            "share_at_end": end_share,
            "rarest_at_end": end_rarest,
            "lag_p50": percentile(lags, 0.5),
            "lag_p95": percentile(lags, 0.95),
            "lag_max": max(lags) if lags else float("nan"),
            "never_reached": never,
            "all_safe_after_end": all_safe,
            "departed_after": self.departed_after,
            "backfill_requests": sum(v.node.rep.backfill.requested for v in self.viewers),
        }


def main(args: argparse.Namespace) -> int:
    """Run the swarm without and with backfill (same seed) and print both side by side."""
    rows = []
    args.drain = max(args.drain, LINGER_S + args.segment)  # room for the broadcaster to linger
    for fetch in (0, args.keep):
        sim = KeepSimulation(args, fetch)
        report = sim.run()
        rows.append((fetch, report, sim.keep_report()))
    k = args.keep
    print(
        f"swarm: {args.viewers} viewers, {rows[0][1]['blocks']} blocks of {args.part:g} s, "
        f"{args.bitrate:g} Mbit/s stream, {args.upload:g} Mbit/s uploads, {args.rtt:g} ms RTT, "
        f"churn {args.churn:.0%}, joins over {args.join_window:g} s after {args.history} blocks "
        f"of history, seed {args.seed}; K = {k}"
    )
    for fetch, r, c in rows:
        what = "without backfill (--keep 0)" if fetch == 0 else f"with backfill (--keep {fetch})"
        print(f"{what}:")
        print(
            f"  at the broadcaster's departure ({c['departed_after']:.1f} s after its last "
            f"append): {c['share_at_departure']:.1%} of blocks held by "
            f">= {k} viewers, rarest block {c['rarest_at_departure']} copies "
            f"(after the drain: {c['share_at_end']:.1%}, rarest {c['rarest_at_end']})"
        )
        never = f"; {c['never_reached']} blocks never had {k}" if c["never_reached"] else ""
        print(
            f"  append -> {k} copies: p50 {c['lag_p50']:.2f} s, p95 {c['lag_p95']:.2f} s, "
            f"slowest {c['lag_max']:.2f} s; every block had {k} copies "
            f"{c['all_safe_after_end']:+.2f} s from the stream's end{never}"
        )
        print(
            f"  live delay: p50 {r['delay_p50']:.2f} s, p95 {r['delay_p95']:.2f} s, max "
            f"{r['delay_max']:.2f} s; stalls {r['stalls']} ({r['stall_seconds']:.1f} s); "
            f"broadcaster upload {r['upload_ratio']:.2f} x stream; viewer upload mean "
            f"{r['viewer_upload_ratio_mean']:.2f} x; backfill requests {c['backfill_requests']}; "
            f"{r['wall_seconds']:.0f} s wall"
        )
    return 0
