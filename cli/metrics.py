"""`loyale-sync metrics`: serve the sync's Prometheus metrics (read from Redis at each scrape)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import redis
import typer

from cli import context as ctx
from producers.watermarks import Watermarks
from worker.broker import open_broker
from worker.errors import ConfigError
from worker.messages import QUEUE_BACKFILL, QUEUE_INCREMENTAL, QUEUE_PRODUCERS
from worker.metrics import SyncCollector, registry_for, start_server
from worker.store import Store

QUEUES = (QUEUE_INCREMENTAL, QUEUE_BACKFILL, QUEUE_PRODUCERS)
#: A scrape must answer within Prometheus's timeout (10 s by default) even when Redis does not.
REDIS_TIMEOUT_S = 2.0


def scrape_redis(url: str) -> redis.Redis:
    """A Redis client that fails fast: a scrape reports `loyale_sync_redis_up 0` rather than hang."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_S,
                                socket_connect_timeout=REDIS_TIMEOUT_S)


def register(app: typer.Typer) -> None:
    @app.command()
    def metrics(
        port: Annotated[int | None, typer.Option(help="Port (default SYNC_METRICS_PORT, 9808).")] = None,
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    ) -> None:
        """Serve Prometheus metrics at /metrics: outcomes and Klaviyo requests per tenant, queue depths, the
        oldest unsynced change. Everything is read from Redis at each scrape, so one exporter covers every
        worker."""
        config = ctx.settings()
        try:
            tenant_ids = list(config.load_tenants_each())  # an invalid tenant still has its gauges
        except ConfigError as exc:
            raise ctx.fail(str(exc)) from None
        state = scrape_redis(config.redis_url)
        broker = open_broker(config.broker, timeout_s=REDIS_TIMEOUT_S)
        collector = SyncCollector(Store(state, config.retention_days), broker, tenant_ids, QUEUES,
                                  watermark=Watermarks(state).watermark)
        chosen_port = port if port is not None else config.metrics_port
        try:
            server = start_server(registry_for(collector), host, chosen_port)
        except OSError as exc:
            raise ctx.fail(f"cannot listen on {host}:{chosen_port} ({exc.strerror or exc}): choose another port "
                           "with --port or SYNC_METRICS_PORT") from None
        count = len(tenant_ids)
        ctx.console.print(f"serving Prometheus metrics on http://{host}:{chosen_port}/metrics for {count} "
                          f"tenant{'s' if count != 1 else ''}; Ctrl-C stops", soft_wrap=True, highlight=False)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop quietly
            server.join()
