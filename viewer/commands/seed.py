"""`viewer seed DIR`: parse the arguments and run viewer.archive.run_seed; no logic of its own.

It never prints a traceback for bad input: errors are SwarmcastErrors, one line each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from viewer.archive import run_seed
from viewer.netsource import add_network_options, default_hub


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "seed",
        help="keep an archived stream available to other viewers",
        description="Serve the stream archived in DIR (by viewer archive or viewer watch --store) "
        "to everyone in its swarm, for as long as this runs. Prints the stream key.",
    )
    parser.add_argument("directory", metavar="DIR", type=Path, help="a stream archive directory")
    add_network_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_seed(args.directory, args.hub or default_hub(), args.ice, args.hub_ca)
