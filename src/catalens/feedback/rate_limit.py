"""Per-client rate limits: a token bucket per client, refilled continuously.

Untrusted (keyless) feedback goes through one of these at the HTTP edge, so one client
cannot flood the review queue: ``take(client)`` answers 0 when the request may go on, or the
seconds until it may (what a 429's ``Retry-After`` says).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

_MAX_CLIENTS = 10_000
"""Buckets kept; past this, full buckets (clients idle long enough) are forgotten."""


class RateLimiter:
    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take one token for ``client``: 0 when it had one, else the seconds to wait (> 0)."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                if len(self._buckets) > _MAX_CLIENTS:
                    self._forget_full(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            if self.rate <= 0:
                return math.inf
            return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        for client, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.burst:
                del self._buckets[client]


__all__ = ["RateLimiter"]
