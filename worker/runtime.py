"""Per-process dependencies: built once in each worker process (after fork), passed to the syncs."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

import httpx
import redis

from worker.errors import Deferred
from worker.klaviyo import KlaviyoClient
from worker.settings import Settings, TenantConfig
from worker.store import Store
from worker.sync import SyncDeps

#: The run the current task belongs to, so the Klaviyo request hook can count requests per run.
current_run: ContextVar[str | None] = ContextVar("current_run", default=None)


def make_http_client(settings: Settings) -> httpx.Client:
    """The one HTTP client of a process: pooled, with explicit timeouts."""
    return httpx.Client(
        timeout=httpx.Timeout(settings.http_timeout_s, connect=settings.http_connect_timeout_s),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        headers={"User-Agent": "loyale-klaviyo-sync/0.1"},
    )


@dataclass
class Runtime:
    settings: Settings
    tenants: dict[str, TenantConfig]
    redis: redis.Redis
    store: Store
    http: httpx.Client
    _klaviyo: dict[str, KlaviyoClient] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, tenants: dict[str, TenantConfig] | None = None) -> Runtime:
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
        return cls(
            settings=settings,
            tenants=tenants if tenants is not None else settings.load_tenants(),
            redis=client,
            store=Store(client, settings.retention_days),
            http=make_http_client(settings),
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

    def _gate(self, tenant_id: str, endpoint: str) -> None:
        """Before every Klaviyo request: a tenant that was throttled stays quiet until Retry-After."""
        wait_s = self.store.backoff_remaining_s(tenant_id)
        if wait_s > 0:
            raise Deferred(f"tenant {tenant_id} backs off after a 429", retry_after_s=wait_s)

    def _count_request(self, endpoint: str, status: int) -> None:
        self.store.count_request(current_run.get(), endpoint, status)

    def deps(self, tenant_id: str) -> SyncDeps:
        return SyncDeps(tenant=self.tenants[tenant_id], klaviyo=self.klaviyo(tenant_id), store=self.store)

    def close(self) -> None:
        self.http.close()
        self.redis.close()
