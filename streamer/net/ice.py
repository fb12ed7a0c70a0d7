"""ICE as swarmcast uses it on top of aiortc/aioice: which route a connection took (direct or
relayed through a TURN server), and runtime patches of aioice (patch_aioice(); aioice itself is
not modified on disk) that make it prefer direct routes, give up a path that does not answer
within seconds, and stop waiting on dead ICE servers.

Prefer direct routes: aioice nominates aggressively (the controlling agent puts USE-CANDIDATE on every
check), so the first candidate pair whose check succeeds carries the connection for its whole
life. A pair through a TURN relay often answers first, even when a direct pair works too: the
direct check may wait for the NAT hole to open, the relay does not. In the NAT lab, viewers
behind NATs ended up relayed to a broadcaster with a public address. The patch holds back
checks of pairs that involve a relay candidate for RELAY_GRACE_S after checks begin, so a direct
pair that works is nominated first; when none works, the relay pair follows that much later.
Responses to the remote peer's checks are never delayed.

Paths that do not answer: aioice retransmits a connectivity check 6 times with a doubling
timeout (0.5 s to 32 s), so a candidate pair with no path behind it failed only after 63.5 s and
a dial to a peer nobody can reach (two symmetric NATs without TURN) ran into the swarm's 15 s
connect timeout, holding a neighbour slot and, for a viewer with no neighbour yet, delaying its
request for room. Checks now retransmit CHECK_RETRANSMISSIONS times: a pair that gets no answer
fails after 7.5 s, and a dial with no working pair fails then (a check that arrives from the
other side later still revives its pair, as RFC 8445 says, so a late peer still connects).

Dead ICE servers: aioice gives every connection's STUN and TURN queries up to 5 s and drops
failures silently, so an unreachable TURN server added 5 s to each side of every connection
(11 s per connection in the NAT lab) and a wrong TURN password went unnoticed. Now a server that
fails says so in one line naming the cause, and is left out of gathering for SERVER_RETRY_S
before it is tried again; the node keeps connecting with what still works.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aioice import ice as aioice_ice
from aioice import stun as aioice_stun

log = logging.getLogger(__name__)

RELAY_GRACE_S = 1.0  # one STUN retransmission (500 ms) plus margin for a hole to open
SERVER_RETRY_S = 60.0  # a failed STUN/TURN server is left out this long
GATHER_TIMEOUT_S = 5.0  # aioice's wait for STUN/TURN answers while gathering
CHECK_RETRANSMISSIONS = 3  # a connectivity check is sent at 0, 0.5, 1.5 and 3.5 s, failed at 7.5 s


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
    except AttributeError:
        return None
    return _route_of(connection)


def _route_of(connection: Any) -> Route | None:
    pair = getattr(connection, "_nominated", {}).get(1)
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


def patch_aioice() -> bool:
    """Install both patches (once per process); False, with a warning, if this aioice lacks
    what they wrap (then connections work as aioice alone makes them)."""
    connection_cls = aioice_ice.Connection
    if getattr(connection_cls, "_swarmcast_patched", False):
        return True
    needed = ("connect", "check_start", "_check_periodic", "check_start_task", "gather_candidates")
    if (
        not all(hasattr(connection_cls, n) for n in needed)
        or not hasattr(getattr(aioice_ice, "StunProtocol", None), "request")
        or getattr(aioice_ice.CandidatePair, "State", None) is None
        or not hasattr(aioice_ice, "relayed_candidate")
        or not hasattr(aioice_ice, "server_reflexive_candidate")
    ):
        log.warning("this aioice version cannot be patched: connections may be relayed where a "
                    "direct path exists, and a dead STUN/TURN server slows every connection")
        return False
    _prefer_direct_routes(connection_cls)
    _fail_unanswered_checks(aioice_ice.StunProtocol)
    _skip_dead_servers(connection_cls)
    setattr(connection_cls, "_swarmcast_patched", True)  # noqa: B010 (a foreign class)
    return True


def _prefer_direct_routes(connection_cls: Any) -> None:
    pair_states = aioice_ice.CandidatePair.State
    waiting, frozen = pair_states.WAITING, pair_states.FROZEN
    original_connect = connection_cls.connect
    original_check_start = connection_cls.check_start
    original_periodic = connection_cls._check_periodic

    async def connect(self: Any) -> None:
        setattr(self, _STARTED, time.monotonic())
        await original_connect(self)
        log.info("ICE connected: %s", _route_of(self))

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


# -- paths that do not answer ------------------------------------------------------------------


def _fail_unanswered_checks(protocol_cls: Any) -> None:
    original_request = protocol_cls.request

    async def request(
        self: Any, request: Any, addr: Any, integrity_key: bytes | None = None,
        retransmissions: int | None = None,
    ) -> Any:
        # Connectivity checks are the requests signed with the peer's ICE password (gathering
        # asks STUN servers unsigned; consent checks set their own count).
        if integrity_key is not None and retransmissions is None:
            retransmissions = CHECK_RETRANSMISSIONS
        return await original_request(
            self, request, addr, integrity_key=integrity_key, retransmissions=retransmissions
        )

    protocol_cls.request = request


# -- dead STUN/TURN servers ---------------------------------------------------------------------

_down_until: dict[tuple[str, str, int], float] = {}  # (STUN|TURN, host, port) -> monotonic time
_reported: dict[tuple[str, str, int], str] = {}  # the failure last logged for a server
_stun_answers: dict[tuple[str, str, int], int] = {}  # STUN queries answered, per server
_stun_failures: dict[tuple[str, str, int], str] = {}  # why a STUN query last failed


def _server_key(kind: str, server: Any) -> tuple[str, str, int]:
    return (kind, str(server[0]), int(server[1]))


def server_down(kind: str, server: Any, reason: str) -> None:
    """Leave `server` out for SERVER_RETRY_S; one warning line per server and cause."""
    key = _server_key(kind, server)
    _down_until[key] = time.monotonic() + SERVER_RETRY_S
    if _reported.get(key) != reason:
        _reported[key] = reason
        log.warning(
            "%s server %s:%d %s; connecting without it (retried every %.0f s)",
            kind, key[1], key[2], reason, SERVER_RETRY_S,
        )


def server_up(kind: str, server: Any) -> None:
    key = _server_key(kind, server)
    _down_until.pop(key, None)
    if _reported.pop(key, None) is not None:
        log.warning("%s server %s:%d works again", kind, key[1], key[2])


def server_is_down(kind: str, server: Any) -> bool:
    until = _down_until.get(_server_key(kind, server))
    return until is not None and until > time.monotonic()


def describe_failure(
    exc: BaseException, elapsed: float, username: str | None, *,
    timeout: float = GATHER_TIMEOUT_S, now: float | None = None,
) -> str | None:
    """Why a STUN/TURN query (or a TURN allocation) failed, in words that follow "TURN server
    HOST:PORT"; None if it was only cut short by its caller. The one wording of such failures,
    at gathering time (the patches below) and in the checks of streamer.net.iceservers."""
    if isinstance(exc, asyncio.CancelledError):
        # aioice cancels what has not answered when its gathering timeout ends.
        return None if elapsed < timeout * 0.9 else f"did not answer within {timeout:.0f} s"
    if isinstance(exc, asyncio.TimeoutError):
        return f"did not answer within {timeout:.0f} s"
    if isinstance(exc, aioice_stun.TransactionFailed):
        code, why = exc.response.attributes.get("ERROR-CODE", (0, "error"))
        if code == 401:
            return _credentials_refused(username, why, time.time() if now is None else now)
        if code == 486:
            return f"has no allocation left for this user ({code} {why}): raise its user-quota"
        return f"refused the request ({code} {why})"
    if isinstance(exc, aioice_stun.TransactionTimeout):
        return "did not answer"
    if isinstance(exc, OSError):
        return f"cannot be reached ({exc.strerror or exc})"
    return f"failed ({exc.__class__.__name__}: {exc})"


def _credentials_refused(username: str | None, why: str, now: float) -> str:
    """A 401: a user name "<expiry>:<id>" is a short-lived credential of the hub (coturn's
    use-auth-secret scheme), any other one the user's own."""
    head = (username or "").split(":", 1)[0]
    if not head.isdigit():
        return f"refused the credentials of user {username!r} (401 {why}): check the user and password"
    expiry = int(head)
    if expiry <= now:
        return (
            f"refused the credential: it expired at Unix time {expiry} ({int(now - expiry)} s "
            f"ago); check the clocks of the hub and this machine"
        )
    return (
        f"refused the hub's credentials (401 {why}): the hub's --turn-secret differs from the "
        "TURN server's static-auth-secret, or their clocks differ"
    )


def _skip_dead_servers(connection_cls: Any) -> None:
    original_gather = connection_cls.gather_candidates
    original_relayed = aioice_ice.relayed_candidate
    original_reflexive = aioice_ice.server_reflexive_candidate

    async def gather_candidates(self: Any) -> None:
        if self.turn_server and server_is_down("TURN", self.turn_server):
            self.turn_server = None
        if self.stun_server and server_is_down("STUN", self.stun_server):
            self.stun_server = None
        stun = self.stun_server
        key = _server_key("STUN", stun) if stun else None
        answers_before = _stun_answers.get(key, 0) if key else 0
        if key is not None:
            _stun_failures.pop(key, None)
        await original_gather(self)
        if key is None:
            return
        # STUN is asked from every local address; it is down only if none got an answer.
        if _stun_answers.get(key, 0) > answers_before:
            server_up("STUN", stun)
        elif key in _stun_failures:
            server_down("STUN", stun, _stun_failures[key])

    async def relayed_candidate(**kwargs: Any) -> Any:
        server = kwargs["turn_server"]
        started = time.monotonic()
        try:
            result = await original_relayed(**kwargs)
        except BaseException as e:
            reason = describe_failure(e, time.monotonic() - started, kwargs.get("turn_username"))
            if reason is not None:
                server_down("TURN", server, reason)
            raise
        server_up("TURN", server)
        return result

    async def server_reflexive_candidate(protocol: Any, stun_server: Any) -> Any:
        key = _server_key("STUN", stun_server)
        started = time.monotonic()
        try:
            result = await original_reflexive(protocol, stun_server)
        except BaseException as e:
            reason = describe_failure(e, time.monotonic() - started, None)
            if reason is not None:
                _stun_failures[key] = reason
            raise
        _stun_answers[key] = _stun_answers.get(key, 0) + 1
        return result

    connection_cls.gather_candidates = gather_candidates
    aioice_ice.relayed_candidate = relayed_candidate
    aioice_ice.server_reflexive_candidate = server_reflexive_candidate
