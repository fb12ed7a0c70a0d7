"""`streamer hub`: run the signaling hub until Ctrl-C, printing its URL.

Only parses options and runs streamer.hub.HubServer; it must never hold hub logic itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from streamer.core.errors import UsageError
from streamer.hub import HubServer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hub",
        help="run the signaling hub (signalhub-compatible HTTP API)",
        description="Run the signaling hub that peers use to find each other.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free)")
    parser.add_argument(
        "--redis", metavar="URL", default=None,
        help="share channels and names with other hubs through Redis, e.g. redis://127.0.0.1:6379",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is out of range; use 0-65535")
    if args.redis is not None and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--redis {args.redis!r} is not a Redis URL; use redis://HOST:PORT")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    server = HubServer(args.host, args.port, redis_url=args.redis)
    url = await server.start()
    print(f"hub listening on {url}", flush=True)
    stopped = asyncio.Event()
    # SIGTERM (service managers, test harnesses) stops as cleanly as Ctrl-C.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        await stopped.wait()
    finally:
        await server.stop()
