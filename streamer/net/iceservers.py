"""Which STUN/TURN servers a node's peer connections use: the user's (--ice or
SWARMCAST_ICE_SERVERS) if set, otherwise the ones its hub hands out at GET /v1/ice, with TURN
credentials refreshed before they expire; and a check of each TURN server, so that one that
refuses its credentials or does not answer is named in one log line and left out of new dials
(waiting for it would delay every dial) while STUN and direct paths keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aioice import stun, turn
from aiortc import RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri

from streamer.core.errors import NetworkError
from streamer.net.rtc import ICE_ENV, parse_ice_servers

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0  # a TURN server that has not allocated within this is left out
RETRY_S = 30.0  # a hub that gave no ICE answer (or a TURN server that failed) is asked again
NONE = "none"  # --ice none / SWARMCAST_ICE_SERVERS=none: no STUN/TURN at all, even from the hub

FetchIce = Callable[[], Awaitable[dict[str, Any] | None]]


def user_ice_servers(spec: str | None) -> list[RTCIceServer] | None:
    """The servers the user chose: `spec` (from --ice), else $SWARMCAST_ICE_SERVERS; None when
    neither is set (then the hub's are used). "none" means no servers at all."""
    if spec is None:
        spec = os.environ.get(ICE_ENV) or None
    if spec is None:
        return None
    if spec.strip().lower() == NONE:
        return []
    return parse_ice_servers(spec)


def servers_from_answer(body: object) -> tuple[list[RTCIceServer], float | None]:
    """The servers of a GET /v1/ice answer and the expiry (Unix time) of its TURN credentials.
    NetworkError if the answer does not have the documented shape."""
    if not isinstance(body, dict) or not isinstance(body.get("iceServers"), list):
        raise NetworkError("the hub's /v1/ice answer has no iceServers list")
    servers: list[RTCIceServer] = []
    for item in body["iceServers"]:
        if not isinstance(item, dict):
            raise NetworkError("the hub's /v1/ice answer has an entry that is not an object")
        urls = item.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise NetworkError("the hub's /v1/ice answer has an entry without urls")
        username, credential = item.get("username"), item.get("credential")
        if username is not None and not isinstance(username, str):
            raise NetworkError("the hub's /v1/ice answer has a username that is not a string")
        if credential is not None and not isinstance(credential, str):
            raise NetworkError("the hub's /v1/ice answer has a credential that is not a string")
        servers.append(RTCIceServer(urls=urls, username=username, credential=credential))
    expires = body.get("expires")
    return servers, float(expires) if isinstance(expires, (int, float)) else None


def _urls(server: RTCIceServer) -> list[str]:
    return [server.urls] if isinstance(server.urls, str) else list(server.urls)


async def probe_turn(
    url: str, username: str | None, credential: str | None, *, from_hub: bool,
    timeout: float = PROBE_TIMEOUT_S, now: float | None = None,
) -> str | None:
    """Try one allocation on the TURN server `url` with these credentials and release it.
    None if it worked, else one line naming the cause."""
    try:
        parsed = parse_stun_turn_uri(url)
    except ValueError:
        return f"TURN server {url!r} is not a turn: or turns: URL"
    server = (parsed["host"], parsed["port"])
    secure = parsed["scheme"] == "turns"
    try:
        transport, _ = await asyncio.wait_for(
            turn.create_turn_endpoint(
                asyncio.DatagramProtocol, server, username, credential,
                ssl=secure, transport=parsed["transport"],
            ),
            timeout,
        )
    except stun.TransactionFailed as exc:
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "error"))
        if code == 401:
            return _unauthorized(url, username, from_hub, time.time() if now is None else now)
        if code == 486:
            return f"TURN server {url} has no allocation left for this user (486 {reason}); "\
                "raise its user-quota"
        return f"TURN server {url} refused an allocation ({code} {reason})"
    except (asyncio.TimeoutError, stun.TransactionTimeout):
        return (
            f"TURN server {url} did not answer within {timeout:.0f} s; check that it runs and "
            f"that {parsed['transport'].upper()} port {server[1]} is reachable"
        )
    except OSError as exc:
        return f"TURN server {url} is unreachable ({exc.strerror or exc})"
    except (ConnectionError, ValueError) as exc:
        return f"TURN server {url} failed ({exc})"
    transport.close()
    return None


def _unauthorized(url: str, username: str | None, from_hub: bool, now: float) -> str:
    expiry = None
    if username:
        head = username.split(":", 1)[0]
        expiry = int(head) if head.isdigit() else None
    if expiry is not None and expiry <= now:
        return (
            f"TURN server {url} refused the credential: it expired at Unix time {expiry} "
            f"({int(now - expiry)} s ago); check the clocks of the hub and this machine"
        )
    if from_hub:
        return (
            f"TURN server {url} refused the hub's credentials (401): the hub's --turn-secret "
            "differs from the TURN server's static-auth-secret, or their clocks differ"
        )
    return f"TURN server {url} refused user {username!r} (401); check the user and password"


async def usable(
    servers: list[RTCIceServer], *, from_hub: bool, warned: set[str],
) -> list[RTCIceServer]:
    """`servers` without the TURN URLs that fail a probe (each failure logged once per cause)."""
    kept: list[RTCIceServer] = []
    for server in servers:
        urls = _urls(server)
        turn_urls = [u for u in urls if u.startswith(("turn:", "turns:"))]
        good = [u for u in urls if u not in turn_urls]
        results = await asyncio.gather(*(
            probe_turn(u, server.username, server.credential, from_hub=from_hub)
            for u in turn_urls
        ))
        for url, problem in zip(turn_urls, results, strict=True):
            if problem is None:
                good.append(url)
            elif problem not in warned:
                warned.add(problem)
                log.warning("%s; relaying through it is off, direct and STUN paths still work",
                            problem)
        if good:
            kept.append(RTCIceServer(urls=good, username=server.username,
                                     credential=server.credential))
    return kept


class IceServers:
    """The ICE servers for new peer connections of one node.

    With `user` servers (a list, maybe empty) only those are used. Otherwise `fetch` asks the
    hubs (GET /v1/ice); the answer is refreshed once half the credentials' lifetime has passed,
    and retried every 30 s while no hub answers. Failing TURN servers are left out either way.
    """

    def __init__(self, user: list[RTCIceServer] | None, fetch: FetchIce) -> None:
        self._user = user
        self._fetch = fetch
        self._servers: list[RTCIceServer] = []
        self._refresh_at = 0.0  # monotonic time of the next hub fetch (0: now)
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self._ready = asyncio.Event()

    @property
    def from_hub(self) -> bool:
        return self._user is None

    def current(self) -> list[RTCIceServer]:
        """The servers to use now; starts a refresh in the background when one is due."""
        if self._task is None or self._task.done():
            if not self._ready.is_set() or time.monotonic() >= self._refresh_at:
                self._task = asyncio.ensure_future(self._update())
        return list(self._servers)

    async def wait_ready(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the first list: the user's checked, or the hub's."""
        self.current()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _update(self) -> None:
        if self._user is not None:
            self._servers = await usable(self._user, from_hub=False, warned=self._warned)
            self._refresh_at = float("inf")
            self._ready.set()
            return
        try:
            body = await self._fetch()
            servers, expires = servers_from_answer(body) if body is not None else ([], None)
        except NetworkError as exc:
            # The hub's own subscription already says (once) why it cannot be reached.
            log.debug("no ICE servers from the hub (%s); asking again in %.0f s", exc, RETRY_S)
            self._refresh_at = time.monotonic() + RETRY_S
            return
        self._servers = await usable(servers, from_hub=True, warned=self._warned)
        dropped = sum(map(len, map(_urls, servers))) - sum(map(len, map(_urls, self._servers)))
        lifetime = (expires - time.time()) if expires is not None else None
        if lifetime is None:
            self._refresh_at = float("inf") if body is not None else time.monotonic() + RETRY_S
        else:
            # Half-way through the credentials' life, with jitter so a swarm does not ask at once.
            self._refresh_at = time.monotonic() + max(RETRY_S, lifetime / 2 * random.uniform(0.8, 1))
        if dropped:
            # A TURN server that failed may be fixed or started later: check again soon.
            self._refresh_at = min(self._refresh_at, time.monotonic() + 2 * RETRY_S)
        self._ready.set()

