"""Which STUN/TURN servers a node's peer connections use: the user's (--ice or
SWARMCAST_ICE_SERVERS) if set, otherwise the ones its hub hands out at GET /v1/ice, with TURN
credentials refreshed before they expire; and a check of each TURN server (one allocation) before
it is handed to new dials, so that one that refuses its credentials or does not answer is left
out while STUN and direct paths keep working.

How aioice then uses the servers is streamer.net.ice's: the wording of a server's failure
(describe_failure), the one log line per server and cause, and how long a failed server is left
out (server_down, SERVER_RETRY_S) are its rules, used here as they are at gathering time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aioice import stun, turn
from aiortc import RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri

from streamer.core.errors import NetworkError, UsageError
from streamer.net import ice

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = ice.GATHER_TIMEOUT_S  # a TURN server that has not allocated within this is left out
RETRY_S = 30.0  # a hub that gave no ICE answer is asked again this often
NONE = "none"  # --ice none / SWARMCAST_ICE_SERVERS=none: no STUN/TURN at all, even from the hub

ICE_ENV = "SWARMCAST_ICE_SERVERS"

FetchIce = Callable[[], Awaitable[dict[str, Any] | None]]


def parse_ice_servers(spec: str) -> list[RTCIceServer]:
    """ICE servers from a JSON list (of URL strings or {"urls", "username", "credential"} objects)
    or a comma-separated list of `stun:host:port` / `turn:user:pass@host:port` URLs."""
    spec = spec.strip()
    if not spec:
        return []
    if spec.startswith("["):
        try:
            items = json.loads(spec)
        except json.JSONDecodeError as e:
            raise UsageError(
                f"ICE server list is not valid JSON ({e.msg}); fix {ICE_ENV}"
            ) from None
        return [_ice_server_from_json(item) for item in items]
    return [_ice_server_from_url(url.strip()) for url in spec.split(",") if url.strip()]


def _ice_server_from_json(item: object) -> RTCIceServer:
    if isinstance(item, str):
        return _ice_server_from_url(item)
    if isinstance(item, dict) and isinstance(item.get("urls"), (str, list)):
        return RTCIceServer(
            urls=item["urls"], username=item.get("username"), credential=item.get("credential")
        )
    raise UsageError(f"ICE server entry {item!r} needs a 'urls' field; fix {ICE_ENV}")


def _ice_server_from_url(url: str) -> RTCIceServer:
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise UsageError(
            f"ICE server {url!r} must look like stun:host:port or turn:user:pass@host:port"
        )
    if "@" in rest:
        cred, _, hostport = rest.rpartition("@")
        user, _, password = cred.partition(":")
        return RTCIceServer(
            urls=f"{scheme}:{hostport}", username=unquote(user), credential=unquote(password)
        )
    return RTCIceServer(urls=url)


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
    url: str, username: str | None, credential: str | None, *,
    timeout: float = PROBE_TIMEOUT_S, now: float | None = None,
) -> str | None:
    """Try one allocation on the TURN server `url` with these credentials and release it.
    None if it worked, else one line naming the server and the cause."""
    server, problem = await _probe(url, username, credential, timeout=timeout, now=now)
    if problem is None or server is None:
        return problem
    return f"TURN server {server[0]}:{server[1]} {problem}"


async def _probe(
    url: str, username: str | None, credential: str | None, *, timeout: float,
    now: float | None = None,
) -> tuple[tuple[str, int] | None, str | None]:
    try:
        parsed = parse_stun_turn_uri(url)
    except ValueError:
        return None, f"TURN server {url!r} is not a turn: or turns: URL"
    server = (str(parsed["host"]), int(parsed["port"]))
    started = time.monotonic()
    try:
        transport, _ = await asyncio.wait_for(
            turn.create_turn_endpoint(
                asyncio.DatagramProtocol, server, username, credential,
                ssl=parsed["scheme"] == "turns", transport=parsed["transport"],
            ),
            timeout,
        )
    except (stun.TransactionFailed, stun.TransactionTimeout, asyncio.TimeoutError, OSError,
            ConnectionError, ValueError) as exc:
        reason = ice.describe_failure(
            exc, time.monotonic() - started, username, timeout=timeout, now=now
        )
        return server, reason or "failed"
    transport.close()
    return server, None


async def usable(servers: list[RTCIceServer]) -> list[RTCIceServer]:
    """`servers` without the TURN URLs that fail a check; each failure goes to
    streamer.net.ice.server_down (named once per server and cause, left out of gathering)."""
    kept: list[RTCIceServer] = []
    for server in servers:
        urls = _urls(server)
        turn_urls = [u for u in urls if u.startswith(("turn:", "turns:"))]
        good = [u for u in urls if u not in turn_urls]
        results = await asyncio.gather(*(
            _probe(u, server.username, server.credential, timeout=PROBE_TIMEOUT_S)
            for u in turn_urls
        ))
        for url, (address, problem) in zip(turn_urls, results, strict=True):
            if problem is None:
                if address is not None:
                    ice.server_up("TURN", address)
                good.append(url)
            elif address is None:
                log.warning("%s; left out", problem)
            else:
                ice.server_down("TURN", address, problem)
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
            self._servers = await usable(self._user)
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
        self._servers = await usable(servers)
        dropped = sum(map(len, map(_urls, servers))) - sum(map(len, map(_urls, self._servers)))
        lifetime = (expires - time.time()) if expires is not None else None
        if lifetime is None:
            self._refresh_at = float("inf") if body is not None else time.monotonic() + RETRY_S
        else:
            # Half-way through the credentials' life, with jitter so a swarm does not ask at once.
            self._refresh_at = time.monotonic() + max(RETRY_S, lifetime / 2 * random.uniform(0.8, 1))
        if dropped:
            # A TURN server that failed may be fixed or started later: check it again when
            # streamer.net.ice would try it again.
            self._refresh_at = min(self._refresh_at, time.monotonic() + ice.SERVER_RETRY_S)
        self._ready.set()

