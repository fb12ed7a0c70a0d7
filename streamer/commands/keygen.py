"""`streamer keygen [--seed HEX] --out FILE`: write a new secret key file, print its public key.

The key file is created with mode 0600 and never overwrites an existing file; the secret key is
never printed.
"""

from __future__ import annotations

import argparse

from streamer.core import crypto, keyfile
from streamer.core.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="create a broadcaster key file",
        description="Create an Ed25519 secret key file (mode 0600) and print the public key in hex.",
    )
    parser.add_argument("--seed", metavar="HEX", help="32-byte seed in hex (deterministic key)")
    parser.add_argument(
        "--out", metavar="FILE", required=True, help="where to write the secret key"
    )
    parser.set_defaults(func=run)


def parse_seed(text: str) -> bytes:
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise UsageError("--seed must be hex (64 hex characters = 32 bytes)") from None
    if len(seed) != 32:
        raise UsageError(f"--seed must be 32 bytes (64 hex characters), got {len(seed)} bytes")
    return seed


def run(args: argparse.Namespace) -> int:
    seed = parse_seed(args.seed) if args.seed is not None else None
    pair = crypto.key_pair(seed)
    keyfile.write_secret_key(args.out, pair.secret_key)
    print(pair.public_key.hex())
    return 0
