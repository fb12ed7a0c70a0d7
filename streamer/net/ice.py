"""What ICE chose for a peer connection: the selected candidate pair, read from aiortc/aioice,
described as direct or relayed (through a TURN server) for logs, tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Route:
    """The candidate pair a connection settled on: candidate types and addresses of both ends."""

    local_type: str  # host, srflx, prflx or relay
    local: tuple[str, int]
    remote_type: str
    remote: tuple[str, int]

    @property
    def relayed(self) -> bool:
        """True when the data passes through a TURN relay (ours, the peer's or both)."""
        return "relay" in (self.local_type, self.remote_type)

    def __str__(self) -> str:
        kind = "relayed" if self.relayed else "direct"
        return (
            f"{kind} ({self.local_type} {self.local[0]}:{self.local[1]} -> "
            f"{self.remote_type} {self.remote[0]}:{self.remote[1]})"
        )


def selected_route(pc: Any) -> Route | None:
    """The route of an aiortc RTCPeerConnection's data channel once ICE has nominated a pair,
    else None. (aiortc has no getStats() entry for it, so this reads aioice's nominated pair.)"""
    try:
        connection = pc.sctp.transport.transport._connection
        pair = connection._nominated.get(1)
    except AttributeError:
        return None
    if pair is None:
        return None
    local, remote = pair.local_candidate, pair.remote_candidate
    return Route(local.type, (local.host, local.port), remote.type, (remote.host, remote.port))
