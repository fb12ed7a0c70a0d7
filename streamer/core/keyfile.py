"""Secret key files: one line of hex (the 64-byte Ed25519 secret key = seed || public key).

Writes are atomic, mode 0600, and never replace an existing file; reads raise KeyFileError with a
message that says which file is wrong and how. This module never logs or prints key material.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from streamer.core import crypto
from streamer.core.errors import KeyFileError

SECRET_KEY_BYTES = 64
_MAX_FILE_BYTES = 4096  # a key file is ~129 bytes; refuse to slurp something huge by mistake


def write_secret_key(path: str | os.PathLike[str], secret_key: bytes) -> None:
    """Create path holding secret_key in hex, readable by the owner only; KeyFileError if it exists."""
    _check_secret_key(secret_key, str(path))
    target = Path(path)
    if target.exists() or target.is_symlink():
        raise KeyFileError(
            f"{target} already exists; refusing to overwrite a key file (choose another --out)"
        )
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise KeyFileError(f"cannot write {target}: directory {directory} does not exist")
    tmp = directory / f".{target.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secret_key.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        # link() fails if the name appeared meanwhile, so an existing key is never replaced and a
        # reader never sees a half-written file.
        os.link(tmp, target)
    except FileExistsError:
        raise KeyFileError(
            f"{target} already exists; refusing to overwrite a key file (choose another --out)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot write {target}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(directory)


def read_secret_key(path: str | os.PathLike[str]) -> bytes:
    """The 64-byte secret key stored at path; KeyFileError if missing, unreadable or malformed."""
    target = Path(path)
    try:
        with open(target, "rb") as fh:
            raw = fh.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {target} does not exist (create one with `streamer keygen --out {target}`)"
        ) from None
    except IsADirectoryError:
        raise KeyFileError(f"key file {target} is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {target}: {exc.strerror}") from None
    if len(raw) > _MAX_FILE_BYTES:
        raise KeyFileError(f"{target} is not a key file (too large)")
    try:
        text = raw.decode("ascii").strip()
        secret_key = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(
            f"{target} is not a key file (expected {2 * SECRET_KEY_BYTES} hex characters)"
        ) from None
    _check_secret_key(secret_key, str(target))
    return secret_key


def key_pair_from_secret_key(secret_key: bytes) -> crypto.KeyPair:
    """The key pair of a 64-byte secret key (its last 32 bytes are the public key)."""
    return crypto.KeyPair(secret_key[32:], secret_key)


def _check_secret_key(secret_key: bytes, where: str) -> None:
    if len(secret_key) != SECRET_KEY_BYTES:
        raise KeyFileError(
            f"{where} is not a key file (expected {2 * SECRET_KEY_BYTES} hex characters, "
            f"got {2 * len(secret_key)})"
        )
    # The second half must be the public key of the first: catches edits and truncated copies.
    if crypto.key_pair(secret_key[:32]).public_key != secret_key[32:]:
        raise KeyFileError(f"{where} is damaged: its public key does not match its seed")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
