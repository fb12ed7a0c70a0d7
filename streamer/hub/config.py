"""The limits and timings of one hub (one dataclass, no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.hub.turn import IceConfig


@dataclass(slots=True)
class HubConfig:
    """Limits and timings of one hub; the defaults suit a public signaling server.

    TLS belongs to HubServer, which owns the listening socket.
    """

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
    # Make-room requests ("evict": true) per client IP: a newcomer sends one only when it is
    # isolated and everyone it heard is full, so a few a minute is plenty.
    evict_per_second: float = 0.2
    evict_burst: float = 6.0
    ice: IceConfig = field(default_factory=IceConfig)  # STUN/TURN handed out at GET /v1/ice
