"""Per-client request rate limiting for the hub: a token bucket per address (sans-IO: the time
is passed in)."""

from __future__ import annotations


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
