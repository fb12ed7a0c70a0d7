"""The few asyncio patterns the network and viewer code share, written once: run a callback on
the loop from any thread, a wake-up that any thread can fire (and one fired by a Feed's changes),
waiting with a deadline, racing work against a stop event, and stopping on SIGINT/SIGTERM.

It holds no protocol rule and decides nothing; it only imports asyncio and streamer.core.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from streamer.core.feed import Feed, FeedEvent

T = TypeVar("T")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run `callback` on `loop`: now when called from the loop itself, else soon, thread-safely
    (feed listeners fire on whichever thread appended or verified a block)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback()
    else:
        loop.call_soon_threadsafe(callback)


async def within(work: Awaitable[Any], timeout: float | None) -> bool:
    """Await `work` for at most `timeout` seconds (None: no limit); False (and `work` cancelled)
    when the time ran out first."""
    try:
        await asyncio.wait_for(work, timeout)
    except asyncio.TimeoutError:
        return False
    return True


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set; False when `timeout` seconds passed first."""
    return await within(event.wait(), timeout)


class Deadline:
    """A point `timeout` seconds from now on the running loop's clock (None: never)."""

    def __init__(self, timeout: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._at = None if timeout is None else self._loop.time() + timeout

    def remaining(self) -> float | None:
        """Seconds left (<= 0 once passed), or None without a deadline."""
        return None if self._at is None else self._at - self._loop.time()

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def capped(self, step: float) -> float:
        """How long the next wait may last: `step`, or less when the deadline comes sooner."""
        remaining = self.remaining()
        return step if remaining is None else min(remaining, step)


class Wakeup:
    """'Something changed', fired from any thread; wait() wakes every waiter on the next fire.

    Create it on the loop it serves. A fire with nobody waiting is not remembered: check the
    state, then wait (with no await between), then check again.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def fire(self) -> None:
        """Wake everyone waiting now; safe from any thread."""
        call_on_loop(self._loop, self._fire)

    def _fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None) -> bool:
        """Wait for the next fire; False when `timeout` seconds passed first."""
        return await wait_event(self._event, timeout)


class FeedWakeup(Wakeup):
    """A Wakeup fired by every change of `feed` (appends, verified blocks, a longer signed
    length); close() stops listening."""

    def __init__(self, feed: Feed) -> None:
        super().__init__()
        self._feed = feed
        feed.add_listener(self._on_event)

    def _on_event(self, _event: FeedEvent) -> None:
        self.fire()

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self._feed.remove_listener(self._on_event)

    def __enter__(self) -> FeedWakeup:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def run_until(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Await `work` until it finishes or `stop` is set, whichever comes first. When `stop` wins,
    `work` is cancelled (and waited for) and the result is None; otherwise its result, or its
    exception. Cancelling the caller cancels `work` too."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


def stop_on_signals(
    stop: asyncio.Event | Callable[[], None], signals: Iterable[int] = STOP_SIGNALS
) -> list[int]:
    """Set `stop` (or call it) on each of `signals` (SIGINT and SIGTERM unless told) received
    by this process; returns the signals handled (none off the main thread or off Unix, where
    Ctrl-C interrupts as usual)."""
    loop = asyncio.get_running_loop()
    callback = stop.set if isinstance(stop, asyncio.Event) else stop
    handled = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        handled.append(sig)
    return handled
