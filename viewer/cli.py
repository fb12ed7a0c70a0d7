"""The `viewer` command: parses argv, configures logging, dispatches to viewer.commands.*."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from streamer import __version__
from streamer.cli import run

COMMAND_MODULES = ("watch", "archive", "export", "seed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="viewer", description="swarmcast: watch, archive, export and seed a stream"
    )
    parser.add_argument("--version", action="version", version=f"swarmcast {__version__}")
    parser.add_argument("--debug", action="store_true", help="verbose logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"viewer.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name in (f"viewer.commands.{name}", "viewer.commands"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
