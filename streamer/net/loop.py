"""Runs a program's main coroutine on the fastest event loop available (uvloop when installed).

uvloop roughly doubles aiortc data-channel throughput here (PERF-LIMITS.md). This module only
chooses and starts the loop; it never configures logging or reads argv.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main_coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main_coro) on uvloop if it can be imported, on the default loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_coro)
    return uvloop.run(main_coro)
