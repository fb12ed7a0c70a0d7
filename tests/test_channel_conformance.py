"""One conformance suite for every MessageChannel: the in-memory pair and real aiortc data channels
on 127.0.0.1. Each test states a behaviour the replicator relies on, flow control included (window
credits, keepalive, idle timeout: streamer.core.credit, driven by channel.CreditedChannel)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from streamer.core.errors import ChannelClosed, MessageTooLarge
from streamer.net.channel import (
    MAX_MESSAGE_SIZE,
    MemoryChannel,
    MessageChannel,
    message_cost,
)
from streamer.net.rtc import RtcPeer
from tests.waiting import eventually

WINDOW = 256 * 1024  # small, so backpressure shows after a few messages


Pair = tuple[MessageChannel, MessageChannel]
MakePair = Callable[..., Awaitable[Pair]]


async def _rtc_pair(a: dict[str, Any], b: dict[str, Any]) -> Pair:
    offerer = RtcPeer("answerer", initiator=True, **a)
    answerer = RtcPeer("offerer", initiator=False, **b)
    answer = await answerer.answer(await offerer.offer())
    await offerer.accept(answer)
    return await asyncio.gather(offerer.channel(), answerer.channel())


async def _memory_pair(a: dict[str, Any], b: dict[str, Any]) -> Pair:
    first, second = MemoryChannel("answerer", **a), MemoryChannel("offerer", **b)
    first.connect(second)
    return first, second


@pytest.fixture(params=["memory", "rtc"])
async def make_pair(request: pytest.FixtureRequest) -> AsyncIterator[MakePair]:
    """make_pair(a={...}, b={...}): a connected pair, each end with its own flow control options
    (window, keepalive, idle_timeout; the window defaults to WINDOW)."""
    made: list[MessageChannel] = []

    async def make(a: dict[str, Any] | None = None, b: dict[str, Any] | None = None) -> Pair:
        build = _memory_pair if request.param == "memory" else _rtc_pair
        ends = await build({"window": WINDOW, **(a or {})}, {"window": WINDOW, **(b or {})})
        made.extend(ends)
        return ends

    yield make
    for channel in made:
        await channel.close()


@pytest.fixture
async def pair(make_pair: MakePair) -> Pair:
    return await make_pair()


async def test_each_end_knows_its_peer(pair):
    a, b = pair
    assert a.peer_id == "answerer"
    assert b.peer_id == "offerer"
    assert not a.closed and not b.closed


async def test_messages_arrive_in_order_with_their_boundaries(pair):
    a, b = pair
    sizes = [0, 1, 2, 1000, 17, MAX_MESSAGE_SIZE, 5, 40_000, 0, 3]
    sent = [os.urandom(n) for n in sizes]
    for m in sent:
        await a.send(m)
    got = [await asyncio.wait_for(b.recv(), 10) for _ in sent]
    assert got == sent


async def test_both_directions_work_at_once(pair):
    a, b = pair
    await asyncio.gather(*(a.send(b"to b %d" % i) for i in range(3)))
    await b.send(b"to a")
    assert await asyncio.wait_for(a.recv(), 10) == b"to a"
    assert [await b.recv() for _ in range(3)] == [b"to b 0", b"to b 1", b"to b 2"]


async def test_a_full_64k_message_passes_and_a_bigger_one_is_refused(pair):
    a, b = pair
    big = os.urandom(MAX_MESSAGE_SIZE)
    await a.send(big)
    with pytest.raises(MessageTooLarge):
        await a.send(b"x" * (MAX_MESSAGE_SIZE + 1))
    await a.send(b"still open")
    assert await asyncio.wait_for(b.recv(), 10) == big
    assert await asyncio.wait_for(b.recv(), 10) == b"still open"


async def test_send_waits_while_the_receiver_does_not_read_and_resumes_when_it_does(pair):
    a, b = pair
    message = os.urandom(32 * 1024)
    count = 4 * WINDOW // len(message)
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for i in range(count):
            await a.send(bytes([i % 256]) + message[1:])
            sent += 1

    task = asyncio.ensure_future(sender())
    # Nothing is read yet: the sender is held at about one window, however long we wait.
    done, _ = await asyncio.wait({task}, timeout=1.0)
    assert not done
    assert a.stats.send_waits > 0
    assert 0 < sent * message_cost(len(message)) <= WINDOW
    received = [await asyncio.wait_for(b.recv(), 10) for _ in range(count)]
    await asyncio.wait_for(task, 10)
    assert [m[0] for m in received] == [i % 256 for i in range(count)]
    assert a.stats.send_waits > 0


async def test_close_is_seen_by_the_other_side_after_everything_sent_before_it(pair):
    a, b = pair
    for i in range(5):
        await a.send(b"m%d" % i)
    await a.close()
    got = []

    async def drain() -> None:
        async for m in b:
            got.append(m)

    await asyncio.wait_for(drain(), 10)
    assert got == [b"m%d" % i for i in range(5)]
    assert b.closed and a.closed
    assert b.close_reason == "closed by peer"
    await asyncio.wait_for(b.wait_closed(), 1)


async def test_recv_and_send_after_close_raise_channel_closed(pair):
    a, b = pair
    await a.close()
    with pytest.raises(ChannelClosed):
        await a.send(b"x")
    with pytest.raises(ChannelClosed):
        await a.recv()
    await asyncio.wait_for(b.wait_closed(), 10)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(b.recv(), 10)
    with pytest.raises(ChannelClosed):
        await b.send(b"x")
    await a.close()  # idempotent


async def test_a_pending_recv_ends_when_the_peer_closes(pair):
    a, b = pair
    pending = asyncio.ensure_future(b.recv())
    await asyncio.sleep(0)
    await a.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(pending, 10)


async def test_stats_count_payload_bytes_and_messages(pair):
    a, b = pair
    for n in (10, 0, 65536, 300):
        await a.send(b"y" * n)
    for _ in range(4):
        await asyncio.wait_for(b.recv(), 10)
    await b.send(b"zz")
    await asyncio.wait_for(a.recv(), 10)
    assert (a.stats.bytes_sent, a.stats.messages_sent) == (65846, 4)
    assert (b.stats.bytes_received, b.stats.messages_received) == (65846, 4)
    assert (b.stats.bytes_sent, a.stats.bytes_received) == (2, 2)


async def test_a_sender_blocks_when_the_window_is_spent_and_resumes_on_each_grant(pair):
    a, b = pair
    message = b"w" * (WINDOW // 8 - message_cost(0))  # eight of them fill the window exactly
    assert message_cost(len(message)) * 8 == WINDOW

    async def sender() -> None:
        for _ in range(16):
            await a.send(message)

    task = asyncio.ensure_future(sender())
    try:
        await eventually(lambda: a.stats.messages_sent == 8, "the window to fill", timeout=10)
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done and a.stats.messages_sent == 8  # the ninth waits for credit
        # The receiver grants what it consumed once that is a quarter of the window: two messages.
        await asyncio.wait_for(b.recv(), 10)
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done and a.stats.messages_sent == 8
        await asyncio.wait_for(b.recv(), 10)
        await eventually(lambda: a.stats.messages_sent == 10, "the grant to arrive", timeout=10)
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done and a.stats.messages_sent == 10
        for _ in range(14):
            assert await asyncio.wait_for(b.recv(), 10) == message
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()


async def test_keepalives_hold_a_quiet_channel_open(make_pair):
    # An idle timeout of 20 keepalives; without keepalives it closes. (A stall of this loop is
    # the next test's: counted as ours, not the peer's silence.)
    options = {"keepalive": 0.1, "idle_timeout": 2.0}
    a, b = await make_pair(a=options, b=options)
    # Two idle timeouts pass without a payload message: only keepalives cross.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(a.wait_closed()), 4.0)
    assert not a.closed and not b.closed
    await a.send(b"still here")
    assert await asyncio.wait_for(b.recv(), 10) == b"still here"


async def test_a_stall_of_our_own_event_loop_is_not_the_peers_silence(make_pair):
    # The loop is held up for longer than the idle timeout (a blocking call, a suspended
    # machine): the peer's keepalives of that time wait behind our timer, and neither end may
    # take the stall for the other's silence.
    options = {"keepalive": 0.1, "idle_timeout": 1.0}
    a, b = await make_pair(a=options, b=options)
    await a.send(b"before")
    assert await asyncio.wait_for(b.recv(), 10) == b"before"
    time.sleep(1.5)  # noqa: ASYNC251 (the stall itself: nothing of this loop runs meanwhile)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(a.wait_closed()), 1.0)
    assert not a.closed and not b.closed
    await b.send(b"after")
    assert await asyncio.wait_for(a.recv(), 10) == b"after"


async def test_a_silent_peer_is_closed_after_the_idle_timeout(make_pair):
    # The second end never sends keepalives; the first gives up on it after half a second.
    a, b = await make_pair(
        a={"keepalive": 0.1, "idle_timeout": 0.5},
        b={"keepalive": math.inf, "idle_timeout": math.inf},
    )
    await asyncio.wait_for(a.wait_closed(), 10)
    assert a.close_reason == "peer silent"
    await asyncio.wait_for(b.wait_closed(), 10)
    assert b.close_reason == "closed by peer"
    with pytest.raises(ChannelClosed):
        await b.send(b"too late")


async def test_payload_traffic_alone_keeps_a_channel_alive(make_pair):
    # No keepalives on either side: a steady trickle of messages is proof enough.
    a, b = await make_pair(
        a={"keepalive": math.inf, "idle_timeout": 1.0},
        b={"keepalive": math.inf, "idle_timeout": 1.0},
    )
    for i in range(10):
        await b.send(b"tick %d" % i)
        await a.send(b"tock %d" % i)
        assert await asyncio.wait_for(a.recv(), 10) == b"tick %d" % i
        assert await asyncio.wait_for(b.recv(), 10) == b"tock %d" % i
        await asyncio.sleep(0.2)  # the pace of the trickle: two idle timeouts in all
    assert not a.closed and not b.closed

