"""The backfill producer alone, in a process of its own: its enqueue rate, CPU and peak memory.

`produce` runs in a child process started by `produce_in_child` (spawned, so it holds only what a
`loyale-sync backfill` holds: the bench's own copy of the scheme stays in the parent), against the fake
Loyale and a private Redis, with no worker and no backpressure bound.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from producers.backfill import run_backfill
from producers.loyale import LoyaleClient, Page
from worker.app import create_app
from worker.settings import Settings
from worker.store import Store


class TimedLoyale(LoyaleClient):
    """The producer's Loyale client, counting the seconds (wall and this thread's CPU) spent getting pages:
    waiting for the fake and parsing its answer, not the producer's own work."""

    paging_s = 0.0
    paging_cpu_s = 0.0

    def pages(self, *args: Any, **kwargs: Any) -> Iterator[Page]:
        pages = super().pages(*args, **kwargs)
        while True:
            started, cpu_started = time.perf_counter(), time.thread_time()
            page = next(pages, None)
            self.paging_s += time.perf_counter() - started
            self.paging_cpu_s += time.thread_time() - cpu_started
            if page is None:
                return
            yield page


@dataclass(frozen=True)
class Produced:
    enqueued: int
    seconds: float
    paging_s: float
    #: The producer's CPU seconds, paging left out: what the rate would be with a core to itself.
    own_cpu_s: float
    peak_rss_mb: float

    @property
    def enqueue_per_second(self) -> float:
        """Customers enqueued per second of the producer's own time (snapshot, dedupe, publish)."""
        return self.enqueued / max(self.seconds - self.paging_s, 1e-9)

    @property
    def enqueue_per_cpu_second(self) -> float:
        return self.enqueued / max(self.own_cpu_s, 1e-9)


def produce(redis_url: str, tenants_file: str, tenant_id: str) -> Produced:
    """Backfill the tenant's scheme onto the queue (the CLI's `run_backfill`, no bound) and measure it."""
    settings = Settings(redis_url=redis_url, tenants_file=tenants_file, log_level="WARNING")
    tenant = settings.load_tenants()[tenant_id]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    app = create_app(settings)
    with httpx.Client(timeout=60) as http:
        loyale = TimedLoyale(http, tenant=tenant.id, base_url=tenant.loyale_base_url,
                             scheme_id=tenant.loyale_scheme_id, admin_email=tenant.loyale_admin_email,
                             admin_password=tenant.loyale_admin_password)
        started, cpu_started = time.perf_counter(), time.thread_time()
        produced = run_backfill(app=app, store=Store(client), loyale=loyale, tenant=tenant.id)
        seconds, cpu_s = time.perf_counter() - started, time.thread_time() - cpu_started
    app.close()
    client.close()
    return Produced(produced.enqueued, seconds, loyale.paging_s, cpu_s - loyale.paging_cpu_s, peak_rss_mb())


def peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM, which starts afresh at exec (`ru_maxrss` keeps
    the high-water mark of the process that forked it, here the bench holding a copy of the scheme)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024   # kB
    raise RuntimeError("no VmHWM in /proc/self/status (the benchmark runs on Linux)")


def produce_in_child(redis_url: str, tenants_file: str, tenant_id: str) -> Produced:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(produce, redis_url, tenants_file, tenant_id).result()
