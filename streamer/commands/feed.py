"""`streamer feed info|verify|append`: inspect, check and extend a feed directory.

A thin layer over streamer.core.feed: every problem surfaces as a SwarmcastError (one line, exit
1 via cli.py). `append` reads every input file before touching the feed, so bad input writes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamer.core import keyfile, storage
from streamer.core.errors import UsageError
from streamer.core.feed import Feed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("feed", help="inspect, verify or append to a feed directory")
    sub = parser.add_subparsers(dest="feed_command", metavar="ACTION")
    sub.required = True

    info = sub.add_parser("info", help="print a feed's key, length, hashes and signature")
    info.add_argument("dir", metavar="DIR")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)

    verify = sub.add_parser("verify", help="recheck every present block against tree and signature")
    verify.add_argument("dir", metavar="DIR")
    verify.set_defaults(func=run_verify)

    append = sub.add_parser("append", help="append each FILE as one block (creates the feed)")
    append.add_argument("dir", metavar="DIR")
    append.add_argument(
        "--key", metavar="FILE", required=True, help="secret key file (streamer keygen)"
    )
    append.add_argument("files", metavar="FILE", nargs="+", help="one block per file")
    append.set_defaults(func=run_append)


def feed_info(feed: Feed) -> dict[str, object]:
    """The `feed info` fields, binary values in hex."""
    return {
        "key": feed.key.hex(),
        "discovery_key": feed.discovery_key.hex(),
        "length": feed.length,
        "byte_length": feed.byte_length,
        "tree_hash": feed.tree_hash().hex(),
        "signature": feed.signature.hex() if feed.signature is not None else None,
        "fork": feed.fork,
        "writable": feed.writable,
        "blocks_present": feed.blocks_present,
        "contiguous_length": feed.contiguous_length,
    }


def run_info(args: argparse.Namespace) -> int:
    with Feed.open(args.dir) as feed:
        info = feed_info(feed)
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for name, value in info.items():
            shown = (
                "-" if value is None else str(value).lower() if isinstance(value, bool) else value
            )
            print(f"{name:<{width}}  {shown}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    with Feed.open(args.dir) as feed:
        feed.verify_all()
        print(f"ok: {feed.blocks_present} of {feed.length} blocks present, all verified")
    return 0


def run_append(args: argparse.Namespace) -> int:
    secret_key = keyfile.read_secret_key(args.key)
    blocks = [_read_block(Path(name)) for name in args.files]
    if storage.is_feed(args.dir):
        feed = Feed.open(args.dir, secret_key=secret_key)
    else:
        feed = Feed.create(args.dir, keyfile.key_pair_from_secret_key(secret_key))
    with feed:
        length = feed.append(blocks)
    print(f"appended {len(blocks)} block(s); length {length}")
    return 0


def _read_block(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory; give one file per block") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
