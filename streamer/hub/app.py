"""The hub's aiohttp application: routes, middleware (rate limit, CORS, JSON errors) and thin
handlers that turn requests into calls on the channel registry and name store, and their
answers into HTTP responses."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, KeysView

import redis.exceptions
from aiohttp import web

from streamer import __version__
from streamer.core import names
from streamer.core.errors import ProofError
from streamer.hub.config import HubConfig
from streamer.hub.messages import (
    HEARTBEAT_FRAME,
    decode_body,
    encode_message,
    is_make_room,
    sse_frame,
)
from streamer.hub.metrics import Metrics, render_metrics
from streamer.hub.namestore import MemoryNameStore, NameStore, RedisNameStore
from streamer.hub.ratelimit import RateLimiter
from streamer.hub.redisbridge import RedisBridge
from streamer.hub.registry import ChannelRegistry, channel_key, parse_channels
from streamer.hub.rejections import Refused, Rejection
from streamer.hub.sse import SSE_HEADERS, Subscriber, pump

log = logging.getLogger("streamer.hub")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE",
    "Access-Control-Allow-Headers": (
        "X-Requested-With, X-HTTP-Method-Override, Content-Type, Accept, Authorization"
    ),
}
# aiohttp's own HTTP errors (unknown route, body over client_max_size, ...) by status.
HTTP_ERROR_REASONS = {
    404: Rejection.NOT_FOUND, 405: Rejection.METHOD_NOT_ALLOWED, 413: Rejection.BODY_TOO_LARGE,
}
# A refused name claim, answered as this rejection.
CLAIM_REFUSALS = {
    names.Claim.TAKEN: (Rejection.NAME_TAKEN, "{name!r} belongs to another key"),
    names.Claim.STALE: (
        Rejection.STALE_RECORD, "an update needs a newer time than the stored record"
    ),
    names.Claim.FULL: (Rejection.NAMES_FULL, "this hub holds too many names"),
}


class Hub:
    """One hub process: its registry, name store, limits and metrics, served by aiohttp."""

    def __init__(self, config: HubConfig | None = None, redis_url: str | None = None) -> None:
        self.config = config or HubConfig()
        self.redis_url = redis_url
        self.metrics = Metrics()
        self.registry: ChannelRegistry[Subscriber] = ChannelRegistry(
            self.config.max_channels_per_subscription, self.config.max_subscribers_per_channel
        )
        self.limiter = RateLimiter(
            self.config.rate_per_second, self.config.rate_burst, self.config.max_tracked_clients
        )
        self.evict_limiter = RateLimiter(
            self.config.evict_per_second, self.config.evict_burst, self.config.max_tracked_clients
        )
        self.bridge: RedisBridge | None = None
        self.name_store: NameStore = MemoryNameStore(self.config.max_names)
        self._housekeeping: asyncio.Task[None] | None = None

    @property
    def channels(self) -> dict[str, set[Subscriber]]:
        """Local subscribers by channel ("app/channel")."""
        return self.registry.channels

    @property
    def subscribers(self) -> KeysView[Subscriber]:
        """Every open SSE subscriber of this hub."""
        return self.registry.subscribers

    # -- application wiring -------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """An aiohttp application serving this hub (start/stop hooks included).

        Every route of the hub is registered here; new endpoints (a TURN credential handout, a
        watch page for a stream name) get their handler in this class or a module beside it.
        """
        app = web.Application(
            client_max_size=self.config.max_body_bytes,
            middlewares=[self._middleware],
        )
        app.router.add_route("*", "/", self._root)
        app.router.add_route("*", "/metrics", self._metrics_handler)
        app.router.add_route("*", "/v1/ice", self._ice)
        app.router.add_route("*", "/v1/{tail:.*}", self._v1)
        app.router.add_route("*", "/names/{name}", self._names)
        app.on_response_prepare.append(_add_cors)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        if self.redis_url:
            self.bridge = RedisBridge(self.redis_url, self._deliver_from_redis, self.metrics)
            await self.bridge.start()
            self.name_store = RedisNameStore(self.bridge.client)
        self._housekeeping = asyncio.create_task(self._heartbeats(), name="hub-heartbeats")

    async def _on_shutdown(self, app: web.Application) -> None:
        # Finish every SSE stream so the runner does not wait for them to time out.
        for subscriber in list(self.subscribers):
            subscriber.end()

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        if self.bridge is not None:
            await self.bridge.close()

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        client = request.remote or "unknown"
        allowed, first = self.limiter.allow(client, time.monotonic())
        if not allowed:
            self.metrics.rejections[Rejection.RATE_LIMITED.label] += 1
            if first:
                log.warning("hub: %s sends too many requests; answering 429 until it slows down", client)
            return _json_error(Rejection.RATE_LIMITED.status, "too many requests: slow down and retry later")
        if request.method == "OPTIONS":
            return web.Response(status=200)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = HTTP_ERROR_REASONS.get(exc.status, Rejection.NOT_FOUND)
            return self._reject(request, reason, exc.reason, status=exc.status)

    def _reject(
        self, request: web.Request, reason: Rejection, message: str, *, status: int | None = None
    ) -> web.Response:
        self.metrics.rejections[reason.label] += 1
        log.info("hub: %s %s from %s: %s", request.method, request.path, request.remote, message)
        return _json_error(reason.status if status is None else status, message)

    def _refuse(self, request: web.Request, refused: Refused) -> web.Response:
        return self._reject(request, refused.reason, refused.message)

    # -- GET / and /metrics ---------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._reject(request, Rejection.METHOD_NOT_ALLOWED, "use GET /")
        body = {"name": "swarmcast-hub", "version": __version__, "subscribers": len(self.subscribers)}
        return web.Response(
            text=json.dumps(body, indent=2) + "\n", content_type="application/json", charset="utf-8"
        )

    async def _metrics_handler(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._reject(request, Rejection.METHOD_NOT_ALLOWED, "use GET /metrics")
        return web.Response(text=self.render_metrics(), content_type="text/plain", charset="utf-8")

    def render_metrics(self) -> str:
        """The hub's counters and gauges in the Prometheus text exposition format."""
        store = self.name_store
        return render_metrics(
            self.metrics,
            subscribers=len(self.subscribers),
            channels=len(self.channels),
            names=len(store) if isinstance(store, MemoryNameStore) else None,
            redis_connected=self.bridge.connected.is_set() if self.bridge is not None else None,
        )

    # -- GET /v1/ice: STUN/TURN servers, TURN with short-lived credentials ----------------------

    async def _ice(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._reject(request, Rejection.METHOD_NOT_ALLOWED, "use GET /v1/ice")
        self.metrics.ice_served += 1
        return web.json_response(
            self.config.ice.answer(time.time()), headers={"Cache-Control": "no-store"}
        )

    # -- /v1/{app}/{channels}: subscribe and broadcast -----------------------------------------

    async def _v1(self, request: web.Request) -> web.StreamResponse:
        parsed = parse_channels(request.match_info["tail"])
        if isinstance(parsed, Refused):
            return self._refuse(request, parsed)
        app_name, channels = parsed
        if request.method == "GET":
            return await self._subscribe(request, app_name, channels)
        if request.method == "POST":
            if len(channels) != 1:
                return self._reject(request, Rejection.BAD_NAME, "POST to exactly one channel")
            return await self._broadcast(request, channel_key(app_name, channels[0]))
        return self._reject(
            request, Rejection.METHOD_NOT_ALLOWED, "use GET to subscribe, POST to send"
        )

    async def _subscribe(
        self, request: web.Request, app_name: str, channels: list[str]
    ) -> web.StreamResponse:
        subscriber = Subscriber(self.config.subscriber_queue, request.remote or "unknown", request)
        # Registered before the headers go out, so a client that sees the stream open never
        # misses a message posted after that.
        refused = self.registry.subscribe(subscriber, app_name, channels)
        if refused is not None:
            return self._refuse(request, refused)
        response = web.StreamResponse(headers=SSE_HEADERS)
        try:
            await response.prepare(request)
            await pump(subscriber, response, self.metrics)
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        finally:
            self.registry.unsubscribe(subscriber)
        return response

    def _drop(self, dropped: list[Subscriber]) -> None:
        """Cut off subscribers the registry dropped, so a slow reader costs bounded memory."""
        for subscriber in dropped:
            self.metrics.subscribers_dropped += 1
            log.info("hub: dropping subscriber %s: it does not read fast enough", subscriber.client)
            subscriber.cut_off()

    def deliver(self, channel: str, frame: bytes) -> int:
        """Queue an encoded SSE frame for every local subscriber of `channel`."""
        count, dropped = self.registry.publish(channel, frame)
        if dropped:
            self._drop(dropped)
        return count

    def _deliver_from_redis(self, channel: str, data: bytes) -> None:
        self.deliver(channel, sse_frame(data))

    async def _broadcast(self, request: web.Request, channel: str) -> web.StreamResponse:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            message = decode_body(body)
        except ValueError:
            return self._reject(request, Rejection.BAD_JSON, "the body is not valid JSON")
        if is_make_room(message):
            client = request.remote or "unknown"
            if not self.evict_limiter.allow(client, time.monotonic())[0]:
                return self._reject(
                    request, Rejection.EVICT_LIMITED,
                    "too many make-room requests from this address; wait a minute",
                )
        data = encode_message(message)
        self.metrics.messages_received += 1
        self.metrics.bytes_received += len(body)
        self.deliver(channel, sse_frame(data))
        if self.bridge is not None:
            await self.bridge.publish(channel, data)
        return web.Response(status=200)

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        """The request body, or the 413 answer if it is larger than the hub accepts."""
        if (request.content_length or 0) <= self.config.max_body_bytes:
            try:
                return await request.read()
            except web.HTTPRequestEntityTooLarge:
                pass
        return self._reject(
            request, Rejection.BODY_TOO_LARGE,
            f"body larger than {self.config.max_body_bytes} bytes; send smaller messages",
        )

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            self._drop(self.registry.offer_all(HEARTBEAT_FRAME))
            self.limiter.prune(time.monotonic())
            self.evict_limiter.prune(time.monotonic())

    # -- /names/{name} --------------------------------------------------------------------------

    async def _names(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not names.is_valid_name(name):
            return self._reject(request, Rejection.BAD_NAME, f"invalid stream name {name!r}")
        try:
            if request.method == "GET":
                stored = await self.name_store.get(name)
                if stored is None:
                    return self._reject(
                        request, Rejection.NOT_FOUND, f"no stream is named {name!r}"
                    )
                return web.Response(text=stored, content_type="application/json")
            if request.method == "PUT":
                return await self._put_name(request, name)
        except (redis.exceptions.RedisError, OSError) as exc:
            self.metrics.redis_errors += 1
            return self._reject(
                request, Rejection.UNAVAILABLE, f"name store unavailable ({exc})"
            )
        return self._reject(
            request, Rejection.METHOD_NOT_ALLOWED, "use GET or PUT /names/{name}"
        )

    async def _put_name(self, request: web.Request, name: str) -> web.StreamResponse:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            record = names.NameRecord.from_json(json.loads(body))
        except ValueError:
            return self._reject(request, Rejection.BAD_JSON, "the body is not valid JSON")
        except ProofError as exc:
            return self._reject(request, Rejection.BAD_RECORD, str(exc))
        if record.name != name:
            return self._reject(request, Rejection.BAD_RECORD, "record name differs from the URL")
        if record.time > time.time() + self.config.max_clock_skew_seconds:
            return self._reject(request, Rejection.BAD_RECORD, "record time is in the future")
        try:
            record.verify()
        except ProofError as exc:
            return self._reject(request, Rejection.BAD_SIGNATURE, str(exc))
        claim = await self.name_store.put(record)
        if not claim.accepted:
            reason, message = CLAIM_REFUSALS[claim]
            return self._reject(request, reason, message.format(name=name))
        return web.Response(
            status=201 if claim is names.Claim.CREATED else 200,
            text=record.canonical_json(), content_type="application/json",
        )


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(CORS_HEADERS)
