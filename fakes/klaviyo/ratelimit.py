"""Klaviyo's rate limits: per account, per endpoint, a burst and a steady FIXED window.

A window opens at the first request after the previous one closed and counts accepted requests;
requests refused with 429 are not counted. Time is passed in, so this is pure and testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    count: int
    period_s: float


@dataclass
class Window:
    length_s: float
    limit: int
    start: float = -math.inf
    used: int = 0

    def roll(self, now: float) -> None:
        if now >= self.start + self.length_s:
            self.start = now
            self.used = 0

    def full(self) -> bool:
        return self.used >= self.limit

    def resets_in(self, now: float) -> float:
        return max(0.0, self.start + self.length_s - now)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: Seconds until the exceeded window resets (0 when allowed).
    retry_after_s: float
    #: The steady window, for the RateLimit-* headers.
    limit: int
    remaining: int
    reset_s: float


def ceil_seconds(seconds: float) -> int:
    """Whole seconds for headers and details: rounded up, at least 1 when any wait remains."""
    return 0 if seconds <= 0 else max(1, math.ceil(seconds - 1e-9))


def scaled(limit: Limit, rate_scale: float, window_scale: float) -> tuple[int, float]:
    """(requests, seconds) after the knobs; the epsilon keeps 750 * 0.004 at 3, not 2."""
    return max(1, math.floor(limit.count * rate_scale + 1e-9)), limit.period_s * window_scale


class RateLimiter:
    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], tuple[Window, Window]] = {}

    def clear(self) -> None:
        self._windows.clear()

    def hit(
        self,
        bucket: tuple[str, str],
        burst: tuple[int, float],
        steady: tuple[int, float],
        now: float,
    ) -> Decision:
        """Count one request in `bucket` (account, endpoint) if both windows have room."""
        pair = self._windows.get(bucket)
        if pair is None or (pair[0].limit, pair[0].length_s, pair[1].limit, pair[1].length_s) != (
            *burst,
            *steady,
        ):
            pair = (Window(burst[1], burst[0]), Window(steady[1], steady[0]))
            self._windows[bucket] = pair
        b, s = pair
        b.roll(now)
        s.roll(now)
        waits = [w.resets_in(now) for w in (b, s) if w.full()]
        if waits:
            return Decision(False, max(waits), s.limit, max(0, s.limit - s.used), s.resets_in(now))
        b.used += 1
        s.used += 1
        return Decision(True, 0.0, s.limit, s.limit - s.used, s.resets_in(now))
