"""Relay at the live edge, sans-IO: who pushes new blocks to whom, so a new block costs each hop
about half a round trip plus its transmission time instead of an announce, a request and a reply.

One LiveRelay per Replicator. As a *subscriber* a node asks one neighbour (its push parent) to push
it every new block the moment that block verifies there; it picks the neighbour that usually holds
new blocks earliest (measured from the neighbours' `range` announcements), moves when another is
clearly earlier or its parent keeps missing, and holds back its own pull of new blocks for a short,
measured grace while a push is on its way (the pull is the fallback for whatever a push missed). As
a *pusher* a node accepts a few subscribers (a writer: `writer_push_children`, so it still sends each
block about once), pushes each block it verifies or appends to those that lack it, and sheds a
subscriber when pushes of older blocks still wait as a new block arrives (its uplink cannot carry
them all). It also keeps the figures that tell whether viewers' uploads carry the stream.
The sessions check and verify everything; this module only decides and calls their public methods.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from streamer.core.compat import SLOTS
from streamer.core.replication import (
    MAX_DEPTH,
    FeedLike,
    Pushed,
    Session,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["LiveRelay", "RelayLimits", "RelayStats"]

LEAD_WEIGHT = 0.2  # moving-average weight of each new block in a neighbour's lead
SHORT_WINDOW_S = 10.0  # the recent past over which `swarm_short` and the capacity ratio are judged


class RelayLimits(Protocol):
    """The numbers the relay reads (core.scheduler.ReplicatorConfig has them all)."""

    push: bool
    live: bool
    max_push_children: int
    writer_push_children: int
    push_grace_min: float
    push_grace_max: float
    switch_depth: int
    switch_every: int
    refused_backoff: float
    shed_cooldown: float


@dataclass(**SLOTS)
class RelayStats:
    """What the relay counts over its life."""

    pushes_sent: int = 0  # blocks queued to subscribers
    pushes_received: int = 0  # pushed blocks that verified here
    push_duplicates: int = 0  # pushed blocks we held already
    push_unusable: int = 0  # pushes built for a length we no longer had
    parent_switches: int = 0  # times we moved our subscription to another neighbour
    shed: int = 0  # subscribers we stopped pushing to because our uplink fell behind
    subscriptions_refused: int = 0  # our subscriptions a neighbour declined or ended


class LiveRelay:
    """The live-push rules for one feed's sessions."""

    def __init__(self, feed: FeedLike, limits: RelayLimits, rng: random.Random) -> None:
        self.feed = feed
        self.limits = limits
        self.rng = rng
        self.stats = RelayStats()
        self.parent: Session | None = None
        self._lead: dict[Session, float] = {}  # how much earlier than us a neighbour gets blocks
        self._refused_until: dict[Session, float] = {}
        self._since_switch = 0
        self._misses = 0  # consecutive new blocks that did not come from our parent's push
        self._longer_since: float | None = None  # a neighbour announced a length we lack since
        self._push_lag = 0.3  # usual time from "a longer length is known" to our parent's push
        self._children_order: deque[Session] = deque()  # subscribers, oldest first
        self._cap = limits.writer_push_children if feed.writable else limits.max_push_children
        self._cap_until = 0.0  # after shedding, no new subscriber until then
        self._overloaded = 0
        self._told: int | None = -1  # the depth we last told our neighbours
        # (time, kind) samples for the short-swarm figures: kinds "req" and "busy".
        self._recent: deque[tuple[float, str]] = deque()

    # ------------------------------------------------------------ config

    @property
    def enabled(self) -> bool:
        return self.limits.push and self.limits.live

    # ------------------------------------------------------------ pusher side

    def subscribe_asked(self, s: Session, start: int | None, now: float) -> None:
        if start is None:
            self._drop_child(s)
            return
        if not self.enabled or s is self.parent or not s.is_open:
            s.refuse_push()
            return
        children = len(self._children_order)
        if s in self._children_order:
            s.accept_push(start)
            return
        if children >= self._cap or (now < self._cap_until and children >= max(self._cap, 1)):
            s.refuse_push()
            return
        s.accept_push(start)
        self._children_order.append(s)

    def _drop_child(self, s: Session) -> None:
        if s in self._children_order:
            self._children_order.remove(s)

    def have(self, block: int, source: Session | None, now: float) -> list[Session]:
        """A block verified here (source: the session it came from; None: our own append): push it
        to the subscribers that lack it. Returns the sessions it was pushed to."""
        children = self._children_order
        if not children:
            return []
        # Pushes two blocks old still waiting as a new block arrives: our uplink cannot carry all
        # our subscribers (one block's worth of backlog is normal at full use).
        behind = False
        for c in children:
            if c.oldest_push is not None and c.oldest_push < block - 1:
                behind = True
                break
        if behind and not self.feed.writable:
            self._overloaded += 1
            if self._overloaded >= 2:
                self._overloaded = 0
                victim = children.pop()
                victim.refuse_push()
                self.stats.shed += 1
                self._cap = max(0, len(children))
                self._cap_until = now + self.limits.shed_cooldown
        else:
            self._overloaded = 0
            if now >= self._cap_until and not self.feed.writable:
                self._cap = min(self.limits.max_push_children, max(self._cap, len(children) + 1))
        pushed = []
        for c in list(children):
            if c is source or not c.is_open:
                continue
            if c.push(block):
                pushed.append(c)
                self.stats.pushes_sent += 1
        return pushed

    @property
    def children(self) -> int:
        return len(self._children_order)

    def pushing(self) -> bool:
        """Pushes wait for our uplink: a viewer then refuses to answer pulls of new blocks."""
        return any(c.pushes_waiting for c in self._children_order)

    # ------------------------------------------------------------ subscriber side

    def subscription_changed(self, s: Session, on: bool, now: float) -> None:
        if on:
            return
        if s is self.parent:
            self.parent = None
            self.stats.subscriptions_refused += 1
            self._refused_until[s] = now + self.limits.refused_backoff

    def pushed(self, s: Session, ev: Pushed) -> None:
        if ev.duplicate:
            self.stats.push_duplicates += 1
            if s is self.parent:
                self._misses += 1
        elif ev.unusable:
            self.stats.push_unusable += 1
            if s is self.parent:
                self._misses += 1
        else:
            self.stats.pushes_received += 1

    def remote_synced(self, length: int, now: float) -> None:
        if length > self.feed.length and self._longer_since is None:
            self._longer_since = now

    def upgraded(self, now: float, longest: int) -> None:
        """Our length grew; if a neighbour still announces more, a new grace starts now."""
        self._longer_since = now if longest > self.feed.length else None

    def block_verified(
        self, block: int, source: Session, sessions: Iterable[Session], now: float, pushed: bool
    ) -> None:
        """Learn from a new block who gets blocks early (waiting requests go to them too, push
        or not), and whether our parent delivered it."""
        if self.feed.writable:
            return
        lead = self._lead
        for t in sessions:
            at = t.announced.get(block)
            value = now - at if at is not None else 0.0
            old = lead.get(t)
            lead[t] = value if old is None else old + LEAD_WEIGHT * (value - old)
        if not self.enabled:
            return
        parent = self.parent
        if parent is None:
            return
        if source is parent and pushed:
            self._misses = 0
            if self._longer_since is not None:
                lag = now - self._longer_since
                self._push_lag += 0.1 * (lag - self._push_lag)
        elif block >= parent.sub_start:
            self._misses += 1
        self._since_switch += 1

    def lead(self, s: Session) -> float:
        """How much earlier than us `s` usually gets new blocks (seconds, moving average)."""
        return self._lead.get(s, 0.0)

    @property
    def depth(self) -> int | None:
        """Relays between the broadcaster and us on the push tree (0: we are the writer; None: our
        parent has no path to the broadcaster, or we have no parent)."""
        if self.feed.writable:
            return 0
        parent = self.parent
        if parent is None or parent.sub_state != "on" or parent.remote_depth is None:
            return None
        depth = parent.remote_depth + 1
        return depth if depth < MAX_DEPTH else None

    def tick(self, sessions: list[Session], now: float) -> None:
        """Keep one push parent with a path to the broadcaster: subscribe to the neighbour nearest
        to it when we have none, move when one is clearly nearer or ours keeps missing, and tell
        every neighbour our own distance when it changes (that keeps the push tree free of loops:
        we only ever subscribe to a neighbour that has a path while we have none through it)."""
        if not self.enabled:
            return
        depth = self.depth
        if depth != self._told:
            self._told = depth
            for s in sessions:
                s.tell_depth(depth)
        if self.feed.writable or self.feed.length == 0:
            return
        parent = self.parent
        if parent is not None and (parent.closed or parent.sub_state is None):
            self.parent = parent = None
        if parent is not None:
            if self._since_switch < self.limits.switch_every and parent.remote_depth is not None:
                return
            here = parent.remote_depth
            # Only a neighbour switch_depth nearer can win unless ours keeps missing: look at
            # no other (the same choice, without a tie-break draw per neighbour on every pass).
            nearer = None if here is None or self._misses >= 5 else here - self.limits.switch_depth
            best = self._best(sessions, now, exclude=parent, max_depth=nearer)
            if best is None or best.remote_depth is None:
                return
            if here is None or best.remote_depth + self.limits.switch_depth <= here or self._misses >= 5:
                parent.unsubscribe()
                self.stats.parent_switches += 1
                self._refused_until[parent] = now + self.limits.refused_backoff
                self._subscribe(best)
            return
        best = self._best(sessions, now, exclude=None)
        if best is not None:
            self._subscribe(best)

    def session_added(self, s: Session) -> None:
        if self.enabled:
            s.tell_depth(self.depth)

    def _subscribe(self, s: Session) -> None:
        s.subscribe(self.feed.length)
        self.parent = s
        self._since_switch = 0
        self._misses = 0

    def _best(
        self,
        sessions: list[Session],
        now: float,
        exclude: Session | None,
        max_depth: int | None = None,
    ) -> Session | None:
        """The neighbour nearest to the broadcaster (then the one that gets blocks earliest), at
        most `max_depth` relays from it if given."""
        best: Session | None = None
        best_key: tuple[int, float, float] | None = None
        refused = self._refused_until
        fork = self.feed.fork
        for s in sessions:
            depth = s.remote_depth
            if depth is None or (max_depth is not None and depth > max_depth):
                continue
            if s is exclude or not s.is_open or s.remote_fork != fork:
                continue
            if s.push_on or s.sub_state is not None:  # our subscriber, or one we are leaving
                continue
            until = refused.get(s)
            if until is not None and until > now:
                continue
            key = (depth, -self._lead.get(s, 0.0), self.rng.random())
            if best_key is None or key < best_key:
                best, best_key = s, key
        return best

    # ------------------------------------------------------------ pull fallback

    def grace(self) -> float:
        lim = self.limits
        return min(lim.push_grace_max, max(lim.push_grace_min, 1.5 * self._push_lag + 0.05))

    def upgrade_held_until(self) -> float | None:
        """While our parent pushes, pull a newly announced length only after this time."""
        parent = self.parent
        if parent is None or parent.sub_state != "on" or self._longer_since is None:
            return None
        return self._longer_since + self.grace()

    def hold_blocks(self) -> tuple[int | None, float]:
        """(first block, grace): while our parent pushes, a block from its subscription start on is
        pulled only `grace` after it was revealed. (None, 0) when nothing is held."""
        parent = self.parent
        if parent is None or parent.sub_state != "on":
            return None, 0.0
        return parent.sub_start, self.grace()

    # ------------------------------------------------------------ sessions

    def session_closed(self, s: Session) -> None:
        self._drop_child(s)
        self._lead.pop(s, None)
        self._refused_until.pop(s, None)
        if s is self.parent:
            self.parent = None

    # ------------------------------------------------------------ is the swarm short?

    def note(self, kind: str, now: float) -> None:
        """Record one block request ("req") or busy refusal ("busy") of ours."""
        recent = self._recent
        recent.append((now, kind))
        while recent and (now - recent[0][0] > SHORT_WINDOW_S or len(recent) > 4096):
            recent.popleft()

    def swarm_short(self, now: float, over_budget_at: float | None) -> bool:
        """Viewers' uploads do not carry the stream: a writer had to refuse copies over its budget
        lately; a viewer had at least half of its recent block requests answered busy."""
        if self.feed.writable:
            return over_budget_at is not None and now - over_budget_at <= SHORT_WINDOW_S
        counts = {"req": 0, "busy": 0}
        for t, kind in self._recent:
            if now - t <= SHORT_WINDOW_S:
                counts[kind] += 1
        return counts["req"] >= 4 and counts["busy"] * 2 >= counts["req"]
