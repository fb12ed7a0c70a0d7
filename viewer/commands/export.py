"""`viewer export DIR OUT.mp4 [--from S] [--to S]`: remux an archived stream into a plain MP4.

It only parses arguments and reports; the work is viewer.export.export_feed. It never prints a
traceback for bad input: errors are SwarmcastErrors, which the CLI turns into one line.
"""

from __future__ import annotations

import argparse
import sys

from viewer.export import export_feed


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="remux an archived stream into a plain MP4 (no re-encode)",
        description="Remux the stream feed in DIR into OUT (a plain MP4 any player opens). "
        "--from/--to are seconds from the stream start; the cut falls on the segment "
        "boundaries around them.",
    )
    parser.add_argument("directory", metavar="DIR", help="a stream feed directory (an archive)")
    parser.add_argument("out", metavar="OUT.mp4", help="the MP4 file to write")
    parser.add_argument("--from", dest="start", type=float, metavar="S", help="start at S seconds")
    parser.add_argument("--to", dest="end", type=float, metavar="S", help="stop at S seconds")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = export_feed(args.directory, args.out, start=args.start, end=args.end)
    if result.partial:
        print(f"viewer: warning: {result.note}", file=sys.stderr)
    print(
        f"wrote {result.out}: {result.duration:.1f} s from {result.start:.1f} s "
        f"(blocks {result.first_block}..{result.last_block})"
    )
    return 0
