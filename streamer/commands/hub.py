"""`streamer hub`: run the signaling hub until Ctrl-C, printing its URL.

Only parses options and runs streamer.hub.HubServer; it must never hold hub logic itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time

from streamer.core.errors import UsageError
from streamer.hub import HubConfig, HubServer
from streamer.hub.server import tls_context
from streamer.hub.turn import (
    DEFAULT_TTL_S,
    MAX_TTL_S,
    MIN_TTL_S,
    IceConfig,
    check_ice_url,
    read_turn_secret,
)

log = logging.getLogger("streamer.hub")


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
    parser.add_argument(
        "--stun", metavar="URL", action="append", default=[],
        help="a STUN server peers should use, e.g. stun:turn.example.org:3478 (repeatable)",
    )
    parser.add_argument(
        "--turn", metavar="URL", action="append", default=[],
        help="a TURN server (coturn with use-auth-secret) peers get short-lived credentials "
        "for, e.g. turn:turn.example.org:3478 (repeatable; needs --turn-secret)",
    )
    parser.add_argument(
        "--turn-secret", metavar="FILE", default=None,
        help="file holding coturn's static-auth-secret (mode 0600); never published",
    )
    parser.add_argument(
        "--turn-ttl", metavar="S", type=int, default=DEFAULT_TTL_S,
        help=f"lifetime of the TURN credentials handed out, in seconds (default {DEFAULT_TTL_S})",
    )
    parser.add_argument("--tls-cert", metavar="FILE", default=None,
                        help="serve https with this PEM certificate chain (needs --tls-key)")
    parser.add_argument("--tls-key", metavar="FILE", default=None,
                        help="the PEM private key of --tls-cert")
    parser.set_defaults(func=run)


def ice_config(args: argparse.Namespace) -> IceConfig:
    """The ICE servers of GET /v1/ice from the options; UsageError on a bad combination."""
    if args.turn and args.turn_secret is None:
        raise UsageError("--turn needs --turn-secret FILE (coturn's static-auth-secret)")
    if args.turn_secret is not None and not args.turn:
        raise UsageError("--turn-secret needs at least one --turn URL")
    if not MIN_TTL_S <= args.turn_ttl <= MAX_TTL_S:
        raise UsageError(f"--turn-ttl {args.turn_ttl} is out of range; use {MIN_TTL_S}-{MAX_TTL_S}")
    return IceConfig(
        stun_urls=tuple(check_ice_url(u, turn=False) for u in args.stun),
        turn_urls=tuple(check_ice_url(u, turn=True) for u in args.turn),
        turn_secret=read_turn_secret(args.turn_secret) if args.turn_secret else None,
        ttl=args.turn_ttl,
    )


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is out of range; use 0-65535")
    if args.redis is not None and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--redis {args.redis!r} is not a Redis URL; use redis://HOST:PORT")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together; give both")
    args.ice = ice_config(args)
    args.ssl_context = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    server = HubServer(
        args.host, args.port, redis_url=args.redis, config=HubConfig(ice=args.ice),
        ssl_context=args.ssl_context,
    )
    url = await server.start()
    print(f"hub listening on {url}", flush=True)
    check = asyncio.ensure_future(_check_turn(args.ice)) if args.ice.turn_urls else None
    stopped = asyncio.Event()
    # SIGTERM (service managers, test harnesses) stops as cleanly as Ctrl-C.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        await stopped.wait()
    finally:
        if check is not None:
            check.cancel()
        await server.stop()


async def _check_turn(ice: IceConfig) -> None:
    """Try one allocation on each TURN server with credentials the hub makes, so a wrong
    --turn-secret or a TURN server that is down is named at once (the hub serves on regardless)."""
    from streamer.net.iceservers import probe_turn

    server = ice.answer(time.time())["iceServers"][-1]
    for url in server["urls"]:
        problem = await probe_turn(url, server["username"], server["credential"])
        if problem is None:
            log.info("TURN server %s accepts the hub's credentials", url)
        else:
            log.warning("%s; peers will not be able to relay through it", problem)
