"""Asyncio client for our signaling hub and npm `signalhub` servers: subscribe, broadcast, names.

One HubClient talks to one or more hubs: it subscribes on all of them, posts to all of them,
reconnects with backoff when a hub goes away, and drops duplicates by message id. It never
trusts a hub: name records are verified before they are returned.

    async with HubClient(["http://127.0.0.1:8000"]) as hub:
        async with hub.subscribe("swarmcast", ["topic"]) as sub:
            await sub.wait_connected()
            await hub.broadcast("swarmcast", "topic", {"hello": "world"})
            async for message in sub:
                ...
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from streamer.core import names
from streamer.core.errors import (
    NameNotFoundError,
    NameTakenError,
    NetworkError,
    ProofError,
    SubscriptionRefused,
    UsageError,
)

log = logging.getLogger("streamer.hubclient")

# Added to dict messages when posting to several hubs, so each subscriber sees a message once
# even though every hub relays it.
MESSAGE_ID_FIELD = "msg_id"
_SEEN_IDS = 4096
_QUEUE_SIZE = 1024
# Lines up to this size are read whole: a 64 KiB body, re-encoded, fits with room to spare.
_READ_BUFSIZE = 1 << 18
# Answers that retrying cannot fix: the request itself is wrong.
_FATAL_STATUSES = (400, 404, 405, 413)




class _Closed:
    """Marks the end of a subscription's message queue."""


_CLOSED = _Closed()


class HubClient:
    """A client of one or more hubs (URLs like http://host:port, scheme optional)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        read_timeout: float = 75.0,
        request_timeout: float = 10.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        ca_file: str | None = None,
    ) -> None:
        """`read_timeout`: a stream silent that long (no message, no heartbeat) is reconnected;
        `min_backoff`/`max_backoff`: bounds of the exponential delay between reconnect attempts;
        `ca_file`: PEM certificates of a private CA that https hubs' certificates may chain to
        (otherwise the system's CAs, or $SSL_CERT_FILE, are trusted). Certificates are always
        verified."""
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise NetworkError("no hub URL given; pass --hub http://HOST:PORT")
        self.urls = [_normalize(u) for u in url_list]
        self.read_timeout = read_timeout
        self.request_timeout = request_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.ssl_context = client_tls_context(ca_file)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (subscriptions should be closed first)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pool limit: each subscription holds one connection per hub for its lifetime.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=self.ssl_context),
                read_bufsize=_READ_BUFSIZE,
            )
        return self._session

    # -- channels -------------------------------------------------------------------------------

    def subscribe(self, app: str, channels: Sequence[str]) -> Subscription:
        """Start listening to `channels` of `app` on every hub; iterate the result for messages.

        Messages posted while no hub connection is open are lost (SSE has no replay): after
        wait_connected() returns, anything posted to the channels is delivered.
        """
        if not channels:
            raise NetworkError("subscribe needs at least one channel")
        return Subscription(self, app, list(channels))

    async def broadcast(self, app: str, channel: str, message: Any) -> None:
        """POST `message` (JSON-serialisable) to `channel` on every hub.

        Succeeds if at least one hub accepted it; raises NetworkError naming the failure if none
        did. With several hubs a dict message gets a `msg_id` so subscribers drop the copies.
        """
        if len(self.urls) > 1 and isinstance(message, dict) and MESSAGE_ID_FIELD not in message:
            message = {**message, MESSAGE_ID_FIELD: secrets.token_hex(8)}
        body = json.dumps(message, separators=(",", ":")).encode()
        results = await asyncio.gather(
            *(self._post(f"{url}/v1/{app}/{channel}", body) for url in self.urls),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            raise errors[0]

    async def _post(self, url: str, body: bytes) -> None:
        try:
            async with self.session().post(
                url, data=body, headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            ) as resp:
                if resp.status != 200:
                    raise NetworkError(f"hub refused POST {url}: {await _error_text(resp)}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise NetworkError(_unreachable(url, exc)) from exc

    # -- ICE servers ----------------------------------------------------------------------------

    async def ice(self) -> dict[str, Any] | None:
        """The first answer of GET /v1/ice among the hubs (STUN/TURN servers with short-lived
        TURN credentials), or None if no hub offers one (an npm signalhub has no such route).
        NetworkError if no hub answered at all."""
        errors: list[BaseException] = []
        for url in self.urls:
            try:
                async with self.session().get(
                    f"{url}/v1/ice", timeout=aiohttp.ClientTimeout(total=self.request_timeout)
                ) as resp:
                    if resp.status != 200:
                        continue
                    body = await resp.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                errors.append(NetworkError(f"cannot reach hub at {url} ({_describe(exc)})"))
                continue
            if isinstance(body, dict):
                return body
        if errors and len(errors) == len(self.urls):
            raise errors[0]
        return None

    # -- names ----------------------------------------------------------------------------------

    async def register_name(
        self, name: str, secret_key: bytes, *, now: int | None = None
    ) -> names.NameRecord:
        """Sign a record pointing `name` at the key of `secret_key` and store it on every hub.

        Raises NameTakenError if a hub says the name belongs to another key (or holds a newer
        record), NetworkError if no hub stored it.
        """
        record = names.sign_record(name, secret_key, int(time.time()) if now is None else now)
        await self.publish_record(record)
        return record

    async def publish_record(self, record: names.NameRecord) -> None:
        """Store an already signed record on every hub (see register_name for errors)."""
        body = json.dumps(record.to_json()).encode()
        results = await asyncio.gather(
            *(self._put_record(url, record.name, body) for url in self.urls),
            return_exceptions=True,
        )
        taken = [r for r in results if isinstance(r, NameTakenError)]
        if taken:
            raise taken[0]
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            raise errors[0]

    async def _put_record(self, url: str, name: str, body: bytes) -> None:
        target = f"{url}/names/{name}"
        try:
            async with self.session().put(
                target, data=body, headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            ) as resp:
                if resp.status == 409:
                    raise NameTakenError(
                        f"name {name!r} is not yours on {url}: {await _error_text(resp)}; "
                        "pick another name"
                    )
                if resp.status not in (200, 201):
                    raise NetworkError(f"hub {url} refused name {name!r}: {await _error_text(resp)}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise NetworkError(_unreachable(url, exc)) from exc

    async def resolve_name(self, name: str) -> names.NameRecord:
        """The newest verified record for `name` across all hubs.

        Raises NameNotFoundError if no hub has it, ProofError if hubs only returned records that
        do not verify (a forged or tampered record), NetworkError if no hub answered.
        """
        names.validate_name(name)
        results = await asyncio.gather(
            *(self._get_record(url, name) for url in self.urls), return_exceptions=True
        )
        records = [r for r in results if isinstance(r, names.NameRecord)]
        if records:
            return max(records, key=lambda r: r.time)
        for kind in (ProofError, NameNotFoundError):
            found = [r for r in results if isinstance(r, kind)]
            if found:
                raise found[0]
        raise next(r for r in results if isinstance(r, BaseException))

    async def _get_record(self, url: str, name: str) -> names.NameRecord:
        target = f"{url}/names/{name}"
        try:
            async with self.session().get(
                target, timeout=aiohttp.ClientTimeout(total=self.request_timeout)
            ) as resp:
                if resp.status == 404:
                    raise NameNotFoundError(
                        f"no stream is named {name!r} on {url}; check the name or use the key"
                    )
                if resp.status != 200:
                    raise NetworkError(f"hub {url} failed to resolve {name!r}: {await _error_text(resp)}")
                body = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise NetworkError(_unreachable(url, exc)) from exc
        try:
            record = names.parse_verified(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProofError(f"hub {url} sent a name record that is not JSON") from exc
        if record.name != name:
            raise ProofError(f"hub {url} answered for {name!r} with a record for {record.name!r}")
        return record


class Subscription:
    """Messages from `channels` of `app` on all of a client's hubs, as an async iterator.

    Each item is the JSON value a peer posted (normally a dict). Iteration raises NetworkError if
    a hub refuses the subscription itself (bad channel name); outages are retried forever.
    """

    def __init__(self, client: HubClient, app: str, channels: list[str]) -> None:
        self.client = client
        self.app = app
        self.channels = channels
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE_SIZE)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._open_streams = 0
        self._opens = 0
        self._connected = asyncio.Event()
        self._closed = False
        path = f"/v1/{app}/{','.join(channels)}"
        self._tasks = [
            asyncio.create_task(self._follow(url + path), name=f"hub-subscribe {url}")
            for url in client.urls
        ]

    @property
    def connected(self) -> int:
        """How many hubs currently stream to this subscription."""
        return self._open_streams

    @property
    def opens(self) -> int:
        """How many times a hub stream has opened; it grows on every reconnection, so a node
        can tell that a hub (re)started and that it should announce itself again."""
        return self._opens

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until at least one hub's stream is open (TimeoutError after `timeout` s)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening; a pending iteration ends."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                self._queue.put_nowait(_CLOSED)
                raise StopAsyncIteration
            if isinstance(item, BaseException):
                raise item
            if self._is_duplicate(item):
                continue
            return item

    def _is_duplicate(self, message: Any) -> bool:
        if not isinstance(message, dict):
            return False
        msg_id = message.get(MESSAGE_ID_FIELD)
        if not isinstance(msg_id, str):
            return False
        if msg_id in self._seen:
            return True
        self._seen[msg_id] = None
        if len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)
        return False

    async def _follow(self, url: str) -> None:
        client = self.client
        delay = client.min_backoff
        outage = False
        while True:
            opened = asyncio.Event()
            try:
                await self._stream(url, opened)
                reason = "the hub closed the stream"
            except SubscriptionRefused as exc:
                await self._queue.put(NetworkError(str(exc)))
                return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                reason = _describe(exc)
            if opened.is_set():
                delay = client.min_backoff
                if outage:
                    log.debug("hub %s was reachable again for a while", url)
                outage = False
            if not outage:
                log.warning("hub %s unreachable (%s); reconnecting in the background", url, reason)
                outage = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, client.max_backoff)

    async def _stream(self, url: str, opened: asyncio.Event) -> None:
        """Follow one SSE connection until it ends, queueing each message; sets `opened`."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.client.request_timeout, sock_read=self.client.read_timeout
        )
        async with self.client.session().get(
            url, timeout=timeout, headers={"Accept": "text/event-stream"}
        ) as resp:
            if resp.status in _FATAL_STATUSES:
                raise SubscriptionRefused(f"hub refused subscription {url}: {await _error_text(resp)}")
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message=resp.reason or ""
                )
            opened.set()
            self._opens += 1
            self._open_streams += 1
            self._connected.set()
            try:
                async for data in parse_sse(resp.content):
                    try:
                        message = json.loads(data)
                    except ValueError:
                        log.debug("hub %s sent a message that is not JSON; skipped", url)
                        continue
                    # Backpressure: a consumer that stops reading makes the hub drop us.
                    await self._queue.put(message)
            finally:
                self._open_streams -= 1
                if not self._open_streams:
                    self._connected.clear()



async def parse_sse(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The data of each Server-Sent Event on a stream (comments and other fields ignored)."""
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)


def _normalize(url: str) -> str:
    url = url.rstrip("/")
    return url if "://" in url else "http://" + url


def client_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The TLS context for https hubs: verifies certificates and host names against the
    system's CAs ($SSL_CERT_FILE if set) or, with `ca_file`, against that PEM file."""
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise UsageError(f"--hub-ca {ca_file}: no such file; give the PEM file of the hub's CA") \
            from None
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(
            f"--hub-ca {ca_file} holds no usable PEM certificate ({getattr(exc, 'reason', exc)})"
        ) from None


def _unreachable(url: str, exc: BaseException) -> str:
    """One line for a hub that could not be reached: why, and what to check."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"cannot reach hub at {url} ({_describe(exc)})"
    return f"cannot reach hub at {url} ({_describe(exc)}); is it running?"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        why = getattr(error, "verify_message", None) or getattr(error, "reason", None) or error
        return (
            f"its TLS certificate does not verify: {why}; if it is signed by a private CA, "
            "pass --hub-ca FILE (or set SSL_CERT_FILE)"
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failed ({getattr(exc.os_error, 'reason', None) or exc.os_error}); "\
            "is it an https hub?"
    return str(exc) or type(exc).__name__


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    body = (await resp.text(errors="replace"))[:200]
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return f"{resp.status} {message or body.strip() or resp.reason}"
