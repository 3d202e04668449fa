"""The retry policy's table (worker/retry.py): every error kind at the attempt and throttle boundaries,
the countdown clamps, and the one Retry-After parser both clients use."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from worker.errors import Deferred, RetryableError, TenantFatalError, Throttled
from worker.klaviyo import retry_after_s
from worker.retry import MAX_THROTTLES, Fail, PauseTenant, Retry, RetryPolicy, decide, parse_retry_after

#: SYNC_* defaults: 8 attempts, base 2 s, backoff cap 300 s, countdown cap 900 s; jitter pinned.
LOW = RetryPolicy(rand=lambda: 0.0)    # half-jitter at its floor: cap / 2; a 429's jitter 0
HIGH = RetryPolicy(rand=lambda: 1.0)   # at its top: cap; a 429's jitter a whole second

FIVE_XX = RetryableError("Klaviyo answered 503")
THROTTLED = Throttled("429", retry_after_s=7.0)
FATAL = TenantFatalError("t", "Klaviyo rejected the private API key (401)")

CASES = [
    # error, attempt, throttles, policy -> decision
    (Deferred("limiter", retry_after_s=0.3), 1, 0, LOW, Retry(0.3, 1, 0, "limiter", deferred=True)),
    (Deferred("limiter", retry_after_s=0.3), 8, 199, LOW, Retry(0.3, 8, 199, "limiter", deferred=True)),
    (Deferred("lock busy"), 3, 0, LOW, Retry(1.0, 3, 0, "lock busy", deferred=True)),     # no wait named: 1 s
    (Deferred("tiny", retry_after_s=0.001), 1, 0, LOW, Retry(0.05, 1, 0, "tiny", deferred=True)),  # floor
    (Deferred("huge", retry_after_s=5000.0), 1, 0, LOW, Retry(900.0, 1, 0, "huge", deferred=True)),  # cap
    (THROTTLED, 1, 0, LOW, Retry(7.0, 1, 1, "429", back_off_s=7.0)),
    (THROTTLED, 5, 0, HIGH, Retry(8.0, 5, 1, "429", back_off_s=8.0)),                     # not an attempt
    (THROTTLED, 1, MAX_THROTTLES - 2, LOW, Retry(7.0, 1, MAX_THROTTLES - 1, "429", back_off_s=7.0)),
    (THROTTLED, 1, MAX_THROTTLES - 1, LOW,
     Fail(f"Klaviyo kept throttling: {MAX_THROTTLES} 429 answers in a row", back_off_s=7.0)),
    (Throttled("429"), 1, 0, LOW, Retry(2.0, 1, 1, "429", back_off_s=2.0)),              # no Retry-After: base
    (Throttled("429", retry_after_s=5000.0), 1, 0, LOW, Retry(900.0, 1, 1, "429", back_off_s=900.0)),
    (FIVE_XX, 1, 0, LOW, Retry(1.0, 2, 0, "Klaviyo answered 503")),                       # cap 2: [1, 2]
    (FIVE_XX, 1, 0, HIGH, Retry(2.0, 2, 0, "Klaviyo answered 503")),
    (FIVE_XX, 3, 4, HIGH, Retry(8.0, 4, 4, "Klaviyo answered 503")),                      # throttles kept
    (FIVE_XX, 7, 0, HIGH, Retry(128.0, 8, 0, "Klaviyo answered 503")),
    (FIVE_XX, 8, 0, LOW, Fail("gave up after 8 attempts: Klaviyo answered 503")),
    (FIVE_XX, 9, 0, LOW, Fail("gave up after 9 attempts: Klaviyo answered 503")),
    (RetryableError("Loyale throttled", retry_after_s=12.0), 2, 0, LOW, Retry(12.0, 3, 0, "Loyale throttled")),
    (FATAL, 1, 0, LOW, PauseTenant("Klaviyo rejected the private API key (401)")),
    (FATAL, 8, MAX_THROTTLES, LOW, PauseTenant("Klaviyo rejected the private API key (401)")),
]


@pytest.mark.parametrize(("error", "attempt", "throttles", "policy", "expected"), CASES)
def test_decide(error, attempt, throttles, policy, expected):
    assert decide(error, attempt, throttles, policy) == expected


def test_backoff_is_capped_by_max_s_then_clamped_by_the_countdown_limit():
    policy = RetryPolicy(max_attempts=30, rand=lambda: 1.0)
    assert decide(FIVE_XX, 20, 0, policy) == Retry(300.0, 21, 0, str(FIVE_XX))
    short = RetryPolicy(max_attempts=30, max_s=2000.0, max_countdown_s=100.0, rand=lambda: 1.0)
    assert decide(FIVE_XX, 20, 0, short) == Retry(100.0, 21, 0, str(FIVE_XX))
    assert RetryPolicy(base_s=0.01, rand=lambda: 0.0).backoff_s(1) == 0.005
    assert decide(FIVE_XX, 1, 0, RetryPolicy(base_s=0.01, rand=lambda: 0.0)).countdown_s == 0.05


def test_a_tenant_paused_fails_its_work_with_the_reason():
    assert decide(FATAL, 1, 0, LOW) == PauseTenant(FATAL.reason)
    assert PauseTenant(FATAL.reason).failure == f"tenant paused: {FATAL.reason}"


def test_the_loyale_clients_waits_are_tenacitys_exponential_with_additive_jitter():
    loyale = RetryPolicy(max_attempts=6, base_s=0.5, max_s=30.0, additive_jitter_s=0.5, min_countdown_s=0.0,
                         max_countdown_s=float("inf"), rand=lambda: 1.0)
    assert [decide(FIVE_XX, n, 0, loyale).countdown_s for n in range(1, 6)] == [1.0, 1.5, 2.5, 4.5, 8.5]
    assert isinstance(decide(FIVE_XX, 6, 0, loyale), Fail)
    assert decide(RetryableError("429", retry_after_s=0.0), 1, 0, loyale).countdown_s == 0.0
    assert decide(RetryableError("429", retry_after_s=120.0), 1, 0, loyale).countdown_s == 120.0


NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("header", "detail", "expected"), [
    ("7", None, 7.0),
    ("1.5", None, 1.5),
    (" 30 ", None, 30.0),
    ("0", None, 0.0),
    ("-3", None, 0.0),
    ("Tue, 01 Dec 2026 12:00:45 GMT", None, 45.0),       # an HTTP-date
    ("Tue, 01 Dec 2026 11:59:00 GMT", None, 0.0),        # in the past: now
    ("inf", "Expected available in 9 seconds.", 9.0),    # no broker can hold an infinite countdown
    ("nan", None, None),
    ("soon", None, None),
    ("", None, None),
    (None, "Request was throttled. Expected available in 4 seconds.", 4.0),
    (None, "expected AVAILABLE in 2.5 seconds", 2.5),
    (None, "Request was throttled.", None),
    (None, None, None),
])
def test_parse_retry_after(header, detail, expected):
    assert parse_retry_after(header, detail, now=NOW) == expected


def test_the_klaviyo_client_reads_the_header_then_the_detail():
    def answer(headers: dict[str, str], body: object) -> httpx.Response:
        return httpx.Response(429, headers=headers, json=body)

    detail = {"errors": [{"detail": "Request was throttled. Expected available in 3 seconds."}]}
    assert retry_after_s(answer({"Retry-After": "11"}, detail)) == 11.0
    assert retry_after_s(answer({}, detail)) == 3.0
    assert retry_after_s(answer({"Retry-After": "later"}, detail)) == 3.0
    assert retry_after_s(answer({}, {"errors": []})) is None
    assert retry_after_s(httpx.Response(429, content=b"<html>")) is None
