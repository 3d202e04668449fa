"""The fleet-wide rate limiter, against a real (private) Redis and from several processes at once."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time

import pytest
import redis
import redis.retry

from fakes.klaviyo.ratelimit import Limit, scaled
from fakes.klaviyo.ratelimit import RateLimiter as FakeKlaviyoLimiter
from fakes.processes import RedisServer
from worker import keys
from worker.ratelimit import (
    BUILT_IN,
    TRANSIT_S,
    EndpointLimit,
    LimiterUnavailable,
    RateLimiter,
    Window,
    endpoint_limits,
    load_spec_limits,
)
from worker.ratelimit.gate import Gate
from worker.runtime import make_redis
from worker.settings import DEFAULT_SPEC_PATH

SMALL = EndpointLimit(burst=Window(5, 200), steady=Window(12, 1000))


@pytest.fixture
def limiter(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield RateLimiter(client)
    client.close()


@pytest.mark.skipif(not DEFAULT_SPEC_PATH.exists(), reason="Klaviyo's spec (../shared) is not beside this checkout")
def test_the_numbers_come_from_klaviyos_spec():
    table = load_spec_limits(DEFAULT_SPEC_PATH)
    assert table["GET /api/profiles"] == ("75/s", "750/m")
    assert table["POST /api/profile-bulk-import-jobs"] == ("10/s", "150/m")
    assert table["GET /api/accounts"] == ("1/s", "15/m")


def test_a_changed_spec_changes_the_limits(tmp_path):
    spec = {"paths": {"/api/profiles": {"get": {"x-klaviyo-ratelimit": {"burst": "3/s", "steady": "40/m"}}}}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    limits = endpoint_limits(load_spec_limits(path), transit_ms=0)
    assert limits["GET /api/profiles"] == EndpointLimit(Window(3, 1000), Window(40, 60_000))
    assert load_spec_limits(tmp_path / "absent.json") == BUILT_IN


def test_headroom_leaves_a_share_of_each_window_to_other_integrations():
    limits = endpoint_limits(BUILT_IN, headroom=0.2)
    assert limits["GET /api/profiles"] == EndpointLimit(Window(60, 1501), Window(600, 60_501))
    assert limits["GET /api/accounts"].burst.limit == 1   # never below one request


def test_grants_are_spaced_at_the_steady_rate_after_a_short_burst(limiter):
    first, first_before, first_after = timed(lambda: limiter.acquire("acct", "t", "GET /api/profiles", SMALL))
    assert [first] + [limiter.acquire("acct", "t", "GET /api/profiles", SMALL) for _ in range(2)] == [0.0] * 3
    wait_s, before, after = timed(lambda: limiter.acquire("acct", "t", "GET /api/profiles", SMALL))
    # 12 per second: one every 83 ms, three back to back allowed; the fourth is due 83 ms after the
    # first, so it waits 83 ms less the time since the first (each moment known to within its call)
    pace_s = SMALL.pace_ms / 1000
    assert 0 < wait_s <= pace_s or (wait_s == 0 and after - first_before >= pace_s - MS)
    assert pace_s - (after - first_before) - MS <= wait_s <= pace_s - (before - first_after) + MS
    time.sleep(wait_s)
    assert limiter.acquire("acct", "t", "GET /api/profiles", SMALL) == 0.0


#: Redis's TIME is read in whole milliseconds inside the script; the tests time calls with time.time().
MS = 0.002


def timed(call):
    """(value, wall time before the call, wall time after it): the limiter's `now` lies in between."""
    before = time.time()
    value = call()
    return value, before, time.time()


def test_waiting_callers_are_given_successive_slots(limiter):
    for _ in range(3):
        limiter.acquire("acct", "t", "GET /api/profiles", SMALL)
    calls = [timed(lambda: limiter.acquire("acct", "t", "GET /api/profiles", SMALL)) for _ in range(4)]
    pace_s = SMALL.pace_ms / 1000
    # Each caller is told to come back at now + wait; now is somewhere in its call, so a slot is known
    # to within the call's duration, however slow the machine. Successive slots are one pace apart.
    for (w1, b1, a1), (w2, b2, a2) in zip(calls, calls[1:], strict=False):
        assert w1 > 0 and w2 > 0
        assert (b2 + w2) - (a1 + w1) - MS <= pace_s <= (a2 + w2) - (b1 + w1) + MS, calls


def test_a_full_steady_window_says_when_its_oldest_request_leaves(limiter):
    limit = EndpointLimit(burst=Window(100, 1000), steady=Window(3, 900))   # paced every 300 ms

    def take() -> tuple[float, float]:
        """When the granted call ran (before, after)."""
        while True:
            wait_s, before, after = timed(lambda: limiter.acquire("acct", "t", "GET /api/profiles", limit))
            if wait_s == 0:
                return before, after
            time.sleep(wait_s)

    first_before, first_after = take()
    take()
    take()
    # three back to back (the pacing tolerance); the window is full until the first is 900 ms old
    wait_s, before, after = timed(lambda: limiter.acquire("acct", "t", "GET /api/profiles", limit))
    assert wait_s > 0
    # now + wait_s = the first grant + 0.9 s, each moment known to within its call
    assert first_before - MS <= after + wait_s - 0.9 and before + wait_s - 0.9 <= first_after + MS


def test_accounts_and_endpoints_are_limited_separately(limiter):
    for _ in range(3):
        limiter.acquire("acct", "t", "GET /api/profiles", SMALL)
    assert limiter.acquire("acct", "t", "GET /api/profiles", SMALL) > 0
    assert limiter.acquire("other", "t2", "GET /api/profiles", SMALL) == 0.0
    assert limiter.acquire("acct", "t", "POST /api/profiles", SMALL) == 0.0


def test_a_429_back_off_holds_every_request_of_the_tenant(limiter):
    started = time.time()
    limiter.back_off("t", 0.3)
    wait_s, _, after = timed(lambda: limiter.acquire("acct", "t", "POST /api/profiles", SMALL))
    # what is left of the 0.3 s: at most all of it, at least all but the time the two calls took
    assert 0 < wait_s <= 0.3 and wait_s >= 0.3 - (after - started) - MS
    assert limiter.acquire("acct", "other-tenant", "POST /api/profiles", SMALL) == 0.0


def _hammer(url: str, ready, span_s: float, out: multiprocessing.Queue) -> None:
    limiter = RateLimiter(redis.Redis.from_url(url, decode_responses=True))
    limiter.redis.ping()   # connected before the start, like a running worker
    granted = []
    ready.wait()           # every process has started: they hammer together
    until = time.time() + span_s
    while time.time() < until:
        asked_at = time.time()
        wait_s = limiter.acquire("acct", "t", "GET /api/profiles", SMALL)
        if wait_s == 0:
            granted.append((asked_at, time.time()))
        else:
            time.sleep(min(wait_s, 0.05))
    out.put(granted)


def test_four_processes_together_never_exceed_either_window_anywhere(redis_url):
    """Sliding logs: no interval of a window's length, wherever it starts, holds more than the limit."""
    spawn = multiprocessing.get_context("spawn")   # no fork of a test process that holds threads and locks
    out = spawn.Queue()
    ready = spawn.Barrier(4)   # spawned interpreters take seconds to start, and not the same seconds
    procs = [spawn.Process(target=_hammer, args=(redis_url, ready, 3.0, out)) for _ in range(4)]
    for p in procs:
        p.start()
    spans = sorted(span for _ in procs for span in out.get(timeout=120))   # (asked at, answered at)
    for p in procs:
        p.join()
    # Redis decided each grant somewhere between the ask and the answer. Only grants whose whole span lies
    # inside one window surely fell in it: a client descheduled before it read its clock (a loaded
    # machine) must not look like an overshoot, and a real one is still caught.
    for window_s, limit in ((0.2, SMALL.burst.limit), (1.0, SMALL.steady.limit)):
        surely = max(sum(1 for asked, answered in spans if start <= asked and answered < start + window_s)
                     for start, _ in spans)
        assert surely <= limit, f"{surely} grants within {window_s}s"
    # and the limit is reached, not undercut: some second holds the full steady limit, counting each grant
    # when it was answered. (Not a count over the whole 3 s: on a busy machine the hammering processes
    # themselves are not always running.)
    answered = [a for _, a in spans]
    assert max(sum(1 for u in answered if t <= u < t + 1.0) for t in answered) >= SMALL.steady.limit


@pytest.mark.integration
def test_redis_down_means_nothing_is_granted(monkeypatch):
    """The client's short retries, then a clear refusal: the Redis client's backoff sleeps are taken
    on a fake clock, so the test counts them (no wall-clock bound) and runs at once."""
    server = RedisServer().start()
    limiter = RateLimiter(make_redis(server.url))
    assert limiter.acquire("acct", "t", "GET /api/profiles", SMALL) == 0.0
    server.cleanup()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        assert len(slept) <= 50, "the Redis client retries a server that is down without end"

    monkeypatch.setattr(redis.retry, "sleep", sleep)
    with pytest.raises(LimiterUnavailable, match="nothing sent to Klaviyo"):
        limiter.acquire("acct", "t", "GET /api/profiles", SMALL)
    # make_redis: 6 retries, backoff capped at 1 s: the refusal comes after 6 short waits, at most 6 s
    assert len(slept) == 6 and all(0 < s <= 1.0 for s in slept), slept


@pytest.mark.integration
def test_a_redis_blip_shorter_than_the_client_retries_is_ridden_out():
    server = RedisServer().start()
    limiter = RateLimiter(make_redis(server.url))
    assert limiter.acquire("acct", "t", "GET /api/profiles", SMALL) == 0.0
    server.stop()
    restarter = threading.Timer(0.5, server.start)
    restarter.start()
    try:
        assert limiter.acquire("acct", "t", "GET /api/profiles", SMALL) == 0.0
    finally:
        restarter.join()
        server.cleanup()


def test_places_taken_together_are_all_or_none_and_unused_ones_go_back(limiter):
    steady_only = EndpointLimit(burst=Window(100, 200), steady=Window(4, 60_000))
    wait_s, grant = limiter.acquire_many("acct", "t", "GET /api/profiles", steady_only, 3)
    assert wait_s == 0 and grant
    # a pair more would overfill the window: it is refused whole, nothing taken
    wait_s, refused = limiter.acquire_many("acct", "t", "GET /api/profiles", steady_only, 2)
    assert wait_s > 1 and refused == ""
    # the sync used one of its three places: the other two go back, and the pair now fits
    limiter.refund("acct", "GET /api/profiles", steady_only, grant, used=1, count=3)
    wait_s, _ = limiter.acquire_many("acct", "t", "GET /api/profiles", steady_only, 2)
    assert wait_s == 0
    # 1 used + 2 = 3 of 4 in the window; the pace (one per 15 s) puts the next one later
    assert limiter.acquire("acct", "t", "GET /api/profiles", steady_only) > 1


def _grants_on_a_fake_clock(limiter: RateLimiter, limit: EndpointLimit, span_ms: int) -> list[int]:
    """Grant times (ms on the limiter's injected clock) of a caller that asks at once and, when told to
    wait, comes back exactly when told: the limiter alone decides how dense the grants are."""
    granted, clock = [], [0]
    limiter.clock_ms = lambda: clock[0]
    while clock[0] < span_ms:
        wait_s = limiter.acquire("acct", "t", "GET /api/profiles", limit)
        if wait_s == 0:
            granted.append(clock[0])
        else:
            clock[0] += max(1, round(wait_s * 1000))
    return granted


def _first_429(arrivals_s: list[float], burst: tuple[int, float], steady: tuple[int, float]) -> float | None:
    """Klaviyo's own counting (the fake's fixed windows), in process: when the first 429 would come."""
    klaviyo = FakeKlaviyoLimiter()
    for at in sorted(arrivals_s):
        if not klaviyo.hit(("acct", "GET /api/profiles"), burst, steady, at).allowed:
            return at
    return None


@pytest.mark.parametrize(("rate_scale", "window_scale"), [(0.1, 0.2), (1.0, 1.0)], ids=["quota-bound", "real"])
@pytest.mark.parametrize("delays", ["shrinking", "random"])
def test_requests_that_reach_klaviyo_up_to_transit_late_are_never_throttled(limiter, rate_scale, window_scale,
                                                                           delays):
    """A grant at t reaches Klaviyo at t + d, 0 <= d <= transit. The worst case: delays that shrink from
    transit to 0 over each (window + transit) of grants. Klaviyo's window opens at the first, latest
    request and closes just after the last, timely one: it counts the grants of window + transit, more
    than its limit unless the limiter counts each grant over that long. Random delays mix both ways."""
    transit_ms = round(TRANSIT_S * 1000)
    limits = endpoint_limits(BUILT_IN, rate_scale=rate_scale, window_scale=window_scale, transit_ms=transit_ms)
    limit = limits["GET /api/profiles"]
    klaviyo_steady_ms = round(60_000 * window_scale)
    granted = _grants_on_a_fake_clock(limiter, limit, span_ms=3 * klaviyo_steady_ms)
    rng = random.Random(12)
    if delays == "shrinking":
        period = klaviyo_steady_ms + transit_ms
        late = [transit_ms * (1 - (t % period) / period) for t in granted]
    else:
        late = [rng.uniform(0, transit_ms) for _ in granted]
    arrivals_s = [(t + d) / 1000 for t, d in zip(granted, late, strict=True)]
    burst = scaled(Limit(75, 1.0), rate_scale, window_scale)
    steady = scaled(Limit(750, 60.0), rate_scale, window_scale)
    assert _first_429(arrivals_s, burst, steady) is None
    # and the quota is used: every Klaviyo window of the run but the last holds nearly its limit
    assert len(granted) >= 3 * steady[0] * klaviyo_steady_ms / (klaviyo_steady_ms + transit_ms) - 3


class _OneAccount:
    def account(self, tenant_id: str) -> str:
        return "acct"


def test_a_place_taken_in_advance_is_not_used_once_it_is_older_than_half_the_transit(limiter):
    """A sync's second lookup goes after the first one's round trip: if that took long, the request
    asks the limiter afresh, so it never reaches Klaviyo later after its grant than the log allows."""
    limit = EndpointLimit(burst=Window(100, 1000), steady=Window(100, 60_000))
    clock = [100.0]
    gate = Gate(limiter, _OneAccount(), lambda _: {"GET /api/profiles": limit},
                prepaid_for_s=0.5, clock=lambda: clock[0])
    steady_log = keys.rate_log("acct", "GET /api/profiles", "steady")
    with gate.prepaid("t", "GET /api/profiles", 2) as wait_s:
        assert wait_s == 0 and limiter.redis.zcard(steady_log) == 2
        clock[0] += 0.5
        gate("t", "GET /api/profiles")                 # within 0.5 s of asking: the place taken
        assert limiter.redis.zcard(steady_log) == 2
        clock[0] += 0.01
        gate("t", "GET /api/profiles")                 # too old: a place of its own, now
        assert limiter.redis.zcard(steady_log) == 3
    assert limiter.redis.zcard(steady_log) == 2        # the stale place was given back
