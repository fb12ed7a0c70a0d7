"""Unit tests of streamer.net.aio: each shared asyncio helper does what its docstring says, on a
real event loop (and a real Feed, appended to from a worker thread, for FeedWakeup)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import pytest

from streamer.core.feed import Feed
from streamer.net.aio import (
    Deadline,
    FeedWakeup,
    Wakeup,
    call_on_loop,
    run_until,
    stop_on_signals,
    wait_event,
    within,
)


async def test_call_on_loop_runs_at_once_on_the_loop_and_soon_from_a_thread() -> None:
    loop = asyncio.get_running_loop()
    calls: list[int] = []
    call_on_loop(loop, lambda: calls.append(threading.get_ident()))
    assert calls == [threading.get_ident()]  # synchronously, on the loop's thread
    arrived = asyncio.Event()

    def from_thread() -> None:
        calls.append(threading.get_ident())
        arrived.set()

    await asyncio.to_thread(call_on_loop, loop, from_thread)
    assert await wait_event(arrived, 5)
    assert calls[1] == threading.get_ident()  # ran on the loop, not in the worker


async def test_within_and_wait_event_say_whether_it_finished_in_time() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_event(event, 5) is True
    assert await within(asyncio.sleep(0), 5) is True
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    assert await within(slow(), 0.01) is False
    assert cancelled.is_set()  # the work did not linger


async def test_deadline_counts_down_and_caps_waits() -> None:
    never = Deadline(None)
    assert never.remaining() is None and not never.expired() and never.capped(0.5) == 0.5
    soon = Deadline(60)
    remaining = soon.remaining()
    assert remaining is not None and 0 < remaining <= 60
    assert not soon.expired() and soon.capped(0.5) == 0.5
    passed = Deadline(0)
    assert passed.expired() and passed.capped(0.5) <= 0


async def test_wakeup_wakes_every_waiter_and_times_out_without_a_fire() -> None:
    wakeup = Wakeup()
    assert await wakeup.wait(0.01) is False
    waiters = [asyncio.ensure_future(wakeup.wait(5)) for _ in range(3)]
    await asyncio.sleep(0)  # let them start waiting
    await asyncio.to_thread(wakeup.fire)
    assert await asyncio.gather(*waiters) == [True, True, True]
    # A fire wakes only those waiting then; later waits wait for the next one.
    assert await wakeup.wait(0.01) is False


async def test_feed_wakeup_fires_on_appends_from_a_worker_thread(tmp_path: Path) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        with FeedWakeup(feed) as changes:
            waiter = asyncio.ensure_future(changes.wait(5))
            await asyncio.sleep(0)
            await asyncio.to_thread(feed.append, [b"block"])
            assert await waiter is True
        # Closed: no longer listening.
        closed = asyncio.ensure_future(changes.wait(0.05))
        await asyncio.sleep(0)
        await asyncio.to_thread(feed.append, [b"another"])
        assert await closed is False
        changes.close()  # idempotent


async def test_run_until_returns_the_result_or_none_when_stopped() -> None:
    stop = asyncio.Event()

    async def answer() -> int:
        return 42

    assert await run_until(answer(), stop) == 42
    cancelled = asyncio.Event()

    async def forever() -> int:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return 0

    asyncio.get_running_loop().call_soon(stop.set)
    assert await run_until(forever(), stop) is None
    assert cancelled.is_set()  # cancelled and waited for before returning


async def test_run_until_passes_the_work_s_exception_on() -> None:
    async def broken() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await run_until(broken(), asyncio.Event())


async def test_run_until_cancelled_by_its_caller_cancels_the_work() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    outer = asyncio.ensure_future(run_until(forever(), asyncio.Event()))
    assert await wait_event(started, 5)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cancelled.is_set()


async def test_stop_on_signals_sets_the_event_on_a_real_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = stop_on_signals(stop, (signal.SIGUSR1,))
    try:
        assert handled == [signal.SIGUSR1]
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await wait_event(stop, 5)
        called = asyncio.Event()
        stop_on_signals(called.set, (signal.SIGUSR1,))
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await wait_event(called, 5)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


async def test_stop_on_signals_off_the_main_thread_handles_none() -> None:
    def in_thread() -> list[int]:
        async def main() -> list[int]:
            return stop_on_signals(asyncio.Event())

        return asyncio.run(main())

    assert await asyncio.to_thread(in_thread) == []
