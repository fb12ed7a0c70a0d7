"""The `streamer` command: parses argv, configures logging, dispatches to streamer.commands.*.

Every SwarmcastError becomes one line on stderr and exit status 1; Ctrl-C exits 130. No tracebacks
reach the user unless --debug is given.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from streamer import __version__
from streamer.core.errors import SwarmcastError

# Each module in streamer.commands exposes register(subparsers); the handler it sets as
# `func` receives the parsed namespace and returns an exit status.
COMMAND_MODULES = ("keygen", "feed", "broadcast", "hub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer", description="swarmcast: peer-to-peer live streaming, broadcaster side"
    )
    parser.add_argument("--version", action="version", version=f"swarmcast {__version__}")
    parser.add_argument("--debug", action="store_true", help="verbose logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"streamer.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"streamer.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Shared runner for both CLIs: parse, set up logging, call the handler, map errors."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s" if args.debug else "%(message)s",
        stream=sys.stderr,
    )
    if not args.debug:
        for noisy in ("aioice", "aiortc", "aiohttp.access", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except SwarmcastError as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
