"""The signaling hub: an aiohttp server speaking the HTTP API of the npm `signalhub` server.

Peers subscribe to channels as Server-Sent Events and POST JSON messages to them; stream names map
to keys through signed records. It keeps no state beyond live subscriptions and name records,
bounds every per-client resource, and must never let one bad or slow client hurt the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web

from streamer import __version__
from streamer.core import names
from streamer.core.errors import NetworkError, ProofError

log = logging.getLogger("streamer.hub")

NAME_PART = re.compile(r"[A-Za-z0-9._-]{1,128}")
HEARTBEAT_FRAME = b":heartbeat signal\n\n"
REDIS_CHANNEL_PREFIX = "swarmcast:hub:"
REDIS_NAME_PREFIX = "swarmcast:name:"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE",
    "Access-Control-Allow-Headers": (
        "X-Requested-With, X-HTTP-Method-Override, Content-Type, Accept, Authorization"
    ),
}
REJECTION_REASONS = (
    "rate_limited",
    "body_too_large",
    "bad_json",
    "bad_name",
    "too_many_channels",
    "channel_full",
    "not_found",
    "method_not_allowed",
    "bad_record",
    "bad_signature",
    "name_taken",
    "stale_record",
    "names_full",
    "unavailable",
)
# Writes to one slow subscriber are coalesced up to this many queued frames per syscall.
MAX_FRAMES_PER_WRITE = 64


@dataclass(slots=True)
class HubConfig:
    """Limits and timings of one hub; the defaults suit a public signaling server."""

    max_body_bytes: int = 64 * 1024  # POST/PUT body; larger gets 413
    max_channels_per_subscription: int = 64  # channels in one GET /v1/app/a,b,...
    max_subscribers_per_channel: int = 256  # further subscribers get 429
    rate_per_second: float = 100.0  # requests per second per client IP (token refill)
    rate_burst: float = 400.0  # token bucket size: a swarm joining at once sends bursts
    subscriber_queue: int = 256  # frames buffered for one SSE client before it is dropped
    heartbeat_seconds: float = 30.0  # SSE comment that keeps idle connections and proxies alive
    max_names: int = 100_000  # name records kept in memory (without Redis)
    max_clock_skew_seconds: int = 600  # a record may be at most this far in the future
    max_tracked_clients: int = 65_536  # rate-limit buckets kept at once


class RateLimiter:
    """Token bucket per client address; buckets that have refilled are forgotten."""

    def __init__(self, rate: float, burst: float, max_clients: int) -> None:
        self._rate = rate
        self._burst = burst
        self._max_clients = max_clients
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, last update]
        self._limited: set[str] = set()

    def allow(self, client: str, now: float) -> tuple[bool, bool]:
        """Take a token for `client`: (allowed, first refusal of this flood, worth a log line)."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self.prune(now)
                if len(self._buckets) >= self._max_clients:
                    # Still full of active clients: forget the oldest rather than grow.
                    self._buckets.pop(next(iter(self._buckets)))
            self._buckets[client] = [self._burst - 1, now]
            return True, False
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            first = client not in self._limited
            self._limited.add(client)
            return False, first
        bucket[0] = tokens - 1
        self._limited.discard(client)
        return True, False

    def prune(self, now: float) -> None:
        """Forget clients whose bucket is full again: they would start afresh anyway."""
        full = [
            c for c, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self._rate >= self._burst
        ]
        for client in full:
            del self._buckets[client]
            self._limited.discard(client)


@dataclass(slots=True)
class Metrics:
    """Counters served at /metrics in the Prometheus text format."""

    messages_received: int = 0
    messages_delivered: int = 0
    bytes_received: int = 0
    bytes_delivered: int = 0
    subscribers_dropped: int = 0
    redis_errors: int = 0
    rejections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))


class Subscriber:
    """One SSE connection: a bounded queue of encoded frames and the channels it listens to."""

    __slots__ = ("queue", "channels", "client", "request", "dropped")

    def __init__(self, size: int, channels: list[str], client: str, request: web.Request) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.channels = channels
        self.client = client
        self.request = request
        self.dropped = False

    def offer(self, frame: bytes) -> bool:
        """Queue a frame; False if the queue is full (the client does not keep up)."""
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        """Make the writer finish: pending frames are discarded, then the stream ends."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class MemoryNameStore:
    """Name records in this process only (a hub without Redis)."""

    def __init__(self, max_names: int) -> None:
        self._records: dict[str, str] = {}
        self._max_names = max_names

    def __len__(self) -> int:
        return len(self._records)

    async def get(self, name: str) -> str | None:
        return self._records.get(name)

    async def put(self, record: names.NameRecord, encoded: str) -> str:
        current = self._records.get(record.name)
        if current is None:
            if len(self._records) >= self._max_names:
                return "full"
            outcome = "created"
        elif current == encoded:
            return "unchanged"
        else:
            stored = json.loads(current)
            if stored["key"] != record.key.hex():
                return "taken"
            if stored["time"] >= record.time:
                return "stale"
            outcome = "updated"
        self._records[record.name] = encoded
        return outcome


# First come, first served across all hubs sharing Redis, decided atomically by Redis itself.
_REDIS_PUT_NAME = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1])
  return 'created'
end
if current == ARGV[1] then return 'unchanged' end
local record = cjson.decode(current)
if record['key'] ~= ARGV[2] then return 'taken' end
if tonumber(record['time']) >= tonumber(ARGV[3]) then return 'stale' end
redis.call('SET', KEYS[1], ARGV[1])
return 'updated'
"""


class RedisNameStore:
    """Name records in Redis, so every hub on the same Redis agrees on who owns a name."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._put_script = client.register_script(_REDIS_PUT_NAME)

    async def get(self, name: str) -> str | None:
        value = await self._client.get(REDIS_NAME_PREFIX + name)
        return value.decode() if value is not None else None

    async def put(self, record: names.NameRecord, encoded: str) -> str:
        result = await self._put_script(
            keys=[REDIS_NAME_PREFIX + record.name],
            args=[encoded, record.key.hex(), record.time],
        )
        return result.decode() if isinstance(result, bytes) else str(result)


class RedisBridge:
    """Relays channel messages between hub processes through Redis pub/sub.

    Each hub publishes what it receives once, tagged with its own id, and delivers messages from
    other hubs to its local subscribers; its own echo is ignored, so nothing is delivered twice.
    """

    def __init__(self, url: str, on_message: Callable[[str, bytes], None], metrics: Metrics):
        self.url = url
        self.hub_id = secrets.token_hex(8).encode()
        self.connected = asyncio.Event()
        self._on_message = on_message
        self._metrics = metrics
        # The subscriber connection blocks in reads, so it gets no socket timeout; commands do.
        self.client = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._listener_client = aioredis.from_url(url, socket_connect_timeout=2.0)
        self._task: asyncio.Task[None] | None = None
        self._publish_failing = False

    async def start(self) -> None:
        try:
            await self.client.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            await self.close()
            raise NetworkError(
                f"cannot reach Redis at {self.url} ({exc}); start redis-server or drop --redis"
            ) from exc
        self._task = asyncio.create_task(self._listen(), name="hub-redis-listener")
        await asyncio.wait_for(self.connected.wait(), timeout=10)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()
        await self._listener_client.aclose()

    async def publish(self, channel: str, data: bytes) -> None:
        try:
            await self.client.publish(REDIS_CHANNEL_PREFIX + channel, self.hub_id + b" " + data)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._metrics.redis_errors += 1
            if not self._publish_failing:
                log.warning("hub: cannot publish to Redis (%s); delivering locally only", exc)
            self._publish_failing = True
            return
        self._publish_failing = False

    async def _listen(self) -> None:
        delay = 0.1
        outage = False
        while True:
            pubsub = self._listener_client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(REDIS_CHANNEL_PREFIX + "*")
                self.connected.set()
                if outage:
                    log.info("hub: Redis at %s is back; channels are shared again", self.url)
                outage = False
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        self._relay(message["channel"], message["data"])
            except (redis.exceptions.RedisError, OSError) as exc:
                self.connected.clear()
                self._metrics.redis_errors += 1
                if not outage:
                    log.warning("hub: lost Redis at %s (%s); reconnecting", self.url, exc)
                outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()
                except (redis.exceptions.RedisError, OSError):
                    pass

    def _relay(self, redis_channel: bytes, payload: bytes) -> None:
        origin, _, data = payload.partition(b" ")
        if origin == self.hub_id:
            return
        channel = redis_channel.decode()[len(REDIS_CHANNEL_PREFIX):]
        self._on_message(channel, data)


class Hub:
    """Channels, subscribers, limits and names of one hub process, and its HTTP handlers."""

    def __init__(self, config: HubConfig | None = None, redis_url: str | None = None) -> None:
        self.config = config or HubConfig()
        self.redis_url = redis_url
        self.metrics = Metrics()
        self.channels: dict[str, set[Subscriber]] = {}
        self.subscribers: set[Subscriber] = set()
        self.limiter = RateLimiter(
            self.config.rate_per_second, self.config.rate_burst, self.config.max_tracked_clients
        )
        self.bridge: RedisBridge | None = None
        self.name_store: MemoryNameStore | RedisNameStore = MemoryNameStore(self.config.max_names)
        self._housekeeping: asyncio.Task[None] | None = None

    # -- application wiring -------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """An aiohttp application serving this hub (start/stop hooks included)."""
        app = web.Application(
            client_max_size=self.config.max_body_bytes,
            middlewares=[self._middleware],
        )
        app.router.add_route("*", "/", self._root)
        app.router.add_route("*", "/metrics", self._metrics_handler)
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
            self.metrics.rejections["rate_limited"] += 1
            if first:
                log.warning("hub: %s sends too many requests; answering 429 until it slows down", client)
            return _json_error(429, "too many requests: slow down and retry later")
        if request.method == "OPTIONS":
            return web.Response(status=200)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
                exc.status, "not_found"
            )
            return self._reject(request, exc.status, reason, exc.reason)

    def _reject(self, request: web.Request, status: int, reason: str, message: str) -> web.Response:
        self.metrics.rejections[reason] += 1
        log.info("hub: %s %s from %s: %s", request.method, request.path, request.remote, message)
        return _json_error(status, message)

    # -- GET / and /metrics ---------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._reject(request, 405, "method_not_allowed", "use GET /")
        body = {"name": "swarmcast-hub", "version": __version__, "subscribers": len(self.subscribers)}
        return web.Response(
            text=json.dumps(body, indent=2) + "\n", content_type="application/json", charset="utf-8"
        )

    async def _metrics_handler(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self._reject(request, 405, "method_not_allowed", "use GET /metrics")
        return web.Response(text=self.render_metrics(), content_type="text/plain", charset="utf-8")

    def render_metrics(self) -> str:
        """The hub's counters and gauges in the Prometheus text exposition format."""
        m = self.metrics
        rows: list[tuple[str, str, str, list[tuple[str, float]]]] = [
            ("hub_subscribers", "gauge", "Open SSE subscriber connections.",
             [("", len(self.subscribers))]),
            ("hub_channels", "gauge", "Channels with at least one local subscriber.",
             [("", len(self.channels))]),
            ("hub_messages_received_total", "counter", "Messages accepted by POST.",
             [("", m.messages_received)]),
            ("hub_messages_delivered_total", "counter", "Messages written to SSE subscribers.",
             [("", m.messages_delivered)]),
            ("hub_bytes_received_total", "counter", "Bytes of accepted message bodies.",
             [("", m.bytes_received)]),
            ("hub_bytes_delivered_total", "counter", "Bytes of messages written to subscribers.",
             [("", m.bytes_delivered)]),
            ("hub_subscribers_dropped_total", "counter", "Subscribers dropped for falling behind.",
             [("", m.subscribers_dropped)]),
            ("hub_rejections_total", "counter", "Requests refused, by reason.",
             [(f'{{reason="{r}"}}', n) for r, n in m.rejections.items()]),
        ]
        if isinstance(self.name_store, MemoryNameStore):
            rows.append(("hub_names", "gauge", "Name records held in memory.",
                         [("", len(self.name_store))]))
        if self.bridge is not None:
            rows.append(("hub_redis_connected", "gauge", "1 while subscribed to Redis.",
                         [("", int(self.bridge.connected.is_set()))]))
            rows.append(("hub_redis_errors_total", "counter", "Redis failures seen.",
                         [("", m.redis_errors)]))
        lines: list[str] = []
        for name, kind, help_text, samples in rows:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value}" for labels, value in samples)
        return "\n".join(lines) + "\n"

    # -- /v1/{app}/{channels}: subscribe and broadcast -----------------------------------------

    async def _v1(self, request: web.Request) -> web.StreamResponse:
        parts = request.match_info["tail"].split("/")
        if len(parts) != 2:
            return self._reject(request, 400, "bad_name", "use /v1/{app}/{channel}[,{channel}...]")
        app_name, channel_list = parts
        if not NAME_PART.fullmatch(app_name):
            return self._reject(request, 400, "bad_name", _bad_part("app", app_name))
        channels = channel_list.split(",")
        for channel in channels:
            if not NAME_PART.fullmatch(channel):
                return self._reject(request, 400, "bad_name", _bad_part("channel", channel))
        if request.method == "GET":
            return await self._subscribe(request, app_name, channels)
        if request.method == "POST":
            if len(channels) != 1:
                return self._reject(request, 400, "bad_name", "POST to exactly one channel")
            return await self._broadcast(request, f"{app_name}/{channels[0]}")
        return self._reject(request, 405, "method_not_allowed", "use GET to subscribe, POST to send")

    async def _subscribe(
        self, request: web.Request, app_name: str, channel_names: list[str]
    ) -> web.StreamResponse:
        cfg = self.config
        unique = list(dict.fromkeys(f"{app_name}/{c}" for c in channel_names))
        if len(unique) > cfg.max_channels_per_subscription:
            return self._reject(
                request, 400, "too_many_channels",
                f"at most {cfg.max_channels_per_subscription} channels per subscription",
            )
        for channel in unique:
            if len(self.channels.get(channel, ())) >= cfg.max_subscribers_per_channel:
                return self._reject(
                    request, 429, "channel_full",
                    f"channel {channel} has {cfg.max_subscribers_per_channel} subscribers already",
                )
        subscriber = Subscriber(cfg.subscriber_queue, unique, request.remote or "unknown", request)
        # Registered before the headers go out, so a client that sees the stream open never
        # misses a message posted after that.
        self.subscribers.add(subscriber)
        for channel in unique:
            self.channels.setdefault(channel, set()).add(subscriber)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies must not buffer the stream
            }
        )
        try:
            await response.prepare(request)
            await self._pump(subscriber, response)
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        finally:
            self._remove(subscriber)
        return response

    async def _pump(self, subscriber: Subscriber, response: web.StreamResponse) -> None:
        queue = subscriber.queue
        while True:
            frame = await queue.get()
            frames: list[bytes] = []
            while frame is not None:
                frames.append(frame)
                if len(frames) >= MAX_FRAMES_PER_WRITE or queue.empty():
                    break
                frame = queue.get_nowait()
            if frames:
                await response.write(b"".join(frames))
                messages = [f for f in frames if f is not HEARTBEAT_FRAME]
                self.metrics.messages_delivered += len(messages)
                self.metrics.bytes_delivered += sum(map(len, messages))
            if frame is None:
                return

    def _remove(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        for channel in subscriber.channels:
            members = self.channels.get(channel)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self.channels[channel]

    def _drop(self, subscriber: Subscriber) -> None:
        """Cut off a subscriber whose queue is full, so a slow reader costs bounded memory."""
        if subscriber.dropped:
            return
        subscriber.dropped = True
        self.metrics.subscribers_dropped += 1
        log.info("hub: dropping subscriber %s: it does not read fast enough", subscriber.client)
        self._remove(subscriber)
        subscriber.end()
        transport = subscriber.request.transport
        if transport is not None:
            # The writer may be stuck waiting for the socket to drain; aborting frees it now.
            transport.abort()

    def deliver(self, channel: str, frame: bytes) -> int:
        """Queue an encoded SSE frame for every local subscriber of `channel`."""
        members = self.channels.get(channel)
        if not members:
            return 0
        slow = [s for s in members if not s.offer(frame)]
        for subscriber in slow:
            self._drop(subscriber)
        return len(members)

    def _deliver_from_redis(self, channel: str, data: bytes) -> None:
        self.deliver(channel, b"data: " + data + b"\n\n")

    async def _broadcast(self, request: web.Request, channel: str) -> web.StreamResponse:
        if (request.content_length or 0) > self.config.max_body_bytes:
            return self._too_large(request)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request)
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._reject(request, 400, "bad_json", "the body is not valid JSON")
        data = encode_message(message)
        self.metrics.messages_received += 1
        self.metrics.bytes_received += len(body)
        self.deliver(channel, b"data: " + data + b"\n\n")
        if self.bridge is not None:
            await self.bridge.publish(channel, data)
        return web.Response(status=200)

    def _too_large(self, request: web.Request) -> web.Response:
        return self._reject(
            request, 413, "body_too_large",
            f"body larger than {self.config.max_body_bytes} bytes; send smaller messages",
        )

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            for subscriber in list(self.subscribers):
                if not subscriber.offer(HEARTBEAT_FRAME):
                    self._drop(subscriber)
            self.limiter.prune(time.monotonic())

    # -- /names/{name} --------------------------------------------------------------------------

    async def _names(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not names.is_valid_name(name):
            return self._reject(request, 400, "bad_name", f"invalid stream name {name!r}")
        try:
            if request.method == "GET":
                stored = await self.name_store.get(name)
                if stored is None:
                    return self._reject(request, 404, "not_found", f"no stream is named {name!r}")
                return web.Response(text=stored, content_type="application/json")
            if request.method == "PUT":
                return await self._put_name(request, name)
        except (redis.exceptions.RedisError, OSError) as exc:
            self.metrics.redis_errors += 1
            return self._reject(request, 503, "unavailable", f"name store unavailable ({exc})")
        return self._reject(request, 405, "method_not_allowed", "use GET or PUT /names/{name}")

    async def _put_name(self, request: web.Request, name: str) -> web.StreamResponse:
        if (request.content_length or 0) > self.config.max_body_bytes:
            return self._too_large(request)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request)
        try:
            record = names.NameRecord.from_json(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            return self._reject(request, 400, "bad_json", "the body is not valid JSON")
        except ProofError as exc:
            return self._reject(request, 400, "bad_record", str(exc))
        if record.name != name:
            return self._reject(request, 400, "bad_record", "record name differs from the URL")
        if record.time > time.time() + self.config.max_clock_skew_seconds:
            return self._reject(request, 400, "bad_record", "record time is in the future")
        try:
            record.verify()
        except ProofError as exc:
            return self._reject(request, 403, "bad_signature", str(exc))
        encoded = json.dumps(record.to_json(), separators=(",", ":"), sort_keys=True)
        outcome = await self.name_store.put(record, encoded)
        if outcome == "taken":
            return self._reject(request, 409, "name_taken", f"{name!r} belongs to another key")
        if outcome == "stale":
            return self._reject(
                request, 409, "stale_record", "an update needs a newer time than the stored record"
            )
        if outcome == "full":
            return self._reject(request, 429, "names_full", "this hub holds too many names")
        return web.Response(
            status=201 if outcome == "created" else 200, text=encoded, content_type="application/json"
        )


def encode_message(message: Any) -> bytes:
    """Compact JSON for one SSE data line (a newline in a posted body would split the event)."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate escape cannot be UTF-8: keep it escaped.
        return json.dumps(message, separators=(",", ":")).encode()


def _bad_part(kind: str, value: str) -> str:
    return f"invalid {kind} name {value[:40]!r}: use 1-128 characters A-Z a-z 0-9 . _ -"


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(CORS_HEADERS)


class HubServer:
    """A hub running on an AppRunner inside the current event loop (for embedding and tests)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        redis_url: str | None = None,
        config: HubConfig | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.hub = Hub(config, redis_url)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        """Start serving; returns the base URL (the bound port if 0 was asked for)."""
        # handler_cancellation: a client that disconnects frees its subscription at once.
        runner = web.AppRunner(
            self.hub.make_app(), handler_cancellation=True, shutdown_timeout=2.0,
            access_log=None,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise NetworkError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "choose another --port or --host"
            ) from exc
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        """Stop serving: open SSE streams end, Redis connections close."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> HubServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def start_hub(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    redis_url: str | None = None,
    config: HubConfig | None = None,
) -> HubServer:
    """Start a hub in the running loop and return it; `.url` is its address, `.stop()` ends it."""
    server = HubServer(host, port, redis_url=redis_url, config=config)
    await server.start()
    return server
