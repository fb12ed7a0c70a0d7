"""Swarm membership policy of one node, sans-IO: who to dial, what to answer on the signaling hub,
when to announce, whom to drop to make room for a newcomer, whom to refuse for a while. Signaling
messages, connection events and the time go in; actions come out (post a message, dial, evict,
hand over an answer, cancel a dial, count an ignored message). It does no I/O and reads no clock.
"""

# Signaling: the topic `{dk}` carries "I am here" (hello, with the neighbour count) and "bye";
# `{dk}.{peer}` carries hello, full, offer, answer and reject addressed to one peer (Post.to).
# Rules, each in one method: the lower peer id offers (_on_hello, _on_offer); a node keeps at most
# max_peers neighbours, dials in progress included (has_room); a node with no neighbour that only
# hears "full" asks one full node to make room for it (_on_full, announce) and that node drops one
# neighbour, at most once per EVICT_COOLDOWN_S and never the writer if another will do
# (_make_room); banned peers are neither dialled nor answered (ban, is_banned). Every incoming
# message passes signal(), every outgoing one is built by _message(): the places for checking and
# adding signatures.

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

PEER_ID = re.compile(r"[0-9a-f]{32}")
MAX_SDP = 64 * 1024  # bytes of one SDP offer or answer
MAX_BANNED = 1024  # peer ids remembered as bad at once; the oldest is forgotten first
MAX_FULL_NODES = 32  # full nodes an isolated node remembers as candidates to make room for it
EVICT_COOLDOWN_S = 5.0  # a full node makes room for a newcomer at most this often
ISOLATED_RETRY_S = 2.0  # a node with no neighbour announces (or asks for room) this often
ANNOUNCE_JITTER = (0.8, 1.2)  # so a swarm that started together does not announce in lockstep


@dataclass(frozen=True, slots=True)
class Post:
    """Send `message` on the signaling hub: to one peer, or (to=None) to everyone on the topic."""

    to: str | None
    message: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a connection to `peer`: offer one (offer=None), or answer its `offer` SDP."""

    peer: str
    offer: str | None = None


@dataclass(frozen=True, slots=True)
class Evict:
    """Close the connection to neighbour `peer` to make room for a newcomer."""

    peer: str


@dataclass(frozen=True, slots=True)
class Answer:
    """`peer` answered our offer with `sdp`, or declined it (sdp=None)."""

    peer: str
    sdp: str | None


@dataclass(frozen=True, slots=True)
class CancelDial:
    """`peer` left: stop connecting to it."""

    peer: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A signaling message was malformed or misaddressed (count it, log `why`)."""

    why: str


Action = Post | Dial | Evict | Answer | CancelDial | Ignored


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
    `rng` picks eviction victims, whom to ask for room and the announce jitter."""

    def __init__(
        self,
        peer_id: str,
        *,
        max_peers: int = 6,
        ban_seconds: float = 60.0,
        announce_interval: float = 10.0,
        rng: random.Random | None = None,
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
        self._last_eviction = -math.inf
        self._announce_requested = False
        self._announced_at = -math.inf
        self._jitter = 1.0
        self._leaving = False

    # -- state ---------------------------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether one more neighbour fits (dials in progress count as neighbours)."""
        return len(self.neighbours) + len(self.dialing) < self.max_peers

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

    def connected(self, peer: str, is_writer: bool) -> None:
        """`peer` is a verified neighbour now (or again, on a new connection)."""
        self.neighbours[peer] = is_writer
        self._full_nodes.clear()

    def disconnected(self, peer: str) -> None:
        """Neighbour `peer` is gone (not by Evict): announce at once so a replacement finds us."""
        if self.neighbours.pop(peer, None) is not None:
            self._announce_requested = True

    def dial_ended(self, peer: str) -> None:
        """The dial to `peer` finished, connected or not."""
        self.dialing.discard(peer)

    def request_announce(self) -> None:
        """Announce at once (a hub stream reopened: nobody there knows us)."""
        self._announce_requested = True

    def leave(self) -> None:
        """From now on every signaling message is ignored silently."""
        self._leaving = True

    # -- signaling -----------------------------------------------------------------------------

    def signal(self, message: object, now: float) -> list[Action]:
        """One message from the hub (as decoded from JSON): what to do about it."""
        if not isinstance(message, dict):
            return [Ignored("not an object")]
        kind, sender, to = message.get("type"), message.get("from"), message.get("to")
        if not isinstance(sender, str) or not PEER_ID.fullmatch(sender):
            return [Ignored("bad sender id")]
        if sender == self.peer_id or self._leaving:
            return []
        if to is not None and to != self.peer_id:
            return [Ignored("addressed to another peer")]
        if kind == "hello":
            evict = message.get("evict") is True and to is not None
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
            actions += self._make_room(now)
        if not self.has_room():
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

    def _make_room(self, now: float) -> list[Action]:
        """Drop one neighbour (never the writer if another will do) so an isolated node gets in.
        The dropped one keeps its other neighbours and finds a replacement by announcing."""
        if now - self._last_eviction < EVICT_COOLDOWN_S or not self.neighbours:
            return []
        candidates = [p for p, writer in self.neighbours.items() if not writer] or list(
            self.neighbours
        )
        victim = self._rng.choice(candidates)
        self._last_eviction = now
        del self.neighbours[victim]
        return [Evict(victim)]

    def _on_offer(self, sender: str, sdp: object, now: float) -> list[Action]:
        if sender > self.peer_id:
            return [Ignored("offer from the higher peer id")]
        if sender in self.dialing:
            return []
        if self.is_banned(sender, now) or not isinstance(sdp, str) or len(sdp) > MAX_SDP:
            return [_message("reject", sender)]
        # A neighbour that dials again has lost our channel. The old one is kept until the new
        # one passes the handshake, so a forged offer cannot cut a working connection.
        if sender not in self.neighbours and not self.has_room():
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
