"""One conformance suite for every MessageChannel: the in-memory pair and real aiortc data channels
on 127.0.0.1. Each test states a behaviour the replicator relies on."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from streamer.core.errors import ChannelClosed, MessageTooLarge
from streamer.net.channel import MAX_MESSAGE_SIZE, MessageChannel, memory_channel_pair, message_cost
from streamer.net.rtc import RtcPeer

WINDOW = 256 * 1024  # small, so backpressure shows after a few messages


async def _rtc_pair() -> tuple[MessageChannel, MessageChannel]:
    offerer = RtcPeer("answerer", initiator=True, window=WINDOW)
    answerer = RtcPeer("offerer", initiator=False, window=WINDOW)
    answer = await answerer.answer(await offerer.offer())
    await offerer.accept(answer)
    return await asyncio.gather(offerer.channel(), answerer.channel())


@pytest.fixture(params=["memory", "rtc"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[MessageChannel, MessageChannel]]:
    if request.param == "memory":
        a, b = memory_channel_pair(capacity=WINDOW, ids=("offerer", "answerer"))
    else:
        a, b = await _rtc_pair()
    yield a, b
    await a.close()
    await b.close()


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
