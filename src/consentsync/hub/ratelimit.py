"""Requests per minute per API key: a token bucket per key, in the serving process.

Written here rather than taken from a library (slowapi, limits) because the limit is per key and
set per key from the ledger, the bucket is a dozen lines, and a shared store (Redis) is not a
dependency of the console; a deployment with several web processes divides the rate between them
(docs/hub.md says so)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # key id: (tokens, at)
        self._lock = threading.Lock()

    def take(self, key_id: int, per_minute: int) -> float:
        """0 if the request may go ahead; else the seconds until it may (for Retry-After)."""
        rate = per_minute / 60.0
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key_id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate
