"""Per-process dependencies: built once in each worker process (after fork), passed to the syncs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import httpx
import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker import keys
from worker.errors import Deferred, RetryableError, TenantFatalError, Throttled
from worker.klaviyo import GET_ACCOUNTS, KlaviyoClient
from worker.ratelimit import EndpointLimit, RateLimiter, endpoint_limits, key_fingerprint, load_spec_limits
from worker.settings import Settings, TenantConfig
from worker.store import Store
from worker.sync import SyncDeps

log = structlog.get_logger("runtime")

#: The run the current task belongs to, so the Klaviyo request hook can count requests per run.
current_run: ContextVar[str | None] = ContextVar("current_run", default=None)
#: A per-customer sync makes up to two lookups (by email, then by external id). It takes both places
#: in the limiter at once before the first, so it never gets one, is deferred for the second, and
#: has to start over (spending the first again); the place it did not need is given back.
LOOKUPS_PER_SYNC = 2


@dataclass
class Prepaid:
    """Places a running sync took in advance for one endpoint; its requests use them first."""

    grant_id: str
    count: int
    used: int = 0


_prepaid: ContextVar[dict[str, Prepaid] | None] = ContextVar("prepaid", default=None)
#: Overrides `Runtime.wait_inline_s` inside `Runtime.waiting_inline` (a batch of backfill customers).
_wait_inline_s: ContextVar[float] = ContextVar("wait_inline_s")
ACCOUNT_CACHE_S = 86_400
#: A key without accounts:read is limited under its own name; ask again after this long.
ACCOUNT_FALLBACK_CACHE_S = 3_600


def make_http_client(settings: Settings) -> httpx.Client:
    """The one HTTP client of a process: pooled, with explicit timeouts."""
    return httpx.Client(
        timeout=httpx.Timeout(settings.http_timeout_s, connect=settings.http_connect_timeout_s),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        headers={"User-Agent": "loyale-klaviyo-sync/0.1"},
    )


def make_redis(url: str) -> redis.Redis:
    """The state Redis: a blip of a second or two is ridden out by the client's own retries."""
    return redis.Redis.from_url(
        url, decode_responses=True, health_check_interval=30, socket_timeout=5, socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=6),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@dataclass
class Runtime:
    settings: Settings
    tenants: dict[str, TenantConfig]
    redis: redis.Redis
    store: Store
    http: httpx.Client
    limiter: RateLimiter
    limits_table: dict[str, tuple[str, str]]
    #: An interactive caller (`sync-one`, `preview`) waits up to this long for the limiter in place;
    #: a Celery task (0) is deferred with a countdown instead, so a worker never sleeps on a limit.
    wait_inline_s: float = 0.0
    _klaviyo: dict[str, KlaviyoClient] = field(default_factory=dict)
    _limits: dict[str, dict[str, EndpointLimit]] = field(default_factory=dict)
    _accounts: dict[str, tuple[str, float]] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, tenants: dict[str, TenantConfig] | None = None, *,
              wait_inline_s: float = 0.0) -> Runtime:
        client = make_redis(settings.redis_url)
        table = load_spec_limits(settings.klaviyo_spec_path)
        return cls(
            settings=settings,
            tenants=tenants if tenants is not None else settings.load_tenants(),
            redis=client,
            store=Store(client, settings.retention_days, settings.journal_retention_days),
            http=make_http_client(settings),
            limiter=RateLimiter(client),
            limits_table=table,
            wait_inline_s=wait_inline_s,
        )

    def klaviyo(self, tenant_id: str) -> KlaviyoClient:
        if tenant_id not in self._klaviyo:
            tenant = self.tenants[tenant_id]
            self._klaviyo[tenant_id] = KlaviyoClient(
                self.http, tenant=tenant.id, base_url=tenant.klaviyo_base_url,
                private_key=tenant.klaviyo_private_key, revision=self.settings.klaviyo_revision,
                gate=lambda endpoint, tenant_id=tenant_id: self._gate(tenant_id, endpoint),
                on_request=self._count_request,
            )
        return self._klaviyo[tenant_id]

    def limits(self, tenant_id: str) -> dict[str, EndpointLimit]:
        if tenant_id not in self._limits:
            self._limits[tenant_id] = endpoint_limits(
                self.limits_table, headroom=self.tenants[tenant_id].headroom,
                rate_scale=self.settings.limiter_rate_scale, window_scale=self.settings.limiter_window_scale)
        return self._limits[tenant_id]

    def account(self, tenant_id: str) -> str:
        """The Klaviyo account of the tenant's key: the unit Klaviyo's limits apply to.

        Asked once a day per key (GET /api/accounts allows 1/s, 15/min) and cached in Redis; a key
        without accounts:read is limited under its own fingerprint.
        """
        known = self._accounts.get(tenant_id)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        fingerprint = key_fingerprint(self.tenants[tenant_id].klaviyo_private_key.get_secret_value())
        cached = self.redis.get(keys.account_of_key(fingerprint))
        if cached is None:
            try:
                cached = str(self.klaviyo(tenant_id).account()["id"])
                self.redis.set(keys.account_of_key(fingerprint), cached, ex=ACCOUNT_CACHE_S)
            except TenantFatalError as exc:
                if exc.status != 403:
                    raise
                cached = f"key-{fingerprint}"
                self.redis.set(keys.account_of_key(fingerprint), cached, ex=ACCOUNT_FALLBACK_CACHE_S)
                log.warning("klaviyo_account_unknown", tenant=tenant_id,
                            hint="the key lacks accounts:read; tenants sharing an account will not share a limit")
            except Throttled:
                raise    # like any 429: the task backs the whole tenant off and comes back
            except RetryableError:
                # Klaviyo is struggling: limit under the key's own name for a minute rather than spend
                # the accounts endpoint's tiny quota (15/min) on every attempt of every customer.
                self._accounts[tenant_id] = (f"key-{fingerprint}", time.monotonic() + 60)
                return f"key-{fingerprint}"
        self._accounts[tenant_id] = (cached, time.monotonic() + ACCOUNT_CACHE_S)
        return cached

    @contextmanager
    def prepaid(self, tenant_id: str, endpoint: str, count: int) -> Iterator[float]:
        """Take `count` places for `endpoint` at once. Yields 0.0 when taken (the requests inside use
        them; unused ones are given back on exit), else the seconds to wait, having taken none."""
        account, limit = self.account(tenant_id), self._limit(tenant_id, endpoint)
        wait_s, grant_id = self.limiter.acquire_many(account, tenant_id, endpoint, limit, count)
        if wait_s > 0:
            yield wait_s
            return
        entry = Prepaid(grant_id, count)
        token = _prepaid.set({endpoint: entry})
        try:
            yield 0.0
        finally:
            _prepaid.reset(token)
            self.limiter.refund(account, endpoint, limit, grant_id, entry.used, count)

    @contextmanager
    def waiting_inline(self, wait_s: float) -> Iterator[None]:
        """Inside: wait up to `wait_s` for the limiter in place instead of raising `Deferred`."""
        token = _wait_inline_s.set(wait_s)
        try:
            yield
        finally:
            _wait_inline_s.reset(token)

    def _limit(self, tenant_id: str, endpoint: str) -> EndpointLimit:
        limits = self.limits(tenant_id)
        return limits.get(endpoint) or limits["GET /api/profiles"]

    def _gate(self, tenant_id: str, endpoint: str) -> None:
        """Before every Klaviyo request: ask the fleet-wide limiter (which also holds 429 back-offs)."""
        entry = (_prepaid.get() or {}).get(endpoint)
        if entry is not None and entry.used < entry.count and self.limiter.backoff_remaining_s(tenant_id) <= 0:
            entry.used += 1
            return
        limit = self._limit(tenant_id, endpoint)
        if endpoint == GET_ACCOUNTS:
            fingerprint = key_fingerprint(self.tenants[tenant_id].klaviyo_private_key.get_secret_value())
            account = f"key-{fingerprint}"
        else:
            account = self.account(tenant_id)
        wait_s = self.limiter.acquire(account, tenant_id, endpoint, limit)
        waited_s, may_wait_s = 0.0, _wait_inline_s.get(self.wait_inline_s)
        while wait_s > 0 and waited_s + wait_s <= may_wait_s:
            time.sleep(wait_s)
            waited_s += wait_s
            wait_s = self.limiter.acquire(account, tenant_id, endpoint, limit)
        if wait_s > 0:
            raise Deferred(f"rate limit of {endpoint} for tenant {tenant_id}", retry_after_s=wait_s)

    def _count_request(self, endpoint: str, status: int) -> None:
        self.store.count_request(current_run.get(), endpoint, status)

    def deps(self, tenant_id: str) -> SyncDeps:
        return SyncDeps(tenant=self.tenants[tenant_id], klaviyo=self.klaviyo(tenant_id), store=self.store)

    def close(self) -> None:
        self.http.close()
        self.redis.close()


__all__ = ["Runtime", "current_run", "make_http_client", "make_redis", "RetryableError"]
