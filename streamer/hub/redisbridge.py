"""The hub's Redis fan-out adapter: channel messages relayed between hub processes through Redis
pub/sub, with reconnection after an outage."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import redis.asyncio as aioredis
import redis.exceptions

from streamer.core.errors import NetworkError
from streamer.hub.metrics import Metrics

log = logging.getLogger("streamer.hub")

REDIS_CHANNEL_PREFIX = "swarmcast:hub:"


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
