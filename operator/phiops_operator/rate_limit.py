"""A token bucket: the client-side request limit (QPS with bursts) of the operator's client."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self) -> float:
        """Wait for a token (callers are served in turn, so a burst cannot starve anyone);
        the seconds waited."""
        waited = 0.0
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                waited = (1 - self._tokens) / self.rate
                await asyncio.sleep(waited)
                self._refill()
            self._tokens -= 1
        return waited
