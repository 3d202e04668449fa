"""Per-process dependencies: built once in each worker process (after fork), passed to the syncs."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial

import httpx
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker.broker import Broker, open_broker
from worker.errors import RetryableError
from worker.job_watcher import JobWatcher
from worker.klaviyo import KlaviyoClient
from worker.ratelimit import EndpointLimit, RateLimiter, endpoint_limits, load_spec_limits
from worker.ratelimit.accounts import AccountCache
from worker.ratelimit.gate import Gate
from worker.retry import retry_policy
from worker.settings import Settings, TenantConfig
from worker.store import Store
from worker.sync import SyncDeps

#: The run the current task belongs to, so the Klaviyo request hook can count requests per run.
current_run: ContextVar[str | None] = ContextVar("current_run", default=None)
#: A per-customer sync makes up to two lookups (by email, then by external id). It takes both places
#: in the limiter at once before the first, so it never gets one, is deferred for the second, and
#: has to start over (spending the first again); the place it did not need is given back.
LOOKUPS_PER_SYNC = 2


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
    #: a Celery task is deferred with a countdown instead, so a worker does not sleep on a limit (on
    #: RabbitMQ, below a second it does: `Settings.task_wait_inline_s`).
    wait_inline_s: float = 0.0
    gate: Gate = field(init=False)
    #: Polls the bulk import jobs of every batch this process runs (`worker.job_watcher`).
    watcher: JobWatcher = field(init=False)
    _klaviyo: dict[str, KlaviyoClient] = field(default_factory=dict)
    _limits: dict[str, dict[str, EndpointLimit]] = field(default_factory=dict)
    _broker: Broker | None = None

    def __post_init__(self) -> None:
        accounts = AccountCache(self.redis, lambda t: self.tenants[t].klaviyo_private_key.get_secret_value(),
                                lambda t: str(self.klaviyo(t).account()["id"]))
        self.gate = Gate(self.limiter, accounts, self.limits, wait_inline_s=self.wait_inline_s,
                         prepaid_for_s=self.settings.limiter_transit_s / 2)
        self.watcher = JobWatcher(self.limiter.back_off, retry=retry_policy(self.settings))

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
        with _building:   # a backfill worker runs its batches on threads
            return self._client(tenant_id)

    def _client(self, tenant_id: str) -> KlaviyoClient:
        if tenant_id not in self._klaviyo:
            tenant = self.tenants[tenant_id]
            self._klaviyo[tenant_id] = KlaviyoClient(
                self.http, tenant=tenant.id, base_url=tenant.klaviyo_base_url,
                private_key=tenant.klaviyo_private_key, revision=self.settings.klaviyo_revision,
                gate=partial(self.gate, tenant_id),
                on_request=self._count_request,
            )
        return self._klaviyo[tenant_id]

    def limits(self, tenant_id: str) -> dict[str, EndpointLimit]:
        if tenant_id not in self._limits:
            self._limits[tenant_id] = endpoint_limits(
                self.limits_table, headroom=self.tenants[tenant_id].headroom,
                rate_scale=self.settings.limiter_rate_scale, window_scale=self.settings.limiter_window_scale,
                transit_ms=round(self.settings.limiter_transit_s * 1000))
        return self._limits[tenant_id]

    def account(self, tenant_id: str) -> str:
        return self.gate.accounts.account(tenant_id)

    # the gate's, here for the tasks' call sites
    def prepaid(self, tenant_id: str, endpoint: str, count: int) -> AbstractContextManager[float]:
        return self.gate.prepaid(tenant_id, endpoint, count)

    def waiting_inline(self, wait_s: float) -> AbstractContextManager[None]:
        return self.gate.waiting_inline(wait_s)

    def broker(self) -> Broker:
        """The Celery broker (`settings.broker`, perhaps not the state Redis), asked about queue depths."""
        if self._broker is None:
            self._broker = open_broker(self.settings.broker)
        return self._broker

    def _count_request(self, endpoint: str, status: int) -> None:
        self.store.count_request(current_run.get(), endpoint, status)

    def deps(self, tenant_id: str) -> SyncDeps:
        return SyncDeps(tenant=self.tenants[tenant_id], klaviyo=self.klaviyo(tenant_id), store=self.store)

    def close(self) -> None:
        self.http.close()
        self.redis.close()
        if self._broker is not None:
            self._broker.close()


__all__ = ["Runtime", "current_run", "make_http_client", "make_redis", "RetryableError"]


_runtime: Runtime | None = None
_building = threading.RLock()


def get_runtime() -> Runtime:
    """This process's dependencies, built on first use (in the worker child, after fork)."""
    global _runtime
    with _building:
        if _runtime is None:
            from worker.settings import get_settings

            settings = get_settings()
            _runtime = Runtime.build(settings, wait_inline_s=settings.task_wait_inline_s)
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime
