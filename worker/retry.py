"""The retry policy, once: what each kind of error means for the work that met it (DESIGN.md 10-11).

`decide(error, attempt, throttles, policy)` is pure; the per-customer task, the batch, the Loyale client,
the webhook hint and `verify` each carry out its answer in their own way (a Celery retry, a requeue, a
sleep). Modelled on dramatiq's `Retries` middleware and arq's `Retry(defer=...)`.

  Deferred (our limiter, a lock)  -> Retry after its wait (or `deferral_s`); not an attempt
  Throttled (429)                 -> the tenant backs off for Retry-After plus up to a second of jitter,
                                     Retry after it; the `max_throttles`-th 429 in a row -> Fail
  RetryableError (5xx, timeouts)  -> Retry after the server's hint if it gave one, else capped
                                     exponential backoff with jitter; at `max_attempts` -> Fail
  TenantFatalError (401/403)      -> PauseTenant: no work of this tenant can succeed until it is fixed

Every countdown is clamped to [min_countdown_s, max_countdown_s], far below the broker's visibility timeout.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from worker import backoff
from worker.errors import Deferred, RetryableError, TenantFatalError, Throttled
from worker.settings import Settings

#: A 429 is not the customer's fault: it does not spend an attempt, but a storm that never ends
#: still has to stop somewhere.
MAX_THROTTLES = 200
#: Klaviyo's 429 detail when the header is missing: "... Expected available in 7 seconds."
EXPECTED_IN = re.compile(r"available in (\d+(?:\.\d+)?) second", re.IGNORECASE)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    #: Exponential backoff: the first retry waits about `base_s`, each next one twice as long, up to `max_s`.
    base_s: float = 2.0
    max_s: float = 300.0
    min_countdown_s: float = 0.05
    max_countdown_s: float = 900.0
    max_throttles: int = MAX_THROTTLES
    #: The wait of a deferral that names none (a busy lock).
    deferral_s: float = 1.0
    #: Jitter source in [0, 1); inject a constant for a deterministic policy.
    rand: Callable[[], float] = random.random
    #: Instead of half-jitter, add uniform [0, additive_jitter_s) to the exponential (tenacity's form).
    additive_jitter_s: float | None = None

    def clamp(self, countdown_s: float) -> float:
        return min(max(countdown_s, self.min_countdown_s), self.max_countdown_s)

    def backoff_s(self, attempt: int) -> float:
        if self.additive_jitter_s is not None:
            return backoff.exponential_additive_s(attempt, self.base_s, self.max_s, self.additive_jitter_s, self.rand)
        return backoff.exponential_s(attempt, self.base_s, self.max_s, self.rand)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The workers' policy for Klaviyo work (per customer and batched), from SYNC_* settings."""
    return RetryPolicy(max_attempts=settings.max_attempts, base_s=settings.retry_base_s, max_s=settings.retry_max_s,
                       max_countdown_s=settings.max_countdown_s)


@dataclass(frozen=True)
class Retry:
    """Try again after `countdown_s`, carrying `attempt` and `throttles` forward."""

    countdown_s: float
    attempt: int
    throttles: int
    reason: str
    #: A 429: the whole tenant waits this long (the limiter's back-off), not only this work.
    back_off_s: float | None = None
    #: A deferral: a wait, not a failure (counted apart in the run).
    deferred: bool = False


@dataclass(frozen=True)
class Fail:
    """Give up: record `failed` with `reason`."""

    reason: str
    back_off_s: float | None = None


@dataclass(frozen=True)
class PauseTenant:
    """The tenant's credentials or configuration are wrong: pause it; its work ends `failed`."""

    reason: str

    @property
    def failure(self) -> str:
        return f"tenant paused: {self.reason}"


Decision = Retry | Fail | PauseTenant


def decide(error: RetryableError | TenantFatalError, attempt: int, throttles: int,
           policy: RetryPolicy) -> Decision:
    """What to do about `error`, met on try number `attempt` after `throttles` 429s in a row."""
    if isinstance(error, TenantFatalError):
        return PauseTenant(error.reason)
    if isinstance(error, Deferred):
        return Retry(policy.clamp(error.retry_after_s or policy.deferral_s), attempt, throttles, str(error),
                     deferred=True)
    if isinstance(error, Throttled):
        wait_s = throttle_wait_s(error, policy)
        if throttles + 1 >= policy.max_throttles:
            return Fail(f"Klaviyo kept throttling: {policy.max_throttles} 429 answers in a row", back_off_s=wait_s)
        return Retry(policy.clamp(wait_s), attempt, throttles + 1, str(error), back_off_s=wait_s)
    if attempt >= policy.max_attempts:
        return Fail(f"gave up after {attempt} attempts: {error}")
    hinted = error.retry_after_s
    wait_s = hinted if hinted is not None else policy.backoff_s(attempt)
    return Retry(policy.clamp(wait_s), attempt + 1, throttles, str(error))


def throttle_wait_s(error: Throttled, policy: RetryPolicy) -> float:
    """How long the tenant backs off after a 429: Retry-After (or `base_s`) plus up to a second of jitter."""
    return backoff.after_throttle_s(error.retry_after_s, policy.base_s, policy.max_countdown_s, policy.rand)


def parse_retry_after(header: str | None, detail: str | None = None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP-date), else from an error detail
    saying "available in N seconds" (Klaviyo's, when the header is missing); None when neither says."""
    if header is not None and header.strip():
        text = header.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _seconds_until(text, now or datetime.now(UTC))
        if math.isfinite(seconds):  # "inf" / "nan" would make a countdown no broker can hold
            return max(0.0, seconds)
    found = EXPECTED_IN.search(detail or "")
    return float(found.group(1)) if found else None


def _seconds_until(http_date: str, now: datetime) -> float:
    try:
        moment = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return math.nan
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - now).total_seconds()
