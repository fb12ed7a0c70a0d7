"""`viewer watch KEY|NAME`: parse the arguments and run viewer.watch; no logic of its own.

It never prints a traceback for bad input: errors are SwarmcastErrors, one line each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streamer.core.backfill import DEFAULT_KEEP
from streamer.core.errors import UsageError
from viewer.netsource import add_network_options, default_hub
from viewer.store import DEFAULT_MAX_STORE, parse_keep_option, parse_store_size
from viewer.watch import WatchOptions, run_watch


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "watch",
        help="watch a stream in the browser (and re-share it)",
        description="Join the stream's swarm, fetch its newest block (or the one at --at), and "
        "play it on a local page at http://127.0.0.1:PORT/ (HLS at /live.m3u8, stats at "
        "/stats). Everything fetched is kept in --store and shared with other viewers.",
    )
    parser.add_argument("stream", metavar="KEY|NAME", help="stream key (64 hex digits) or name")
    add_network_options(parser)
    parser.add_argument("--port", type=int, default=0, help="local page port (default: any free)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument(
        "--store",
        metavar="DIR",
        type=Path,
        help="where to keep the stream (default: $XDG_DATA_HOME/swarmcast/<key>)",
    )
    parser.add_argument("--at", type=float, metavar="SECONDS", help="start at this stream time")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up if the stream cannot be fetched within S seconds (default: keep waiting "
        "for peers and retrying)",
    )
    parser.add_argument(
        "--max-peers", type=int, default=6, metavar="N",
        help="keep at most N neighbours (default 6)",
    )
    parser.add_argument(
        "--keep",
        metavar="N|all|0",
        default=str(DEFAULT_KEEP),
        help="also fetch history with spare bandwidth until every block is held by N peers "
        f"besides the broadcaster (default {DEFAULT_KEEP}; all: keep a full copy; 0: opt out)",
    )
    parser.add_argument(
        "--max-store",
        metavar="SIZE",
        help=f"keep at most SIZE on disk, e.g. 500M (default {DEFAULT_MAX_STORE}; the oldest "
        "well-replicated blocks are evicted first; not with --keep all)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    keep = parse_keep_option(args.keep)
    if keep is None and args.max_store is not None:
        raise UsageError("--keep all keeps a full copy; it does not go with --max-store")
    max_store = None if keep is None else parse_store_size(args.max_store or DEFAULT_MAX_STORE)
    return run_watch(
        WatchOptions(
            stream=args.stream,
            hub=args.hub or default_hub(),
            port=args.port,
            store=args.store,
            at=args.at,
            timeout=args.timeout,
            open_browser=not args.no_browser,
            max_peers=args.max_peers,
            ice=args.ice,
            hub_ca=args.hub_ca,
            keep=keep,
            max_store=max_store,
        )
    )
