"""Short-lived TURN credentials (coturn's `use-auth-secret` REST scheme) and the ICE server list
the hub hands out at GET /v1/ice; plus reading the shared secret from its file.

username = "<expiry unix time>:<random id>", password = base64(HMAC-SHA1(secret, username)).
coturn, configured with the same `static-auth-secret`, recomputes the password and refuses the
username once its expiry time has passed, so no long-lived TURN password is ever published.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.core.errors import KeyFileError, UsageError

MIN_SECRET_BYTES = 16  # shorter secrets are guessable from one credential
_MAX_SECRET_FILE = 4096
MIN_TTL_S = 60
MAX_TTL_S = 7 * 24 * 3600
DEFAULT_TTL_S = 6 * 3600


def turn_password(secret: bytes, username: str) -> str:
    """coturn's REST password for `username`: base64 of HMAC-SHA1 keyed with the shared secret."""
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()


def turn_credentials(
    secret: bytes, ttl: int, now: float, user_id: str | None = None
) -> tuple[str, str]:
    """A (username, password) pair valid until `now + ttl` (Unix seconds)."""
    username = f"{int(now) + ttl}:{user_id or secrets.token_hex(8)}"
    return username, turn_password(secret, username)


def credential_expiry(username: str) -> int | None:
    """The expiry time encoded in a REST-scheme username, or None if it has none."""
    head = username.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def check_ice_url(url: str, *, turn: bool) -> str:
    """`url` if it is a usable STUN (turn=False) or TURN (turn=True) URL; UsageError otherwise.
    A TURN URL must not carry a user or password: the hub makes those."""
    schemes = ("turn:", "turns:") if turn else ("stun:", "stuns:")
    option = "--turn" if turn else "--stun"
    if not url.startswith(schemes):
        raise UsageError(
            f"{option} {url!r} must start with {' or '.join(schemes)}, "
            f"e.g. {schemes[0]}turn.example.org:3478"
        )
    rest = url.split(":", 1)[1]
    if "@" in rest:
        raise UsageError(
            f"{option} {url!r} carries a user name; give the bare URL (the hub makes short-lived "
            "credentials from --turn-secret)"
        )
    host = rest.split("?", 1)[0].rsplit(":", 1)[0].strip("[]")
    if not host:
        raise UsageError(f"{option} {url!r} has no host; e.g. {schemes[0]}turn.example.org:3478")
    return url


@dataclass(frozen=True, slots=True)
class IceConfig:
    """What GET /v1/ice serves: STUN URLs as they are, TURN URLs with fresh credentials."""

    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: bytes | None = None
    ttl: int = DEFAULT_TTL_S

    def answer(self, now: float) -> dict[str, Any]:
        """The JSON body of GET /v1/ice at time `now`: RTCConfiguration's `iceServers` shape
        (a browser passes it straight to RTCPeerConnection) plus the credential lifetime."""
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        body: dict[str, Any] = {"iceServers": servers}
        if self.turn_urls and self.turn_secret is not None:
            username, password = turn_credentials(self.turn_secret, self.ttl, now)
            servers.append(
                {"urls": list(self.turn_urls), "username": username, "credential": password}
            )
            body["ttl"] = self.ttl
            body["expires"] = credential_expiry(username)
        return body


def read_turn_secret(path: str | os.PathLike[str]) -> bytes:
    """The shared TURN secret stored in `path` (its text, stripped): the same string as coturn's
    `static-auth-secret`. KeyFileError unless the file is private (no group/other access),
    readable and at least 16 characters long."""
    target = Path(path)
    try:
        with open(target, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            raw = fh.read(_MAX_SECRET_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(
            f"TURN secret file {target} does not exist; create it with "
            f"`(umask 077; openssl rand -hex 32 > {target})`"
        ) from None
    except IsADirectoryError:
        raise KeyFileError(f"TURN secret file {target} is a directory") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read TURN secret file {target}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFileError(
            f"TURN secret file {target} is readable by others (mode "
            f"{stat.S_IMODE(mode):04o}); run `chmod 600 {target}`"
        )
    if len(raw) > _MAX_SECRET_FILE:
        raise KeyFileError(f"{target} is not a TURN secret file (too large)")
    try:
        secret = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(
            f"TURN secret file {target} is not text; write the static-auth-secret as one line"
        ) from None
    if len(secret) < MIN_SECRET_BYTES or any(c.isspace() for c in secret):
        raise KeyFileError(
            f"TURN secret in {target} must be one word of at least {MIN_SECRET_BYTES} characters; "
            f"make one with `openssl rand -hex 32`"
        )
    return secret.encode()
