"""One way for tests to wait for state that no single event signals (across several nodes,
servers or feeds): poll a check with a deadline, and fail naming what never happened."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

POLL_S = 0.02


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    what: str = "the condition",
    *,
    timeout: float = 30.0,
) -> None:
    """Return once `check()` (sync or async) holds; AssertionError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL_S)
