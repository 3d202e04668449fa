"""Prometheus metrics of the sync, read from Redis when Prometheus scrapes (`loyale-sync metrics`).

Every number is read from Redis at scrape time, so one exporter sees the whole fleet (any number of
worker processes on any number of machines) without prometheus_client's multiprocess mode, and the
counters survive worker restarts:

    loyale_sync_customers_total{tenant,outcome}                  counter  customers that reached the outcome
    loyale_sync_events_total{tenant,event,outcome}               counter  loyalty events, by event name and
                                                                          outcome (sent, duplicate, dropped...)
    loyale_sync_klaviyo_requests_total{tenant,endpoint,status}   counter  Klaviyo requests sent inside runs
                                                                          (status 0: no answer, e.g. a timeout)
    loyale_sync_klaviyo_throttled_total{tenant,endpoint}         counter  those answered 429
    loyale_sync_queue_depth{queue}                               gauge    messages waiting on the broker's queue
    loyale_sync_oldest_unsynced_change_seconds{tenant}           gauge    see `unsynced_since`
    loyale_sync_tenant_paused{tenant}                            gauge    1 while the tenant is paused (401/403)
    loyale_sync_redis_up                                         gauge    0 when Redis or the broker failed

The counters are cumulative hashes the store keeps beside its per-run counts (`Store.outcome_totals`,
`Store.event_totals`, `Store.request_totals`); they only go up, and start again from 0 only if Redis loses its data.
`endpoint` is the operation (`PATCH /api/profiles/{id}`), never a concrete path, so the number of
series is bounded by tenants x endpoints x statuses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import redis
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from worker.broker import Broker, BrokerError
from worker.store import RunInfo, Store

log = structlog.get_logger("metrics")

#: Runs of a tenant looked at for the oldest unsynced change (incremental passes run every minute).
RECENT_RUNS = 50
def unsynced_since(watermark: datetime | None, runs: list[RunInfo]) -> float | None:
    """The moment (epoch seconds) before which every Loyale change of the tenant is known to be synced;
    None when no incremental pass has run yet. `runs` are the tenant's recent runs, newest first.

    Incremental passes form a chain: each reads the changes made since the previous pass started (the
    watermark) and then moves the watermark to its own start. A change made after the watermark has not
    been read yet; the changes a pass read are all synced once its run is done. So the answer is the
    watermark when every pass that moved it is done; otherwise the start of the pass before the oldest
    unfinished one (or, when that pass is older than `runs`, the unfinished pass's own `since`, which is
    earlier by the overlap). Passes that failed before moving the watermark are left out: the next pass
    reads their changes again. Backfills are not changes and are left out too.
    """
    passes = [r for r in runs if r.kind == "incremental" and r.state in ("running", "done")]
    unfinished = [index for index, run in enumerate(passes) if run.state != "done"]
    if not unfinished:
        return watermark.timestamp() if watermark is not None else None
    oldest = unfinished[-1]
    if oldest + 1 < len(passes):
        return passes[oldest + 1].started_at
    since = passes[oldest].meta.get("since")
    return datetime.fromisoformat(since).timestamp() if since else passes[oldest].started_at


class SyncCollector:
    """A prometheus_client collector that reads the sync's state from Redis on every scrape.

    `store` is the state store; `broker` the Celery broker (often the same Redis server); `tenants`
    the configured tenant ids (for the per-tenant gauges; counters carry every tenant they ever saw);
    `watermark` a tenant's incremental watermark, kept by the producers (`producers.watermarks`, which
    `worker/` does not import: `cli.metrics` hands it over).
    """

    def __init__(self, store: Store, broker: Broker, tenants: Iterable[str], queues: Iterable[str], *,
                 watermark: Callable[[str], datetime | None], clock: Callable[[], float] = time.time,
                 recent_runs: int = RECENT_RUNS) -> None:
        self.store = store
        self.watermark = watermark
        self.broker = broker
        self.tenants = sorted(tenants)
        self.queues = list(queues)
        self.clock = clock
        self.recent_runs = recent_runs

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("loyale_sync_redis_up", "1 if the state Redis and the broker answered this scrape.")
        try:
            families = [self._customers(), self._events(), *self._requests(), self._queue_depth(),
                        *self._tenant_gauges()]
        except (redis.RedisError, BrokerError) as exc:
            log.warning("metrics_redis_failed", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _customers(self) -> Metric:
        family = CounterMetricFamily("loyale_sync_customers", "Customers that reached each outcome, over every run.",
                                     labels=["tenant", "outcome"])
        for (tenant, outcome), count in sorted(self.store.outcome_totals().items()):
            family.add_metric([tenant, outcome], count)
        return family

    def _events(self) -> Metric:
        family = CounterMetricFamily(
            "loyale_sync_events", "Loyalty events by event name (Klaviyo metric) and outcome (sent, duplicate, "
            "dropped_no_consent, dropped_no_profile, rejected, failed), over every run.",
            labels=["tenant", "event", "outcome"])
        for (tenant, event, outcome), count in sorted(self.store.event_totals().items()):
            family.add_metric([tenant, event, outcome], count)
        return family

    def _requests(self) -> list[Metric]:
        requests = CounterMetricFamily(
            "loyale_sync_klaviyo_requests", "Klaviyo requests sent inside runs, by operation and HTTP status "
            "(0: no answer, e.g. a timeout or a dropped connection).", labels=["tenant", "endpoint", "status"])
        throttled = CounterMetricFamily("loyale_sync_klaviyo_throttled", "Klaviyo requests answered 429 (throttled).",
                                        labels=["tenant", "endpoint"])
        throttled_counts: dict[tuple[str, str], int] = {}
        for (tenant, endpoint, status), count in sorted(self.store.request_totals().items()):
            requests.add_metric([tenant, endpoint, status], count)
            if status == "429":
                throttled_counts[(tenant, endpoint)] = throttled_counts.get((tenant, endpoint), 0) + count
        for (tenant, endpoint), count in sorted(throttled_counts.items()):
            throttled.add_metric([tenant, endpoint], count)
        return [requests, throttled]

    def _queue_depth(self) -> Metric:
        family = GaugeMetricFamily("loyale_sync_queue_depth", "Messages waiting on the broker's queue (not counting "
                                   "those a worker holds: reserved, or waiting for a retry countdown).",
                                   labels=["queue"])
        for queue, depth in self.broker.depths(self.queues).items():
            family.add_metric([queue], depth)
        return family

    def _tenant_gauges(self) -> list[Metric]:
        unsynced = GaugeMetricFamily(
            "loyale_sync_oldest_unsynced_change_seconds",
            "Seconds since the moment before which every Loyale change is known to be synced: the newest "
            "incremental watermark whose passes have all finished. A change can have waited at most this long. "
            "No sample until the tenant's first incremental pass.", labels=["tenant"])
        paused = GaugeMetricFamily("loyale_sync_tenant_paused", "1 while the tenant is paused after Klaviyo refused "
                                   "its key (401/403); `loyale-sync verify` says why.", labels=["tenant"])
        now = self.clock()
        for tenant in self.tenants:
            since = unsynced_since(self.watermark(tenant), self.store.runs(tenant, limit=self.recent_runs))
            if since is not None:
                unsynced.add_metric([tenant], max(0.0, now - since))
            paused.add_metric([tenant], 1 if self.store.tenant_paused(tenant) is not None else 0)
        return [unsynced, paused]


def registry_for(collector: SyncCollector) -> CollectorRegistry:
    """A registry holding only the sync's metrics (this exporter's own process metrics are not the fleet's)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def start_server(registry: CollectorRegistry, host: str, port: int) -> threading.Thread:
    """Serve the registry at http://host:port/metrics from a daemon thread, returned (join it to serve until
    the process is stopped); raises OSError when the port cannot be bound."""
    _, thread = start_http_server(port, addr=host, registry=registry)
    return thread
