"""The hub's counters, and their rendering in the Prometheus text exposition format (sans-IO)."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamer.hub.rejections import REJECTION_REASONS


@dataclass(slots=True)
class Metrics:
    """Counters served at /metrics."""

    messages_received: int = 0
    messages_delivered: int = 0
    bytes_received: int = 0
    bytes_delivered: int = 0
    subscribers_dropped: int = 0
    redis_errors: int = 0
    ice_served: int = 0  # answers of GET /v1/ice (each with fresh TURN credentials if any)
    # by Rejection.label
    rejections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))


def render_metrics(
    m: Metrics,
    *,
    subscribers: int,
    channels: int,
    names: int | None = None,
    redis_connected: bool | None = None,
) -> str:
    """Counters and gauges as Prometheus text. `names` is given for an in-memory name store,
    `redis_connected` for a hub sharing through Redis; each adds its rows."""
    rows: list[tuple[str, str, str, list[tuple[str, float]]]] = [
        ("hub_subscribers", "gauge", "Open SSE subscriber connections.",
         [("", subscribers)]),
        ("hub_channels", "gauge", "Channels with at least one local subscriber.",
         [("", channels)]),
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
        ("hub_ice_served_total", "counter", "ICE server lists served (GET /v1/ice).",
         [("", m.ice_served)]),
        ("hub_rejections_total", "counter", "Requests refused, by reason.",
         [(f'{{reason="{r}"}}', n) for r, n in m.rejections.items()]),
    ]
    if names is not None:
        rows.append(("hub_names", "gauge", "Name records held in memory.", [("", names)]))
    if redis_connected is not None:
        rows.append(("hub_redis_connected", "gauge", "1 while subscribed to Redis.",
                     [("", int(redis_connected))]))
        rows.append(("hub_redis_errors_total", "counter", "Redis failures seen.",
                     [("", m.redis_errors)]))
    lines: list[str] = []
    for name, kind, help_text, samples in rows:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)
    return "\n".join(lines) + "\n"
