"""Flood limiting and the command-center circuit breaker. Pure: the caller supplies the time."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_ms: int


class FloodLimiter:
    """A token bucket per device. A device that publishes faster than `rate_per_s` (after a burst of
    `burst`) has its excess dropped, while every other device's messages pass untouched. A genuine
    button that hits the limit loses nothing: it keeps unacknowledged alarms in its outbox and
    re-sends them when it has tokens again."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_ms = rate_per_s / 1000
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, device_id: str, now_ms: int) -> bool:
        b = self._buckets.get(device_id)
        if b is None:
            b = self._buckets[device_id] = _Bucket(float(self.burst), now_ms)
        b.tokens = min(float(self.burst), b.tokens + (now_ms - b.at_ms) * self.rate_per_ms)
        b.at_ms = now_ms
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops hammering a command center that is down (Nygard, "Release It!", Circuit Breaker).

    After `threshold` consecutive failed deliveries it opens: nothing is sent until a cool-down has
    passed; then one probe goes out (half-open). Success closes it, failure reopens it with a longer
    cool-down (doubling, with jitter, up to a cap). Alarms wait in the outbox meanwhile; their retry
    counters are not spent while the breaker is open.
    """

    def __init__(self, threshold: int = 5, cooldown_s: float = 1.0, max_cooldown_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened = 0           # how many times in a row it has opened
        self.retry_at_ms = 0
        self._rng = rng or random.Random()

    def allow(self, now_ms: int) -> bool:
        if self.state is BreakerState.OPEN and now_ms >= self.retry_at_ms:
            self.state = BreakerState.HALF_OPEN
        return self.state is not BreakerState.OPEN

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened = 0

    def failure(self, now_ms: int) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            cap = min(self.max_cooldown_s, self.cooldown_s * 2 ** min(self.opened, 16))
            self.retry_at_ms = now_ms + int(self._rng.uniform(cap / 2, cap) * 1000)
            self.state = BreakerState.OPEN
            self.opened += 1
