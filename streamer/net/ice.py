"""ICE as swarmcast uses it on top of aiortc/aioice: which route a connection took (direct or
relayed through a TURN server), and a runtime patch that makes aioice prefer direct routes.

Why the patch: aioice nominates aggressively (the controlling agent puts USE-CANDIDATE on every
check), so the first candidate pair whose check succeeds carries the connection for its whole
life. A pair through a TURN relay often answers first, even when a direct pair works too: the
direct check may wait for the NAT hole to open, the relay does not. In the NAT lab, viewers
behind NATs ended up relayed to a broadcaster with a public address. The patch holds back
checks of pairs that involve a relay candidate for RELAY_GRACE_S after checks begin, so a direct
pair that works is nominated first; when none works, the relay pair follows that much later.
Responses to the remote peer's checks are never delayed. aioice itself is not modified on disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aioice import ice as aioice_ice

log = logging.getLogger(__name__)

RELAY_GRACE_S = 1.0  # one STUN retransmission (500 ms) plus margin for a hole to open


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


# -- prefer direct routes ---------------------------------------------------------------------

_STARTED = "_swarmcast_checks_started"


def _relayed(pair: Any) -> bool:
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)


def _grace_left(connection: Any) -> float:
    started = getattr(connection, _STARTED, None)
    if started is None:
        return 0.0
    return max(0.0, started + RELAY_GRACE_S - time.monotonic())


def prefer_direct_routes() -> bool:
    """Patch aioice's Connection (once per process) so relayed pairs are checked only after
    RELAY_GRACE_S; False, with a warning, if this aioice lacks the methods the patch wraps."""
    connection_cls = aioice_ice.Connection
    if getattr(connection_cls, "_swarmcast_prefers_direct", False):
        return True
    needed = ("connect", "check_start", "_check_periodic", "check_start_task")
    pair_states = getattr(aioice_ice.CandidatePair, "State", None)
    if not all(hasattr(connection_cls, n) for n in needed) or pair_states is None:
        log.warning("this aioice version cannot be patched to prefer direct routes; "
                    "connections may be relayed when a direct path exists")
        return False
    waiting, frozen = pair_states.WAITING, pair_states.FROZEN
    original_connect = connection_cls.connect
    original_check_start = connection_cls.check_start
    original_periodic = connection_cls._check_periodic

    async def connect(self: Any) -> None:
        setattr(self, _STARTED, time.monotonic())
        await original_connect(self)

    def check_periodic(self: Any) -> bool:
        # The paced checks (RFC 8445 Ta timer): while in the grace period, start only pairs
        # without a relay, and keep ticking so the relayed ones start once it is over.
        if _grace_left(self) <= 0:
            return bool(original_periodic(self))
        if self._check_list_done:
            return False
        for state in (waiting, frozen):
            for pair in self._check_list:
                if pair.state == state and not _relayed(pair):
                    self.check_start_task(pair)
                    return True
        return True

    async def check_start(self: Any, pair: Any) -> None:
        # Triggered checks of relayed pairs wait for the grace period too.
        if _relayed(pair):
            left = _grace_left(self)
            if left > 0:
                await asyncio.sleep(left)
        await original_check_start(self, pair)

    connection_cls.connect = connect
    connection_cls.check_start = check_start
    connection_cls._check_periodic = check_periodic
    connection_cls._swarmcast_prefers_direct = True
    return True
