"""The flow control rules of streamer.core.credit on a virtual clock: window credits and grants,
overruns and bad grants, keepalives, the idle timeout and the timer deadline."""

from __future__ import annotations

import math

import pytest

from streamer.core.credit import (
    BAD_GRANT,
    DEFAULT_WINDOW,
    IDLE_TIMEOUT_S,
    KEEPALIVE,
    KEEPALIVE_S,
    PEER_OVERRAN,
    PEER_SILENT,
    CreditWindow,
    message_cost,
)

WINDOW = 1000


def window(now: float = 0.0, **options) -> CreditWindow:
    options.setdefault("window", WINDOW)
    return CreditWindow(now, **options)


def test_a_message_costs_its_length_plus_the_overhead():
    assert message_cost(0) == 64
    assert message_cost(1000) == 1064


def test_defaults_are_four_mib_five_seconds_and_twenty_seconds():
    flow = CreditWindow(0.0)
    assert (flow.window, flow.keepalive, flow.idle_timeout) == (DEFAULT_WINDOW, 5.0, 20.0)
    assert (DEFAULT_WINDOW, KEEPALIVE_S, IDLE_TIMEOUT_S) == (4 * 1024 * 1024, 5.0, 20.0)


def test_a_window_must_hold_two_of_the_largest_messages():
    with pytest.raises(ValueError, match="two full messages"):
        CreditWindow(0.0, window=2 * message_cost(100) - 1, largest_message=100)
    CreditWindow(0.0, window=2 * message_cost(100), largest_message=100)
    with pytest.raises(ValueError, match="positive"):
        CreditWindow(0.0, keepalive=0)


def test_the_sender_may_send_until_the_window_is_spent():
    flow = window()
    size = WINDOW // 4 - message_cost(0)  # four messages fill the window exactly
    for _ in range(4):
        assert flow.may_send(size)
        flow.sent(size, 1.0)
    assert flow.credit == 0
    assert not flow.may_send(0)


def test_a_grant_lets_the_sender_go_on_by_exactly_its_amount():
    flow = window()
    flow.sent(WINDOW - message_cost(0), 0.0)
    assert not flow.may_send(1)
    assert flow.control_received("c100", 1.0) is None
    assert flow.may_send(100 - message_cost(0))
    assert not flow.may_send(101 - message_cost(0))


def test_the_receiver_grants_what_was_consumed_once_it_is_a_quarter_of_the_window():
    flow = window()
    size = 100 - message_cost(0)  # costs 100
    for _ in range(3):
        assert flow.received(size, 0.0) is None
    assert flow.consumed(size, 1.0) is None
    assert flow.consumed(size, 1.0) is None  # 200 < 250
    assert flow.consumed(size, 1.0) == "c300"  # 300 >= 250: all of it, at once
    assert flow.unreported == 0
    assert flow.last_send == 1.0  # a grant is traffic too: no keepalive needed right after


def test_sender_and_receiver_stay_in_step():
    sender, receiver = window(), window()
    size = 190
    sent = 0
    for _ in range(200):
        while sender.may_send(size):
            sender.sent(size, 0.0)
            assert receiver.received(size, 0.0) is None
            sent += 1
        grant = receiver.consumed(size, 0.0)
        if grant is not None:
            assert sender.control_received(grant, 0.0) is None
    assert sent > 100  # it kept moving, and the receiver never saw an overrun


def test_a_peer_that_sends_beyond_the_window_is_an_overrun():
    flow = window()
    assert flow.received(WINDOW - message_cost(0), 0.0) is None
    assert flow.received(0, 0.0) == PEER_OVERRAN


@pytest.mark.parametrize("text", ["c0", "c-5", "cx", "c", f"c{WINDOW + 1}"])
def test_a_grant_that_is_not_a_positive_amount_within_the_window_is_bad(text):
    flow = window()
    assert flow.control_received(text, 0.0) == BAD_GRANT
    assert flow.credit == WINDOW


def test_keepalives_and_unknown_control_messages_only_prove_the_peer_alive():
    flow = window()
    assert flow.control_received(KEEPALIVE, 3.0) is None
    assert flow.control_received("zfuture", 4.0) is None
    assert flow.credit == WINDOW and flow.last_recv == 4.0


def test_a_quiet_sender_owes_a_keepalive_every_keepalive_interval():
    flow = window(keepalive=5.0, idle_timeout=20.0)
    assert flow.deadline() == 5.0
    assert flow.tick(4.9) == (None, None)
    flow.control_received(KEEPALIVE, 4.9)  # the peer is alive
    assert flow.tick(5.0) == (KEEPALIVE, None)
    assert flow.deadline() == 10.0
    flow.sent(10, 7.0)  # payload counts as traffic: the next keepalive moves back
    assert flow.deadline() == 12.0
    assert flow.tick(10.0) == (None, None)
    assert flow.tick(12.0) == (KEEPALIVE, None)


def test_a_peer_silent_for_the_idle_timeout_is_dead():
    flow = window(keepalive=5.0, idle_timeout=20.0)
    for t in (5.0, 10.0, 15.0):
        assert flow.tick(t) == (KEEPALIVE, None)
    assert flow.deadline() == 20.0
    assert flow.tick(19.9) == (None, None)
    assert flow.tick(20.0) == (None, PEER_SILENT)


def test_our_own_stall_is_not_the_peers_silence():
    # The loop stalled from 5.0 (when our keepalive was due) to 30.0, and the peer's keepalives
    # of that time may be queued behind this timer: only the 4 s of silence we were awake for
    # (1.0 to 5.0) count, and a peer that is really gone is found 16 s after we resumed.
    flow = window(keepalive=5.0, idle_timeout=20.0)
    flow.control_received(KEEPALIVE, 1.0)
    assert flow.tick(30.0) == (KEEPALIVE, None)
    for t in (35.0, 40.0, 45.0):
        assert flow.tick(t) == (KEEPALIVE, None)
    assert flow.tick(45.9) == (None, None)
    assert flow.tick(46.0) == (None, PEER_SILENT)


def test_late_timers_within_one_keepalive_interval_do_not_delay_the_idle_timeout():
    flow = window(keepalive=5.0, idle_timeout=20.0)
    for t in (5.0, 14.0, 19.0):  # 4 s late once, less than an interval
        assert flow.tick(t) == (KEEPALIVE, None)
    assert flow.tick(20.0) == (None, PEER_SILENT)


def test_any_message_from_the_peer_resets_the_idle_timeout():
    flow = window(keepalive=math.inf, idle_timeout=2.0)
    flow.received(10, 1.5)
    assert flow.deadline() == 3.5
    flow.control_received("c10", 3.0)
    assert flow.deadline() == 5.0
    assert flow.tick(4.9) == (None, None)
    assert flow.tick(5.0) == (None, PEER_SILENT)


def test_infinite_timers_never_fire():
    flow = window(keepalive=math.inf, idle_timeout=math.inf)
    assert flow.deadline() == math.inf
    assert flow.tick(1e12) == (None, None)
