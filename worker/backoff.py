"""How long a task waits before its next attempt. Pure functions of the attempt and the error."""

from __future__ import annotations

import random
from collections.abc import Callable


def exponential_s(attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with jitter: uniform in [cap/2, cap], cap = min(max_s, base_s * 2**(attempt-1)).

    Half-jitter keeps a floor, so a retry never comes back immediately, and spreads a herd of
    retries over the other half.
    """
    cap = min(max_s, base_s * (2.0 ** min(max(0, attempt - 1), 64)))
    return cap / 2 + rand() * cap / 2


def after_throttle_s(retry_after_s: float | None, fallback_s: float, max_s: float,
                     rand: Callable[[], float] = random.random) -> float:
    """Wait at least Klaviyo's Retry-After (immediate retries always get another 429), plus up to a
    second of jitter so a tenant's deferred tasks do not all return in the same instant."""
    wait = retry_after_s if retry_after_s is not None else fallback_s
    return min(max_s, max(wait, 0.0) + rand())


def exponential_additive_s(attempt: int, base_s: float, max_s: float, jitter_s: float,
                           rand: Callable[[], float] = random.random) -> float:
    """min(max_s, base_s * 2**(attempt-1) + uniform [0, jitter_s)): tenacity's `wait_exponential_jitter`,
    which the Loyale client's waits follow."""
    return min(max_s, base_s * (2.0 ** min(max(0, attempt - 1), 64)) + rand() * jitter_s)
