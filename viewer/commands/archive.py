"""`viewer archive KEY|NAME DIR`: parse the arguments and run viewer.archive; no logic of its own.

It never prints a traceback for bad input: errors are SwarmcastErrors, one line each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from viewer.archive import ArchiveOptions, run_archive
from viewer.netsource import add_network_options, default_hub


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "archive",
        help="fetch a whole stream into a directory (resumable)",
        description="Fetch every block of the stream into DIR, checking each against the "
        "broadcaster's signature. Interrupt it any time: running it again resumes. With --follow "
        "it keeps up with a live stream until the broadcaster ends it.",
    )
    parser.add_argument("stream", metavar="KEY|NAME", help="stream key (64 hex digits) or name")
    parser.add_argument("directory", metavar="DIR", type=Path, help="where to keep the stream")
    add_network_options(parser)
    parser.add_argument(
        "--follow", action="store_true", help="keep fetching the live stream until it ends"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up after S seconds without peers or progress (default 30)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_archive(
        ArchiveOptions(
            stream=args.stream,
            directory=args.directory,
            hub=args.hub or default_hub(),
            follow=args.follow,
            timeout=args.timeout,
            ice=args.ice,
            hub_ca=args.hub_ca,
        )
    )
