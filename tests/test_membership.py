"""The swarm membership rules of streamer.core.membership on a virtual clock, one test per rule:
signaling validation and proofs, who offers, the neighbour bound, making room (only for an
announced isolated newcomer, only once it connected, never stranding a neighbour, cooldowns per
node and per newcomer, never the writer if another will do), asking for room while isolated,
bans and their expiry, the announce schedule, and the exact shape of every signaling message."""

from __future__ import annotations

import json
import math
import random

import pytest

from streamer.core import crypto
from streamer.core.membership import (
    EVICT_COOLDOWN_S,
    HEARD_S,
    ISOLATED_RETRY_S,
    MAX_BANNED,
    MAX_FULL_NODES,
    MAX_SDP,
    ROOM_HOLD_S,
    SENDER_EVICT_COOLDOWN_S,
    Answer,
    CancelDial,
    Dial,
    Evict,
    Ignored,
    Membership,
    Post,
    Refused,
    answer_message,
    bye_message,
    offer_message,
)
from streamer.core.signal import SignalAuth, Verdict

ME = "5" * 32
LOW = "1" * 32  # offers to ME
HIGH = "9" * 32  # ME offers to it
OTHERS = [f"a{i:031x}" for i in range(32)]  # all higher than ME


def node(**options) -> Membership:
    options.setdefault("max_peers", 2)
    options.setdefault("rng", random.Random(7))
    return Membership(ME, **options)


def msg(kind: str, sender: str, **fields) -> dict:
    return {"type": kind, "from": sender, **fields}


def to_me(kind: str, sender: str, **fields) -> dict:
    return msg(kind, sender, to=ME, **fields)


def fill(m: Membership, *peers: str, writer: str | None = None) -> None:
    for p in peers:
        m.connected(p, p == writer)


# -- signaling validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ("text", "not an object"),
        ([1, 2], "not an object"),
        ({"type": "hello"}, "bad sender id"),
        ({"type": "hello", "from": "NOT-HEX"}, "bad sender id"),
        ({"type": "hello", "from": "A" * 32}, "bad sender id"),
        (msg("hello", HIGH, to="7" * 32), "addressed to another peer"),
        (msg("teleport", HIGH), "unknown type 'teleport'"),
        (msg("full", HIGH), "unknown type 'full'"),  # "full" only ever comes addressed
        (msg("offer", LOW, sdp="v=0"), "unknown type 'offer'"),
        (to_me("offer", HIGH, sdp="v=0"), "offer from the higher peer id"),
    ],
)
def test_malformed_or_misaddressed_signaling_is_ignored(message, why):
    m = node()
    assert m.signal(message, 0.0) == [Ignored(why)]
    assert not m.dialing and not m.neighbours


def test_our_own_messages_and_everything_after_leave_are_dropped_silently():
    m = node()
    assert m.signal(msg("hello", ME), 0.0) == []
    m.leave()
    assert m.signal(msg("hello", HIGH), 0.0) == []
    assert m.signal("garbage", 0.0) == [Ignored("not an object")]  # still counted as garbage


# -- who offers -----------------------------------------------------------------------------------


def test_the_lower_id_dials_on_hearing_a_hello():
    m = node()
    assert m.signal(msg("hello", HIGH, n=3), 0.0) == [Dial(HIGH)]
    assert m.dialing == {HIGH}
    assert m.signal(msg("hello", HIGH, n=3), 0.1) == []  # already dialling it


def test_the_higher_id_asks_the_lower_one_to_dial():
    m = node()
    assert m.signal(msg("hello", LOW, n=1), 0.0) == [Post(LOW, {"type": "hello", "to": LOW})]
    assert not m.dialing


def test_an_offer_from_the_lower_id_is_answered():
    m = node()
    assert m.signal(to_me("offer", LOW, sdp="v=0 offer"), 0.0) == [Dial(LOW, "v=0 offer")]
    assert m.dialing == {LOW}
    assert m.signal(to_me("offer", LOW, sdp="v=0 again"), 0.1) == []  # one dial at a time


@pytest.mark.parametrize("sdp", [None, 42, "x" * (MAX_SDP + 1)])
def test_an_offer_without_a_usable_sdp_is_rejected(sdp):
    m = node()
    assert m.signal(to_me("offer", LOW, sdp=sdp), 0.0) == [
        Post(LOW, {"type": "reject", "to": LOW})
    ]


def test_answers_and_rejects_are_handed_to_the_dial_and_bye_cancels_it():
    m = node()
    assert m.signal(to_me("answer", HIGH, sdp="v=0 answer"), 0.0) == [Answer(HIGH, "v=0 answer")]
    assert m.signal(to_me("answer", HIGH, sdp=7), 0.0) == [Answer(HIGH, None)]
    assert m.signal(to_me("answer", HIGH, sdp="x" * (MAX_SDP + 1)), 0.0) == [Answer(HIGH, None)]
    assert m.signal(to_me("reject", HIGH), 0.0) == [Answer(HIGH, None)]
    assert m.signal(msg("bye", HIGH), 0.0) == []  # not dialling it: nothing to cancel
    m.signal(msg("hello", HIGH), 0.0)
    assert m.signal(msg("bye", HIGH), 0.0) == [CancelDial(HIGH)]
    m.dial_ended(HIGH)
    assert not m.dialing


# -- the neighbour bound --------------------------------------------------------------------------


def test_dials_in_progress_count_against_the_bound():
    m = node(max_peers=2)
    assert m.signal(msg("hello", OTHERS[0]), 0.0) == [Dial(OTHERS[0])]
    assert m.signal(msg("hello", OTHERS[1]), 0.0) == [Dial(OTHERS[1])]
    assert not m.has_room()
    assert m.signal(msg("hello", OTHERS[2], n=4), 0.0) == []
    m.dial_ended(OTHERS[0])  # it failed
    assert m.has_room()
    assert m.signal(msg("hello", OTHERS[2], n=4), 0.0) == [Dial(OTHERS[2])]


def test_a_full_node_tells_an_isolated_one_it_is_full_and_ignores_the_others():
    m = node()
    fill(m, *OTHERS[:2])
    assert m.signal(msg("hello", OTHERS[5], n=0), 0.0) == [
        Post(OTHERS[5], {"type": "full", "to": OTHERS[5]})
    ]
    assert m.signal(msg("hello", OTHERS[5], n=1), 0.0) == []
    assert m.signal(msg("hello", OTHERS[5]), 0.0) == []


def test_a_full_node_rejects_new_offers_but_takes_a_neighbour_that_dials_again():
    m = node()
    fill(m, LOW, OTHERS[0])
    other_low = "0" * 32
    assert m.signal(to_me("offer", other_low, sdp="v=0"), 0.0) == [
        Post(other_low, {"type": "reject", "to": other_low})
    ]
    # A neighbour that lost our channel dials again: answered, the old channel stays meanwhile.
    assert m.signal(to_me("offer", LOW, sdp="v=0"), 0.0) == [Dial(LOW, "v=0")]
    assert LOW in m.neighbours


def test_known_neighbours_are_not_dialled_again():
    m = node(max_peers=3)
    fill(m, HIGH)
    assert m.signal(msg("hello", HIGH), 0.0) == []


# -- making room ----------------------------------------------------------------------------------


def announced(m: Membership, peer: str, n: int, now: float) -> list:
    """`peer` broadcast "hello, I have n neighbours" at `now`."""
    return m.signal(msg("hello", peer, n=n), now)


def full_with_paths(m: Membership, *peers: str, writer: str | None = None, now: float = 90.0):
    """Neighbours `peers`, each of which said it has another neighbour besides us."""
    fill(m, *peers, writer=writer)
    for p in peers:
        announced(m, p, 2, now)


def evictions(actions: list) -> list:
    return [a for a in actions if isinstance(a, Evict)]


def ask(m: Membership, newcomer: str, now: float) -> list:
    """`newcomer` announces itself isolated, then asks us for room."""
    announced(m, newcomer, 0, now - 1.0)
    return m.signal(to_me("hello", newcomer, n=0, evict=True), now)


def test_a_full_node_makes_room_only_once_the_newcomer_connected():
    m = node()
    full_with_paths(m, *OTHERS[:2])
    m.announced(99.0)
    # Room is promised, not made: the newcomer is dialled one over the bound.
    assert ask(m, OTHERS[9], 100.0) == [Dial(OTHERS[9])]
    assert set(m.neighbours) == set(OTHERS[:2])
    actions = m.connected(OTHERS[9], False)
    m.dial_ended(OTHERS[9])
    [evict] = evictions(actions)
    assert evict.peer in OTHERS[:2]
    # The neighbours left hear our count (an addressed hello with n), the evicted one does not.
    reports = [a for a in actions if isinstance(a, Post)]
    assert {p.to for p in reports} == set(m.neighbours)
    assert all(p.message == {"type": "hello", "to": p.to, "n": 2} for p in reports)
    assert evict.peer not in m.neighbours and len(m.neighbours) == 2
    # The evicted node's channel closes later; that is not a disconnect to announce for.
    m.disconnected(evict.peer)
    assert m.announce_deadline() != -math.inf


def test_a_newcomer_that_never_connects_costs_no_neighbour():
    m = node()
    full_with_paths(m, *OTHERS[:2])
    assert ask(m, OTHERS[9], 100.0) == [Dial(OTHERS[9])]
    m.dial_ended(OTHERS[9])  # it never answered
    assert set(m.neighbours) == set(OTHERS[:2])
    assert not m.has_room_for(OTHERS[9], 101.0)


def test_a_promise_to_a_lower_id_waits_for_its_offer_for_a_while():
    m = node()
    full_with_paths(m, *OTHERS[:2])
    assert ask(m, LOW, 100.0) == [Post(LOW, {"type": "hello", "to": LOW})]
    assert m.signal(to_me("offer", LOW, sdp="v=0"), 100.0 + ROOM_HOLD_S - 1) == [Dial(LOW, "v=0")]
    m.dial_ended(LOW)
    m2 = node()
    full_with_paths(m2, *OTHERS[:2])
    ask(m2, LOW, 100.0)
    assert m2.signal(to_me("offer", LOW, sdp="v=0"), 100.0 + ROOM_HOLD_S) == [
        Post(LOW, {"type": "reject", "to": LOW})
    ]


@pytest.mark.parametrize(
    "history",
    [
        [],  # never announced itself
        [("hello", 1)],  # announced it has a neighbour: not isolated
        [("old", 0)],  # announced too long ago
    ],
)
def test_room_only_for_a_newcomer_that_announced_itself_isolated(history):
    m = node()
    full_with_paths(m, *OTHERS[:2])
    for kind, n in history:
        announced(m, OTHERS[9], n, 100.0 - (HEARD_S + 1 if kind == "old" else 1))
    assert m.signal(to_me("hello", OTHERS[9], n=0, evict=True), 100.0) == [
        Post(OTHERS[9], {"type": "full", "to": OTHERS[9]})
    ]


@pytest.mark.parametrize("their_count", [None, 0, 1])
def test_a_neighbour_without_another_path_is_never_evicted(their_count):
    m = node()
    fill(m, *OTHERS[:2])
    if their_count is not None:
        for p in OTHERS[:2]:
            announced(m, p, their_count, 90.0)
    assert ask(m, OTHERS[9], 100.0) == [Post(OTHERS[9], {"type": "full", "to": OTHERS[9]})]
    assert set(m.neighbours) == set(OTHERS[:2])


def test_making_room_has_a_cooldown_and_one_promise_at_a_time():
    m = node(max_peers=1)
    full_with_paths(m, OTHERS[0])
    assert ask(m, OTHERS[9], 100.0) == [Dial(OTHERS[9])]
    # A second newcomer while the first one is still connecting: no second promise.
    assert ask(m, OTHERS[10], 100.5) == [Post(OTHERS[10], {"type": "full", "to": OTHERS[10]})]
    assert evictions(m.connected(OTHERS[9], False)) == [Evict(OTHERS[0])]
    m.dial_ended(OTHERS[9])
    announced(m, OTHERS[9], 2, 101.0)
    # Within the cooldown: no promise; it hears we are full, so it can ask someone else.
    late = 100.0 + EVICT_COOLDOWN_S - 0.1
    assert ask(m, OTHERS[10], late) == [Post(OTHERS[10], {"type": "full", "to": OTHERS[10]})]
    assert ask(m, OTHERS[10], 100.0 + EVICT_COOLDOWN_S) == [Dial(OTHERS[10])]


def test_one_newcomer_gets_room_at_most_once_per_sender_cooldown():
    m = node(max_peers=1)
    full_with_paths(m, OTHERS[0])
    assert ask(m, OTHERS[9], 100.0) == [Dial(OTHERS[9])]
    m.dial_ended(OTHERS[9])  # it did not connect, and asks again and again
    for t in (110.0, 130.0, 100.0 + SENDER_EVICT_COOLDOWN_S - 1):
        assert ask(m, OTHERS[9], t) == [Post(OTHERS[9], {"type": "full", "to": OTHERS[9]})]
    assert ask(m, OTHERS[9], 100.0 + SENDER_EVICT_COOLDOWN_S) == [Dial(OTHERS[9])]


def test_only_an_addressed_hello_can_ask_for_room():
    m = node()
    full_with_paths(m, *OTHERS[:2])
    assert m.signal(msg("hello", OTHERS[9], n=0, evict=True), 100.0) == [
        Post(OTHERS[9], {"type": "full", "to": OTHERS[9]})
    ]
    # Not a request for room (evict is not true): read as a count report from a non-neighbour.
    assert m.signal(to_me("hello", OTHERS[9], n=0, evict="yes"), 100.0) == []
    assert len(m.neighbours) == 2


def test_a_node_with_room_does_not_evict():
    m = node(max_peers=3)
    full_with_paths(m, *OTHERS[:2])
    assert m.signal(to_me("hello", OTHERS[9], n=0, evict=True), 100.0) == [Dial(OTHERS[9])]
    assert evictions(m.connected(OTHERS[9], False)) == []
    assert len(m.neighbours) == 3


def test_a_full_node_that_is_only_dialling_has_nobody_to_evict():
    m = node(max_peers=1)
    m.signal(msg("hello", OTHERS[0]), 0.0)
    assert ask(m, OTHERS[9], 10.0) == [Post(OTHERS[9], {"type": "full", "to": OTHERS[9]})]


@pytest.mark.parametrize("seed", range(20))
def test_the_writer_is_never_evicted_if_another_neighbour_will_do(seed):
    m = node(max_peers=3, rng=random.Random(seed))
    full_with_paths(m, *OTHERS[:3], writer=OTHERS[1])
    assert ask(m, OTHERS[9], 100.0) == [Dial(OTHERS[9])]
    [evict] = evictions(m.connected(OTHERS[9], False))
    assert evict.peer != OTHERS[1]


def test_the_writer_is_evicted_when_it_is_the_only_neighbour_with_another_path():
    m = node(max_peers=1)
    full_with_paths(m, OTHERS[0], writer=OTHERS[0])
    assert ask(m, OTHERS[9], 100.0) == [Dial(OTHERS[9])]
    assert evictions(m.connected(OTHERS[9], False)) == [Evict(OTHERS[0])]


def test_neighbours_report_their_count_and_a_report_makes_a_neighbour_evictable():
    m = node()
    fill(m, *OTHERS[:2])
    assert ask(m, OTHERS[9], 100.0) == [Post(OTHERS[9], {"type": "full", "to": OTHERS[9]})]
    # OTHERS[0] tells us (addressed hello with n) it has two neighbours now.
    assert m.signal(to_me("hello", OTHERS[0], n=2), 101.0) == []
    assert m.neighbour_count(OTHERS[0]) == 2
    assert ask(m, OTHERS[10], 110.0) == [Dial(OTHERS[10])]
    assert evictions(m.connected(OTHERS[10], False)) == [Evict(OTHERS[0])]
    # A report from a peer that is not a neighbour changes nothing.
    assert m.signal(to_me("hello", OTHERS[20], n=3), 111.0) == []
    assert m.neighbour_count(OTHERS[20]) is None
    # Losing a neighbour: the others hear the new count.
    assert m.disconnected(OTHERS[1]) == [Post(OTHERS[10], {"type": "hello", "to": OTHERS[10], "n": 1})]


# -- proofs (core.signal) -------------------------------------------------------------------------


def test_with_auth_only_messages_with_a_valid_proof_count():
    key = bytes(range(32))
    dk = crypto.discovery_key(key)
    ours = SignalAuth(key, dk)
    m = Membership(ours.peer_id, max_peers=2, auth=ours)
    wall = 1_700_000_000_000
    theirs = SignalAuth(key, dk)
    hello = theirs.seal({"type": "hello", "n": 1}, wall, "0000000000000001")
    assert m.signal({"type": "hello", "from": theirs.peer_id, "n": 1}, 0.0, wall) == [
        Refused(Verdict.NO_PROOF)
    ]
    assert m.signal({**hello, "n": 0}, 0.0, wall) == [Refused(Verdict.BAD_MAC)]
    actions = m.signal(hello, 0.0, wall + 1000)
    assert actions and not isinstance(actions[0], Refused)
    assert m.signal(hello, 0.0, wall + 2000) == [Refused(Verdict.REPLAY)]
    late = theirs.seal({"type": "bye"}, wall, "0000000000000002")
    assert m.signal(late, 0.0, wall + 90_000) == [Refused(Verdict.STALE, 90.0)]
    outsider = SignalAuth(bytes(32), dk).seal({"type": "hello", "n": 0}, wall, "0000000000000003")
    assert m.signal(outsider, 0.0, wall) == [Refused(Verdict.BAD_MAC)]


# -- asking for room while isolated ---------------------------------------------------------------


def test_an_isolated_node_that_hears_full_asks_one_full_node_for_room_then_the_next():
    m = node()
    m.announced(0.0)
    assert m.announce_deadline() > 0.0
    assert m.signal(to_me("full", OTHERS[0]), 0.1) == []
    assert m.announce_deadline() == -math.inf  # the first "full": ask at once
    m.signal(to_me("full", OTHERS[1]), 0.1)
    [ask] = m.announce()
    asked = ask.to
    assert asked in OTHERS[:2]
    assert ask == Post(asked, {"type": "hello", "to": asked, "n": 0, "evict": True})
    m.announced(0.2)
    assert m.announce_deadline() > 0.2
    # The asked node cannot make room now: ask the other at once.
    m.signal(to_me("full", asked), 0.3)
    assert m.announce_deadline() == -math.inf
    [ask2] = m.announce()
    assert ask2.to in OTHERS[:2] and ask2.to != asked
    m.announced(0.4)
    # Nobody left to ask: back to plain hellos.
    assert m.announce() == [Post(None, {"type": "hello", "n": 0})]


def test_further_full_nodes_are_remembered_without_asking_at_once():
    m = node()
    m.signal(to_me("full", OTHERS[0]), 0.0)
    m.signal(to_me("full", OTHERS[1]), 0.0)
    [ask] = m.announce()  # asks one; the other stays a candidate
    m.announced(0.0)
    m.signal(to_me("full", OTHERS[2]), 0.1)
    assert 0.0 < m.announce_deadline() <= ISOLATED_RETRY_S
    [ask2] = m.announce()
    assert ask2.to in OTHERS[:3] and ask2.to != ask.to


def test_full_nodes_are_forgotten_once_connected_and_not_heard_while_connected():
    m = node()
    m.signal(to_me("full", OTHERS[0]), 0.0)
    m.connected(OTHERS[1], False)
    assert m.announce() == [Post(None, {"type": "hello", "n": 1})]
    m.signal(to_me("full", OTHERS[2]), 0.0)
    assert m.announce() == [Post(None, {"type": "hello", "n": 1})]


def test_an_isolated_node_that_is_dialling_announces_instead_of_asking_for_room():
    m = node()
    m.signal(to_me("full", OTHERS[0]), 0.0)
    m.signal(msg("hello", OTHERS[1]), 0.0)  # dialling it
    assert m.announce() == [Post(None, {"type": "hello", "n": 0})]


def test_an_isolated_node_remembers_a_bounded_number_of_full_nodes():
    m = node()
    many = [f"{i:032x}" for i in range(0xF000, 0xF000 + MAX_FULL_NODES + 5)]
    for p in many:
        m.signal(to_me("full", p), 0.0)
    asked = set()
    while (actions := m.announce()) and actions[0].to is not None:
        asked.add(actions[0].to)
    assert len(asked) == MAX_FULL_NODES


# -- bans -----------------------------------------------------------------------------------------


def test_a_banned_peer_is_neither_dialled_nor_answered_until_the_ban_expires():
    m = node(ban_seconds=60.0)
    assert m.ban(HIGH, 10.0) == 70.0
    m.ban(LOW, 10.0)
    assert m.is_banned(HIGH, 69.9) and not m.is_banned(HIGH, 70.0)
    assert m.signal(msg("hello", HIGH), 20.0) == []
    assert m.signal(to_me("offer", LOW, sdp="v=0"), 20.0) == [
        Post(LOW, {"type": "reject", "to": LOW})
    ]
    assert m.signal(msg("hello", HIGH), 70.0) == [Dial(HIGH)]
    assert m.signal(to_me("offer", LOW, sdp="v=0"), 70.0) == [Dial(LOW, "v=0")]


def test_the_ban_list_is_bounded_and_forgets_the_oldest_first():
    m = node(ban_seconds=60.0)
    ids = [f"{i:032x}" for i in range(MAX_BANNED + 1)]
    for i, p in enumerate(ids):
        m.ban(p, i * 1e-6)
    assert not m.is_banned(ids[0], 1.0)
    assert all(m.is_banned(p, 1.0) for p in ids[1:])


def test_expired_bans_make_way_before_live_ones():
    m = node(ban_seconds=1.0)
    for i in range(MAX_BANNED):
        m.ban(f"{i:032x}", 0.0)
    m.ban(HIGH, 0.5)  # drops the oldest live one: the list is full
    assert not m.is_banned(f"{0:032x}", 0.6)
    m.ban(LOW, 2.0)  # everything before it has expired and is pruned; HIGH (until 1.5) too
    assert m.is_banned(LOW, 2.5) and not m.is_banned(HIGH, 2.5)


# -- the announce schedule ------------------------------------------------------------------------


def test_the_first_announce_is_due_at_once():
    assert node().announce_deadline() == -math.inf


def test_announces_repeat_every_interval_with_jitter_and_sooner_while_isolated():
    m = node(announce_interval=10.0)
    deadlines = []
    for i in range(50):
        m.announced(100.0 * i)
        assert 100.0 * i < m.announce_deadline() <= 100.0 * i + ISOLATED_RETRY_S
        m.connected(HIGH, False)
        deadlines.append(m.announce_deadline() - 100.0 * i)
        m.neighbours.clear()
    assert all(8.0 <= d <= 12.0 for d in deadlines)
    assert len(set(deadlines)) > 1


def test_a_lost_neighbour_or_a_hub_reconnect_makes_the_next_announce_due_at_once():
    m = node()
    fill(m, HIGH)
    m.announced(0.0)
    assert m.announce_deadline() > 0.0
    m.disconnected(HIGH)
    assert m.announce_deadline() == -math.inf
    assert m.announce() == [Post(None, {"type": "hello", "n": 0})]
    m.announced(1.0)
    assert m.announce_deadline() > 1.0
    m.request_announce()
    assert m.announce_deadline() == -math.inf


def test_a_full_node_does_not_announce():
    m = node()
    fill(m, *OTHERS[:2])
    assert m.announce() == []


# -- message shapes (what goes on the hub, byte for byte) -----------------------------------------


def test_every_signaling_message_has_its_fixed_shape():
    def wire(post: Post) -> str:
        return json.dumps(post.message)

    assert wire(offer_message(HIGH, "v=0")) == json.dumps({"type": "offer", "to": HIGH, "sdp": "v=0"})
    assert wire(answer_message(LOW, "v=1")) == json.dumps({"type": "answer", "to": LOW, "sdp": "v=1"})
    assert bye_message() == Post(None, {"type": "bye"})
    assert offer_message(HIGH, "v=0").to == HIGH
    m = node()
    m.signal(to_me("full", OTHERS[0]), 0.0)
    assert wire(m.announce()[0]) == json.dumps(
        {"type": "hello", "to": OTHERS[0], "n": 0, "evict": True}
    )


def test_max_peers_must_be_positive():
    with pytest.raises(ValueError, match="max_peers"):
        Membership(ME, max_peers=0)
