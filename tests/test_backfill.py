"""History backfill and the bounded store (core.backfill): copy counts, rarest-first choice, the
keep target, eviction order, and the Replicator fetching history for the swarm's sake over
in-memory sessions with real feeds (the driver of test_replication)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streamer.core.backfill import (
    PACE_S,
    Backfill,
    copy_counts,
    describe_runs,
    missing_runs,
    parse_keep,
)
from streamer.core.errors import NotWritableError
from streamer.core.feed import Feed
from streamer.core.scheduler import Replicator
from tests import test_replication as tr
from tests.test_replication import Net, append, block, held

keys = tr.keys  # the fixtures of test_replication: real feeds in tmp_path
make = tr.make

# ---------------------------------------------------------------- the rules alone


def _none(block: int) -> bool:
    return False


def test_copy_counts_add_up_the_runs_each_holder_announced() -> None:
    assert copy_counts(6, [[(0, 2)], [(1, 4)], [(3, 9)]]) == [1, 2, 1, 2, 1, 1]
    assert copy_counts(3, []) == [0, 0, 0]
    assert copy_counts(0, [[(0, 5)]]) == []


def test_missing_runs_and_how_they_are_named() -> None:
    assert missing_runs(10, [(2, 4), (6, 7)]) == [(0, 2), (4, 6), (7, 10)]
    assert missing_runs(5, [(0, 5)]) == []
    assert missing_runs(3, []) == [(0, 3)]
    assert describe_runs([(1, 2)]) == "block 1"
    assert describe_runs([(0, 3), (7, 8)]) == "blocks 0..2, 7"


def test_keep_parses_numbers_all_and_zero() -> None:
    assert parse_keep("3") == 3 and parse_keep("0") == 0 and parse_keep("ALL") is None
    for bad in ("-1", "many", ""):
        with pytest.raises(ValueError):
            parse_keep(bad)


def test_the_rarest_blocks_come_first_and_safe_ones_not_at_all() -> None:
    plan = Backfill(keep=2, fetch=True, seed=1)
    # Blocks 0..5; we hold 5. Neighbour copies: 0 -> 2 (safe), 1 -> 1, 2 -> 0, 3 -> 1, 4 -> 0.
    others = [[(0, 2), (3, 4)], [(0, 1)]]
    sources = [*others, [(0, 6)]]  # the broadcaster holds everything
    picks = plan.choose(0.0, 6, [(5, 6)], others, sources, lambda b: False)
    assert sorted(picks[:2]) == [2, 4] and sorted(picks[2:]) == [1, 3]
    # What nobody can serve, or what is already asked for, is not chosen.
    picks = plan.choose(0.0, 6, [(5, 6)], others, others, lambda b: b == 1)
    assert picks == [3]


def test_keep_all_fetches_everything_and_keep_zero_nothing() -> None:
    everyone = [[(0, 4)]] * 5
    full = Backfill(None, fetch=True).choose(0, 4, [(0, 1)], everyone, everyone, _none)
    assert sorted(full) == [1, 2, 3]
    assert Backfill(0, fetch=True).choose(0, 4, [], [], everyone, _none) == []
    assert Backfill(3, fetch=False).choose(0, 4, [], [], everyone, _none) == []


def test_requests_out_are_capped_and_an_empty_pass_waits_before_looking_again() -> None:
    plan = Backfill(keep=1, fetch=True, max_inflight=2)
    src = [[(0, 10)]]
    assert plan.choose(0.0, 10, [], [], src, lambda b: False)
    plan.sent(1, 0.0)
    plan.sent(2, 0.0)
    assert plan.room() == 0 and plan.choose(0.0, 10, [], [], src, lambda b: False) == []
    assert plan.inflight(lambda b: b == 2) == 1 and plan.room() == 1
    # Everything is safe: nothing to fetch, and no new look for `rescan` seconds.
    assert plan.choose(1.0, 3, [], [[(0, 3)]], src, lambda b: False) == []
    assert plan.wake_at(1.0) == 1.0 + plan.rescan and plan.wake_at(2.0) is None
    assert plan.choose(1.5, 3, [], [], src, lambda b: False) == []
    assert plan.choose(2.0, 3, [], [], src, lambda b: False) != []
    assert plan.wake_at(2.0) is None


def test_the_pace_is_in_seconds_of_media_whatever_the_block_size() -> None:
    src = [[(0, 50)]]
    whole = Backfill(keep=1, fetch=True)
    whole.sent(1, 10.0)  # one 1 s block: the next request a second later
    assert whole.wake_at(10.0) == 10.0 + PACE_S
    parts = Backfill(keep=1, fetch=True)
    parts.sent(1, 10.0, 0.2)  # one 0.2 s part: the next a fifth of a second later
    assert parts.wake_at(10.0) == pytest.approx(10.0 + 0.2 * PACE_S)
    parts.inflight(lambda b: False)
    assert parts.choose(10.0 + 0.2 * PACE_S, 50, [], [], src, lambda b: False) != []


def test_safety_counts_a_viewers_own_copy_but_never_the_broadcasters() -> None:
    plan = Backfill(keep=2)
    others = [[(0, 3)], [(1, 2)]]
    viewer = plan.safety(4, others, own=[(0, 2)])
    # copies with ours: 0 -> 2, 1 -> 3, 2 -> 1, 3 -> 0
    assert (viewer.safe, viewer.rarest, viewer.share) == (2, 0, 0.5)
    assert viewer.only_here == ((3, 4),)
    writer = plan.safety(4, others, own=None)
    assert (writer.safe, writer.rarest, writer.only_here) == (1, 0, ((3, 4),))
    assert writer.only_here_blocks == 1


def test_eviction_drops_the_oldest_well_replicated_blocks_first() -> None:
    plan = Backfill(keep=2)
    held_runs = [(0, 10)]
    # Blocks 0..9 held here; 5..7 held by two others, 2..3 by one, the rest by nobody else.
    others = [[(2, 4), (5, 8)], [(5, 8)]]
    protect = {0, 9}.__contains__  # the header and the live edge
    size = {i: 100 for i in range(10)}.__getitem__
    assert plan.evictions(150, held_runs, others, size, protect) == [5, 6]
    assert plan.evictions(450, held_runs, others, size, protect) == [2, 3, 5, 6, 7]
    assert plan.evictions(10_000, held_runs, others, size, protect) == list(range(1, 9))
    assert plan.evictions(0, held_runs, others, size, protect) == []
    assert Backfill(keep=None).evictions(500, held_runs, others, size, protect) == []


# ---------------------------------------------------------------- the replicator


def _swarm(
    make: Callable[..., Replicator], keep: int | None, history: int = 10
) -> tuple[Net, Replicator, list[Replicator]]:
    """A broadcaster with `history` blocks; then three viewers join at the live edge, all linked."""
    net = Net()
    w = net.add(make(writer=True))
    append(net, w, [block(i) for i in range(history)])
    viewers = [net.add(make()) for _ in range(3)]
    for i, v in enumerate(viewers):
        v.backfill = Backfill(keep, fetch=True, seed=i)
        v.set_playhead(history - 1, net.now)
        net.link(w, v)
        for u in viewers[:i]:
            net.link(u, v)
    return net, w, viewers


def test_late_viewers_backfill_until_every_block_has_keep_copies(
    make: Callable[..., Replicator],
) -> None:
    net, w, viewers = _swarm(make, keep=3)
    for i in range(10, 16):
        append(net, w, [block(i)])
        net.run(1)
    net.run(12)
    for v in viewers:
        assert held(v) == list(range(16))
        assert v.backfill.requested > 0
    safety = w.safety()
    assert (safety.share, safety.rarest, safety.only_here) == (1.0, 3, ())
    stats = w.stats(net.now)
    assert stats.replicated_share == 1.0 and stats.rarest_copies == 3 and stats.keep == 3
    assert stats.unreplicated_blocks == 0


def test_keep_two_of_three_viewers_stops_at_two_copies(make: Callable[..., Replicator]) -> None:
    net, w, viewers = _swarm(make, keep=2, history=12)
    net.run(14)
    copies = [sum(v.feed.has(i) for v in viewers) for i in range(12)]
    assert min(copies) >= 2
    assert sum(copies) < 3 * 12  # nobody fetched what two others already hold
    assert w.safety().only_here == ()


def test_viewers_that_opt_out_leave_history_only_on_the_broadcaster(
    make: Callable[..., Replicator],
) -> None:
    net, w, viewers = _swarm(make, keep=0)
    net.run(5)
    for v in viewers:
        assert not any(v.feed.has(i) for i in range(0, 6))  # the live window is 6..9
        assert v.backfill.requested == 0
    safety = w.safety()
    assert safety.rarest == 0 and safety.only_here == ((0, 6),)
    assert w.stats(net.now).unreplicated_blocks == 6


def test_blocks_no_one_holds_before_a_held_one_are_a_hole(
    make: Callable[..., Replicator],
) -> None:
    net, w, viewers = _swarm(make, keep=0)  # the viewers hold the live window, 6..9
    net.run(5)
    late = net.add(make())  # joins after the broadcaster left: only the viewers are neighbours
    for v in viewers:
        net.link(v, late)
    net.settle()
    assert late.feed.length == 10
    assert late.holes(9) == [(0, 6)]  # playback goes on at 6, which a neighbour holds
    assert late.holes(5) == []  # nothing held after the run is a media block: it may be slow
    net.link(w, late)
    net.settle()
    assert late.holes(9) == []  # the broadcaster holds everything


def test_an_evicted_block_is_announced_gone(make: Callable[..., Replicator]) -> None:
    net, w, viewers = _swarm(make, keep=3)
    net.run(12)
    a, b = viewers[0], viewers[1]
    link = next(x for x in net.links if x.ra is a and x.rb is b)
    assert 3 in link.b.remote_has
    a.feed.evict([3, 4])  # type: ignore[attr-defined]
    a.dropped([3, 4])
    net.settle()
    assert 3 not in link.b.remote_has and 4 not in link.b.remote_has and 5 in link.b.remote_has
    assert a.stats(net.now).evicted == 2
    # Its store is at its bound: it fetches no history back, though two copies are one short.
    a.backfill.full = True
    net.run(3)
    assert not a.feed.has(3)
    # With room again it does.
    a.backfill.full = False
    a.schedule(net.now)
    net.run(5)
    assert a.feed.has(3) and a.feed.has(4)


def test_an_evicted_block_stays_gone_after_reopening_and_the_rest_verifies(
    make: Callable[..., Replicator],
) -> None:
    net, w, viewers = _swarm(make, keep=3)
    net.run(12)
    feed = viewers[0].feed
    before = feed.held_bytes()  # type: ignore[attr-defined]
    assert before == w.feed.byte_length
    assert feed.evict([2, 3, 7]) == [2, 3, 7]  # type: ignore[attr-defined]
    assert feed.held_bytes() == before - 3 * len(block(2))  # type: ignore[attr-defined]
    directory = feed.directory  # type: ignore[attr-defined]
    feed.close()  # type: ignore[attr-defined]
    with Feed.open(directory) as again:
        assert [i for i in range(10) if not again.has(i)] == [2, 3, 7]
        assert again.contiguous_length == 2
        again.verify_all()
        with pytest.raises(NotWritableError):
            w.feed.evict([1])  # type: ignore[attr-defined]
