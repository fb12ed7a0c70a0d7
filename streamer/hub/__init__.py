"""The signaling hub: an aiohttp server speaking the HTTP API of the npm `signalhub` server.

Peers subscribe to channels as Server-Sent Events and POST JSON messages to them; stream names map
to keys through signed records. It keeps no state beyond live subscriptions and name records,
bounds every per-client resource, and must never let one bad or slow client hurt the others.

One job per module:
    config       HubConfig: limits and timings (settings of new features go here too)
    turn         short-lived TURN credentials and the GET /v1/ice answer; the TURN secret file
    registry     channel registry: subscribe/unsubscribe/publish within limits (sans-IO)
    messages     a POSTed body in, an SSE frame out; checks on messages belong here (sans-IO)
    rejections   every refusal: its metrics label and HTTP status (sans-IO)
    ratelimit    token bucket per client address (sans-IO)
    metrics      counters and their Prometheus rendering (sans-IO)
    namestore    name records in memory or in Redis (the rule is streamer.core.names)
    redisbridge  channel fan-out between hubs through Redis pub/sub
    sse          one SSE subscriber and the pump writing its frames
    app          Hub: routes, middleware and thin aiohttp handlers (new endpoints go here)
    server       HubServer/start_hub: the listening socket, plain or TLS
"""

from streamer.hub.app import Hub
from streamer.hub.config import HubConfig
from streamer.hub.messages import encode_message
from streamer.hub.metrics import Metrics
from streamer.hub.namestore import MemoryNameStore, RedisNameStore
from streamer.hub.ratelimit import RateLimiter
from streamer.hub.redisbridge import RedisBridge
from streamer.hub.registry import ChannelRegistry
from streamer.hub.rejections import REJECTION_REASONS, Rejection
from streamer.hub.server import HubServer, start_hub
from streamer.hub.sse import Subscriber

__all__ = [
    "REJECTION_REASONS",
    "ChannelRegistry",
    "Hub",
    "HubConfig",
    "HubServer",
    "MemoryNameStore",
    "Metrics",
    "RateLimiter",
    "RedisBridge",
    "RedisNameStore",
    "Rejection",
    "Subscriber",
    "encode_message",
    "start_hub",
]
