"""What a signaling message looks like on the hub's wire: a POSTed JSON body in, one SSE `data:`
frame out (sans-IO).

Checks on the messages themselves (such as authenticating them) belong here, between
decode_body() and sse_frame().
"""

from __future__ import annotations

import json
from typing import Any

HEARTBEAT_FRAME = b":heartbeat signal\n\n"


def decode_body(body: bytes) -> Any:
    """The JSON value of a POSTed body; raises ValueError if it is not JSON (or not UTF-8)."""
    return json.loads(body)


def is_make_room(message: Any) -> bool:
    """Whether a message asks its receiver to drop a neighbour (a swarmcast hello with evict):
    the one kind of message whose rate per client address the hub bounds on its own."""
    return isinstance(message, dict) and message.get("evict") is True


def encode_message(message: Any) -> bytes:
    """Compact JSON for one SSE data line (a newline in a posted body would split the event)."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate escape cannot be UTF-8: keep it escaped.
        return json.dumps(message, separators=(",", ":")).encode()


def sse_frame(data: bytes) -> bytes:
    """One Server-Sent Event carrying `data` (a single line of encoded JSON)."""
    return b"data: " + data + b"\n\n"
