"""Swarm membership policy of one node, sans-IO: which signaling messages to believe, who to
dial, what to answer on the signaling hub, when to announce, whom to drop to make room for a
newcomer and what that may cost, whom to refuse for a while. Signaling messages, connection events
and the time go in; actions come out (post a message, dial, evict, hand over an answer, cancel a
dial, count an ignored or refused message). It does no I/O and reads no clock.
"""

# Signaling: the topic `{dk}` carries "I am here" (hello, with the neighbour count) and "bye";
# `{dk}.{peer}` carries hello, full, offer, answer and reject addressed to one peer (Post.to).
# Rules, each in one method: the lower peer id offers (_on_hello, _on_offer); a node keeps at most
# max_peers neighbours, dials in progress included (has_room); a node with no neighbour that only
# hears "full" asks one full node to make room for it (_on_full, announce); that node promises room
# only to a newcomer that announced itself with no neighbour, at most once per EVICT_COOLDOWN_S
# and once per newcomer per SENDER_EVICT_COOLDOWN_S, and only if some neighbour has another path
# (_promise_room); it drops that neighbour only once the newcomer's connection verified, never the
# writer if another will do (connected, _victim); banned peers are neither dialled nor answered
# (ban, is_banned). Every incoming message passes signal(), which first checks its proof
# (core.signal: MAC under the stream key, sender signature, freshness); the swarm seals every
# outgoing one (SignalAuth.seal).

from __future__ import annotations

import math
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Union

from streamer.core.compat import SLOTS
from streamer.core.signal import SignalAuth, Verdict

PEER_ID = re.compile(r"[0-9a-f]{32}")
MAX_SDP = 64 * 1024  # bytes of one SDP offer or answer
MAX_BANNED = 1024  # peer ids remembered as bad at once; the oldest is forgotten first
MAX_FULL_NODES = 32  # full nodes an isolated node remembers as candidates to make room for it
EVICT_COOLDOWN_S = 5.0  # a full node makes room for a newcomer at most this often
SENDER_EVICT_COOLDOWN_S = 60.0  # ... and for the same newcomer at most this often
HEARD_S = 30.0  # room only for a newcomer that broadcast "hello, n: 0" this recently
ROOM_HOLD_S = 30.0  # room promised to a newcomer is kept for it this long (its dial included)
MAX_HEARD = 4096  # peers whose last broadcast hello is remembered; the oldest is forgotten first
ISOLATED_RETRY_S = 2.0  # a node with no neighbour announces (or asks for room) this often
ANNOUNCE_JITTER = (0.8, 1.2)  # so a swarm that started together does not announce in lockstep


@dataclass(frozen=True, **SLOTS)
class Post:
    """Send `message` on the signaling hub: to one peer, or (to=None) to everyone on the topic."""

    to: str | None
    message: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, **SLOTS)
class Dial:
    """Open a connection to `peer`: offer one (offer=None), or answer its `offer` SDP."""

    peer: str
    offer: str | None = None


@dataclass(frozen=True, **SLOTS)
class Evict:
    """Close the connection to neighbour `peer` to make room for a newcomer."""

    peer: str


@dataclass(frozen=True, **SLOTS)
class Answer:
    """`peer` answered our offer with `sdp`, or declined it (sdp=None)."""

    peer: str
    sdp: str | None


@dataclass(frozen=True, **SLOTS)
class CancelDial:
    """`peer` left: stop connecting to it."""

    peer: str


@dataclass(frozen=True, **SLOTS)
class Ignored:
    """A signaling message was malformed or misaddressed (count it, log `why`)."""

    why: str


@dataclass(frozen=True, **SLOTS)
class Refused:
    """A signaling message without a valid proof (count it by `verdict`; `skew_s` is how far its
    timestamp was from our clock, for a stale one)."""

    verdict: Verdict
    skew_s: float = 0.0


# Union, not |: this runs at import, and the core also runs on PyPy 3.9 (compat.py).
Action = Union[Post, Dial, Evict, Answer, CancelDial, Ignored, Refused]  # noqa: UP007


def _message(kind: str, to: str | None = None, **fields: Any) -> Post:
    message: dict[str, Any] = {"type": kind}
    if to is not None:
        message["to"] = to
    message.update(fields)
    return Post(to, message)


def offer_message(to: str, sdp: str) -> Post:
    """Our offer to `to` (the dialling side posts it)."""
    return _message("offer", to, sdp=sdp)


def answer_message(to: str, sdp: str) -> Post:
    """Our answer to the offer of `to`."""
    return _message("answer", to, sdp=sdp)


def bye_message() -> Post:
    """We are leaving (to everyone on the topic)."""
    return _message("bye")


class Membership:
    """The membership state of node `peer_id`: neighbours, dials in progress, bans, the full
    nodes heard of while isolated, the announce schedule. The caller executes the actions and
    reports back: dial_ended() when a dial finishes, connected() / disconnected() for neighbours.
    `rng` picks eviction victims, whom to ask for room and the announce jitter. With `auth`
    (the swarm's SignalAuth), a message without a valid proof is refused before anything else."""

    def __init__(
        self,
        peer_id: str,
        *,
        max_peers: int = 6,
        ban_seconds: float = 60.0,
        announce_interval: float = 10.0,
        rng: random.Random | None = None,
        auth: SignalAuth | None = None,
    ) -> None:
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        self.peer_id = peer_id
        self.max_peers = max_peers
        self.ban_seconds = ban_seconds
        self.announce_interval = announce_interval
        self.neighbours: dict[str, bool] = {}  # peer id -> is the writer
        self.dialing: set[str] = set()
        self._rng = rng or random.Random()
        self._banned: dict[str, float] = {}  # peer id -> banned until
        self._full_nodes: dict[str, None] = {}  # heard "full" from them while we were isolated
        self._asked: str | None = None  # the full node last asked to make room for us
        self._auth = auth
        self._last_eviction = -math.inf
        # Last broadcast hello of each peer heard: (when, its neighbour count or None).
        self._heard: OrderedDict[str, tuple[float, int | None]] = OrderedDict()
        self._room_given: OrderedDict[str, float] = OrderedDict()  # newcomer -> when
        self._room_for: str | None = None  # the newcomer we promised room to, until _room_until
        self._room_until = -math.inf
        self._announce_requested = False
        self._announced_at = -math.inf
        self._jitter = 1.0
        self._leaving = False

    # -- state ---------------------------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether one more neighbour fits (dials in progress count as neighbours)."""
        return len(self.neighbours) + len(self.dialing) < self.max_peers

    def has_room_for(self, peer: str, now: float) -> bool:
        """Whether `peer` may become a neighbour: there is room, or we promised it room."""
        return self.has_room() or (peer == self._room_for and now < self._room_until)

    def neighbour_count(self, peer: str) -> int | None:
        """How many neighbours `peer` said it had in its last broadcast hello (None: unknown)."""
        heard = self._heard.get(peer)
        return heard[1] if heard is not None else None

    def is_banned(self, peer: str, now: float) -> bool:
        until = self._banned.get(peer)
        return until is not None and until > now

    # -- inputs from the caller ----------------------------------------------------------------

    def ban(self, peer: str, now: float) -> float:
        """Refuse `peer` (no dialling, no answering) for ban_seconds; returns until when."""
        for stale in [p for p, until in self._banned.items() if until <= now]:
            del self._banned[stale]
        if len(self._banned) >= MAX_BANNED:
            self._banned.pop(next(iter(self._banned)))
        until = now + self.ban_seconds
        self._banned[peer] = until
        return until

    def connected(self, peer: str, is_writer: bool) -> list[Action]:
        """`peer` is a verified neighbour now (or again, on a new connection). If it is the
        newcomer we promised room to and we are over the bound, the room is made now: one
        neighbour with another path is evicted."""
        self.neighbours[peer] = is_writer
        self._full_nodes.clear()
        if peer == self._room_for:
            self._room_for, self._room_until = None, -math.inf
        actions: list[Action] = []
        if len(self.neighbours) + len(self.dialing - {peer}) > self.max_peers:
            # Nobody can go without being stranded: one over the bound until one leaves.
            victim = self._victim(exclude=peer)
            if victim is not None:
                del self.neighbours[victim]
                actions.append(Evict(victim))
        return actions + self._report_count()

    def disconnected(self, peer: str) -> list[Action]:
        """Neighbour `peer` is gone (not by Evict): announce at once so a replacement finds us,
        and tell the others how many neighbours we have now."""
        if self.neighbours.pop(peer, None) is None:
            return []
        self._announce_requested = True
        return self._report_count()

    def _report_count(self) -> list[Action]:
        """Tell every neighbour how many neighbours we have (an addressed hello with `n`), so
        that none of them evicts us when we have no other path."""
        n = len(self.neighbours)
        return [_message("hello", p, n=n) for p in self.neighbours]

    def dial_ended(self, peer: str) -> None:
        """The dial to `peer` finished, connected or not. A promised newcomer that did not
        connect loses its room at once: nobody was evicted for it."""
        self.dialing.discard(peer)
        if peer == self._room_for and peer not in self.neighbours:
            self._room_for, self._room_until = None, -math.inf

    def request_announce(self) -> None:
        """Announce at once (a hub stream reopened: nobody there knows us)."""
        self._announce_requested = True

    def leave(self) -> None:
        """From now on every signaling message is ignored silently."""
        self._leaving = True

    # -- signaling -----------------------------------------------------------------------------

    def signal(self, message: object, now: float, wall_ms: int | None = None) -> list[Action]:
        """One message from the hub (as decoded from JSON): what to do about it. `now` is the
        monotonic time of every rule; `wall_ms` the Unix time in ms its timestamp is checked
        against (needed with `auth`)."""
        if not isinstance(message, dict):
            return [Ignored("not an object")]
        if self._auth is not None:
            clock = int(now * 1000) if wall_ms is None else wall_ms
            verdict = self._auth.check(message, clock)
            if verdict is not Verdict.OK:
                ts = message.get("ts")
                skew = (clock - ts) / 1000 if verdict is Verdict.STALE and isinstance(ts, int) else 0.0
                return [Refused(verdict, skew)]
        kind, sender, to = message.get("type"), message.get("from"), message.get("to")
        if not isinstance(sender, str) or not PEER_ID.fullmatch(sender):
            return [Ignored("bad sender id")]
        if sender == self.peer_id or self._leaving:
            return []
        if to is not None and to != self.peer_id:
            return [Ignored("addressed to another peer")]
        if kind == "hello":
            evict = message.get("evict") is True and to is not None
            if to is None:
                self._hear(sender, message.get("n"), now)
            elif "n" in message and not evict:
                # A neighbour's count report (not "please dial me", which has no n).
                if sender in self.neighbours:
                    self._hear(sender, message.get("n"), now)
                return []
            return self._on_hello(sender, message.get("n"), evict, now)
        if kind == "full" and to is not None:
            self._on_full(sender)
            return []
        if kind == "offer" and to is not None:
            return self._on_offer(sender, message.get("sdp"), now)
        if kind in ("answer", "reject") and to is not None:
            sdp = message.get("sdp")
            if kind == "answer" and isinstance(sdp, str) and len(sdp) <= MAX_SDP:
                return [Answer(sender, sdp)]
            return [Answer(sender, None)]
        if kind == "bye":
            return [CancelDial(sender)] if sender in self.dialing else []
        return [Ignored(f"unknown type {str(kind)[:20]!r}")]

    def _on_hello(self, sender: str, their_peers: object, evict: bool, now: float) -> list[Action]:
        if sender in self.neighbours or sender in self.dialing or self.is_banned(sender, now):
            return []
        actions: list[Action] = []
        if not self.has_room() and evict:
            self._promise_room(sender, now)
        if not self.has_room_for(sender, now):
            if their_peers == 0:
                # It has nobody; tell it we exist (or that we cannot make room just now), so it
                # can ask one of us, or another one, to make room.
                actions.append(_message("full", sender))
            return actions
        if self.peer_id < sender:
            actions.append(self._dial(sender))
        else:
            # The lower id offers: ask it to dial us.
            actions.append(_message("hello", sender))
        return actions

    def _on_full(self, sender: str) -> None:
        if self.neighbours:
            return
        if sender == self._asked:
            # It cannot make room just now: ask the next one at once.
            self._asked = None
            self._announce_requested = True
        elif sender not in self._full_nodes and len(self._full_nodes) < MAX_FULL_NODES:
            if not self._full_nodes:
                # Ask the first one at once; the others are asked only if it cannot help, so
                # one newcomer does not make several nodes drop a neighbour.
                self._announce_requested = True
            self._full_nodes[sender] = None

    def _hear(self, sender: str, their_peers: object, now: float) -> None:
        count = their_peers if isinstance(their_peers, int) and not isinstance(their_peers, bool) \
            else None
        self._heard[sender] = (now, count)
        self._heard.move_to_end(sender)
        if len(self._heard) > MAX_HEARD:
            self._heard.popitem(last=False)

    def _promise_room(self, sender: str, now: float) -> None:
        """A newcomer asked us, full, to make room. Promise it room (one slot over the bound, for
        its connection only) if every rule allows; the neighbour goes once it connected. Each
        rule bounds what one request can cost: it must come from a node that announced itself
        isolated, at most one promise at a time, once per EVICT_COOLDOWN_S, once per newcomer per
        SENDER_EVICT_COOLDOWN_S, and only if a neighbour would keep another path."""
        if now < self._room_until or now - self._last_eviction < EVICT_COOLDOWN_S:
            return
        heard = self._heard.get(sender)
        if heard is None or now - heard[0] > HEARD_S or heard[1] != 0:
            return  # never for a peer id that has not announced itself as isolated
        given = self._room_given.get(sender)
        if given is not None and now - given < SENDER_EVICT_COOLDOWN_S:
            return
        if self._victim(exclude=sender) is None:
            return
        self._room_for, self._room_until = sender, now + ROOM_HOLD_S
        self._last_eviction = now
        self._room_given[sender] = now
        self._room_given.move_to_end(sender)
        while len(self._room_given) > MAX_HEARD or (
            self._room_given and now - next(iter(self._room_given.values()))
            >= SENDER_EVICT_COOLDOWN_S
        ):
            self._room_given.popitem(last=False)

    def _victim(self, exclude: str) -> str | None:
        """The neighbour to drop for a newcomer: one that said it has another neighbour besides
        us (so it is not stranded), never the writer if another will do; None if there is none."""
        candidates = [
            p for p in self.neighbours
            if p != exclude and (self.neighbour_count(p) or 0) >= 2
        ]
        if not candidates:
            return None
        others = [p for p in candidates if not self.neighbours[p]]
        return self._rng.choice(others or candidates)

    def _on_offer(self, sender: str, sdp: object, now: float) -> list[Action]:
        if sender > self.peer_id:
            return [Ignored("offer from the higher peer id")]
        if sender in self.dialing:
            return []
        if self.is_banned(sender, now) or not isinstance(sdp, str) or len(sdp) > MAX_SDP:
            return [_message("reject", sender)]
        # A neighbour that dials again has lost our channel. The old one is kept until the new
        # one passes the handshake, so a forged offer cannot cut a working connection.
        if sender not in self.neighbours and not self.has_room_for(sender, now):
            return [_message("reject", sender)]
        return [self._dial(sender, sdp)]

    def _dial(self, peer: str, offer: str | None = None) -> Dial:
        self.dialing.add(peer)
        return Dial(peer, offer)

    # -- announcing ----------------------------------------------------------------------------

    def announce(self) -> list[Action]:
        """What to post now that announce_deadline() has passed (or nothing, when full). Call
        announced() once it went out."""
        # Cleared before posting: replies to this announcement may ask for the next one.
        self._announce_requested = False
        if not self.has_room():
            return []
        if not self.neighbours and not self.dialing and self._full_nodes:
            # We have no neighbour and everyone we heard of is full: ask one of them for room.
            target = self._rng.choice(list(self._full_nodes))
            del self._full_nodes[target]
            self._asked = target
            return [_message("hello", target, n=0, evict=True)]
        return [_message("hello", n=len(self.neighbours))]

    def announced(self, now: float) -> None:
        """The announcement went out (or failed to) at `now`."""
        self._announced_at = now
        self._jitter = self._rng.uniform(*ANNOUNCE_JITTER)

    def announce_deadline(self) -> float:
        """When to announce next: at once when asked to, sooner while we have no neighbour.
        Changes with every input, so re-read it after each."""
        if self._announce_requested:
            return -math.inf
        interval = self.announce_interval * self._jitter
        if not self.neighbours:
            interval = min(interval, ISOLATED_RETRY_S)
        return self._announced_at + interval
