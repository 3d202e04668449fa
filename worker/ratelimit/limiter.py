"""One Klaviyo rate limit for the whole fleet: every worker process on every machine asks Redis.

Klaviyo limits each account per endpoint with two fixed windows, a burst (1 s) and a steady (60 s)
one, and counts a request when it receives it. We do not know where Klaviyo's windows start, so we keep
a sliding log of the requests we granted in each window. A request granted at t is counted by Klaviyo
at t + d, and d (our process, the network, Klaviyo's front end) is not zero: a grant near the end of
one of Klaviyo's windows can be counted in the next one, alongside that window's own grants. So each
log is `transit` longer than Klaviyo's window (`endpoint_limits`, `SYNC_LIMITER_TRANSIT_S`):

    If every request is counted within `transit` of its grant (0 <= d <= transit), Klaviyo never
    counts more than the limit in one window. Proof: a Klaviyo window is [s, s + L); the requests it
    counts were granted in [s - transit, s + L), whose Redis-millisecond scores span at most
    L + transit ms, less than the log's L + transit + 1 (+1: `TIME` is truncated to whole ms). Grants
    are serialized by the script, so the last of them saw all the others in its log and was granted
    only if the log, itself included, held no more than the limit.

`transit` covers our side too: a sync's places taken in advance (`Gate.prepaid`) are used only within
half of it, later requests ask afresh; the other half is for sending and Klaviyo's front door.

The price is the rate: a limit per L + transit instead of per L (0.8 % at Klaviyo's 60 s windows with
the default transit of 0.5 s). Grants are also spaced at that rate (see `EndpointLimit.pace_ms`), so a
window's quota is spread over it rather than spent at its start. A denied caller is given its own future
slot to come back at, so a crowd of waiting tasks returns spread out instead of all at once.

`acquire` checks the tenant's 429 back-off and both windows, and records the request, in one Lua
script, atomically across processes. When it must wait it says for how long; the caller defers the
task by that countdown instead of sleeping. Redis time is used, so machines with skewed clocks agree
(tests may inject a clock instead: `RateLimiter.clock_ms`).

The `limits` library was considered: it has a Redis moving window with reset times, but checks one
limit per call, so taking both windows of an endpoint would not be atomic and a fleet could overshoot.

If Redis cannot be reached (after the client's own short retries), `LimiterUnavailable` is raised:
nothing is sent to Klaviyo without the limiter's permission, and the task goes back on the queue.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
import structlog

from worker import keys
from worker.settings import TRANSIT_S

log = structlog.get_logger("ratelimit")

SPEC_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smhd])\s*$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: Used when Klaviyo's spec is not at hand: the tiers of the endpoints this service calls.
BUILT_IN = {
    "GET /api/profiles": ("75/s", "750/m"),
    "POST /api/profiles": ("75/s", "750/m"),
    "GET /api/profiles/{id}": ("75/s", "750/m"),
    "PATCH /api/profiles/{id}": ("75/s", "750/m"),
    "POST /api/profile-import": ("75/s", "750/m"),
    "POST /api/profile-bulk-import-jobs": ("10/s", "150/m"),
    "GET /api/profile-bulk-import-jobs/{job_id}": ("10/s", "150/m"),
    "GET /api/profile-bulk-import-jobs/{id}/import-errors": ("10/s", "150/m"),
    "POST /api/profile-suppression-bulk-create-jobs": ("75/s", "750/m"),
    "POST /api/profile-suppression-bulk-delete-jobs": ("75/s", "750/m"),
    "GET /api/profile-suppression-bulk-create-jobs/{job_id}": ("75/s", "750/m"),
    "GET /api/profile-suppression-bulk-delete-jobs/{job_id}": ("75/s", "750/m"),
    "GET /api/accounts": ("1/s", "15/m"),
    "POST /api/events": ("350/s", "3500/m"),
    "POST /api/event-bulk-create-jobs": ("10/s", "150/m"),
}

ACQUIRE = """
-- KEYS: 1 burst log, 2 steady log, 3 tenant back-off, 4 pacing (theoretical arrival time),
--       5 promised slots (where the next denied caller is told to come back).
-- ARGV: 1 burst limit, 2 burst window ms, 3 steady limit, 4 steady window ms, 5 unique request id,
--       6 pacing interval ms, 7 pacing tolerance ms, 8 requests wanted together (all or none),
--       9 now in ms ('' for Redis's TIME).
-- Returns 0 when the requests may go now (and records them as <id>:1..n), else the ms to wait.
local function now_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local now = now_ms(ARGV[9])
local backoff = redis.call('PTTL', KEYS[3])
if backoff > 0 then return backoff end
local interval, n = tonumber(ARGV[6]), tonumber(ARGV[8])
local tat = math.max(now, tonumber(redis.call('GET', KEYS[4]) or '0'))
local wait = math.max(0, tat + (n - 1) * interval - tonumber(ARGV[7]) - now)
for i = 1, 2 do
  local limit, window = tonumber(ARGV[i * 2 - 1]), tonumber(ARGV[i * 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  if count + n > limit then
    -- the (count + n - limit) oldest requests must leave the window before n more fit
    local edge = redis.call('ZRANGE', KEYS[i], count + n - limit - 1, count + n - limit - 1, 'WITHSCORES')
    local w = tonumber(edge[2]) + window - now
    if w > wait then wait = w end
  end
end
if wait > 0 then
  -- Denied callers are told to come back at successive free slots, not all at the same instant:
  -- otherwise every waiting task returns together, one wins and the rest are deferred again.
  local slot = math.max(now + wait, tonumber(redis.call('GET', KEYS[5]) or '0'))
  redis.call('SET', KEYS[5], slot + n * interval, 'PX', ARGV[4])
  return math.max(1, slot - now)
end
for i = 1, 2 do
  for k = 1, n do redis.call('ZADD', KEYS[i], now, ARGV[5] .. ':' .. k) end
  redis.call('PEXPIRE', KEYS[i], ARGV[i * 2])
end
redis.call('SET', KEYS[4], tat + n * interval, 'PX', ARGV[4])
return 0
"""

REFUND = """
-- KEYS: 1 burst log, 2 steady log, 3 pacing. ARGV: 1 grant id, 2 first unused k, 3 last k,
-- 4 pacing interval ms, 5 now in ms ('' for Redis's TIME). Requests granted together but not sent
-- give their places back.
local function now_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local removed = 0
for k = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. k)
  redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. k)
end
if removed > 0 then
  local now = now_ms(ARGV[5])
  local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tat > now then
    redis.call('SET', KEYS[3], math.max(now, tat - removed * tonumber(ARGV[4])), 'KEEPTTL')
  end
end
return removed
"""

BACK_OFF = """
-- KEYS: 1 tenant back-off. ARGV: 1 milliseconds. Only ever extends the back-off.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class LimiterUnavailable(Exception):
    """Raised when Redis cannot be reached: the limiter cannot grant a request, so none is sent."""


@dataclass(frozen=True)
class Window:
    limit: int
    length_ms: int


@dataclass(frozen=True)
class EndpointLimit:
    burst: Window
    steady: Window

    @property
    def steady_per_min(self) -> float:
        return self.steady.limit * 60_000 / self.steady.length_ms

    @property
    def pace_ms(self) -> int:
        """Grants are spaced at the log's steady rate (with a small tolerance, `PACE_BURST`): the quota
        is spread over the window instead of spent at its start, and a crowd of deferred tasks does not
        come back at once. (That no window of Klaviyo's overflows comes from the logs' length, not this.)"""
        return self.steady.length_ms // self.steady.limit

    @property
    def pace_tolerance_ms(self) -> int:
        """Up to `PACE_BURST` requests may go back to back after a pause (one customer's lookups)."""
        return self.pace_ms * (min(PACE_BURST, self.burst.limit) - 1)


def parse_rate(text: str) -> tuple[int, float]:
    """"75/s" -> (75, 1.0); "750/m" -> (750, 60.0)."""
    found = SPEC_RATE.match(text or "")
    if not found:
        raise ValueError(f"not a rate: {text!r}")
    return int(found.group(1)), float(UNIT_S[found.group(2)])


def load_spec_limits(spec_path: Path | None) -> dict[str, tuple[str, str]]:
    """`x-klaviyo-ratelimit` of every operation in Klaviyo's OpenAPI spec, or the built-in table."""
    if spec_path is None or not Path(spec_path).exists():
        return dict(BUILT_IN)
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    table = dict(BUILT_IN)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            limit = operation.get("x-klaviyo-ratelimit") if isinstance(operation, dict) else None
            if isinstance(limit, dict) and limit.get("burst") and limit.get("steady"):
                table[f"{method.upper()} {path}"] = (limit["burst"], limit["steady"])
    return table


#: Requests that may go back to back after a quiet moment: a customer's two lookups and its write
#: should not wait for each other.
PACE_BURST = 3


def endpoint_limits(table: dict[str, tuple[str, str]], *, headroom: float = 0.0, rate_scale: float = 1.0,
                    window_scale: float = 1.0, transit_ms: int = round(TRANSIT_S * 1000)
                    ) -> dict[str, EndpointLimit]:
    """Limits per endpoint after the tenant's headroom (and the scales used against scaled fakes), each
    window `transit_ms` (+ 1 ms for Redis's truncated clock) longer than Klaviyo's; 0: Klaviyo's own
    numbers, as published (to report what Klaviyo allows). The transit is real time: never scaled."""
    result = {}
    for endpoint, (burst, steady) in table.items():
        windows = []
        for text in (burst, steady):
            count, period_s = parse_rate(text)
            allowed = max(1, math.floor(count * rate_scale * (1.0 - headroom) + 1e-9))
            length_ms = max(1, int(period_s * window_scale * 1000))
            windows.append(Window(allowed, length_ms + transit_ms + 1 if transit_ms else length_ms))
        result[endpoint] = EndpointLimit(*windows)
    return result


def key_fingerprint(private_key: str) -> str:
    """A stable, non-reversible name for a key (for cache keys and logs, never the key itself)."""
    return hashlib.sha256(private_key.encode()).hexdigest()[:16]


class RateLimiter:
    """The fleet-wide limiter. `client` is the state Redis; limits are per tenant (headroom differs).
    `clock_ms` replaces Redis's `TIME` (tests only: then a window can be crossed without waiting)."""

    def __init__(self, client: redis.Redis, clock_ms: Callable[[], int] | None = None) -> None:
        self.redis = client
        self.clock_ms = clock_ms
        self._acquire = client.register_script(ACQUIRE)
        self._back_off = client.register_script(BACK_OFF)
        self._refund = client.register_script(REFUND)

    def acquire(self, account: str, tenant: str, endpoint: str, limit: EndpointLimit) -> float:
        """0.0 if the request may be sent now (it is counted), else the seconds to wait first."""
        return self.acquire_many(account, tenant, endpoint, limit, 1)[0]

    def acquire_many(self, account: str, tenant: str, endpoint: str, limit: EndpointLimit,
                     count: int) -> tuple[float, str]:
        """Places for `count` requests at once, or none: (0.0, grant id) when granted (all counted now),
        else (seconds to wait, ""). A sync takes its lookups together so it never stops half-way."""
        grant_id = uuid.uuid4().hex
        try:
            wait_ms = self._acquire(
                keys=[keys.rate_log(account, endpoint, "burst"), keys.rate_log(account, endpoint, "steady"),
                      keys.tenant_backoff(tenant), keys.rate_log(account, endpoint, "next"),
                      keys.rate_log(account, endpoint, "promised")],
                args=[limit.burst.limit, limit.burst.length_ms, limit.steady.limit, limit.steady.length_ms,
                      grant_id, limit.pace_ms, limit.pace_tolerance_ms, max(1, count), self._now_arg()],
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise LimiterUnavailable(f"rate limiter unreachable ({exc}); nothing sent to Klaviyo") from exc
        wait_s = int(wait_ms) / 1000.0
        return wait_s, "" if wait_s > 0 else grant_id

    def refund(self, account: str, endpoint: str, limit: EndpointLimit, grant_id: str, used: int,
               count: int) -> None:
        """Give back the places of a grant of `count` that only `used` requests needed."""
        if used >= count or not grant_id:
            return
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):   # they then simply expire
            self._refund(keys=[keys.rate_log(account, endpoint, "burst"), keys.rate_log(account, endpoint, "steady"),
                               keys.rate_log(account, endpoint, "next")],
                         args=[grant_id, used + 1, count, limit.pace_ms, self._now_arg()])

    def _now_arg(self) -> str:
        return "" if self.clock_ms is None else str(self.clock_ms())

    def back_off(self, tenant: str, seconds: float) -> None:
        """After a 429: no request of the tenant is granted for `seconds`."""
        self._back_off(keys=[keys.tenant_backoff(tenant)], args=[max(1, int(seconds * 1000))])

    def backoff_remaining_s(self, tenant: str) -> float:
        return max(0, int(self.redis.pttl(keys.tenant_backoff(tenant)))) / 1000.0
