"""Backfill: every customer of a scheme, one task each, under one run id.

Streaming: one page of 100 customers is in memory at a time, whatever the size of the scheme.
A customer that paging returns twice (records moving between pages while we read) is enqueued
once, so the run's expected count is exact and the run ends when every customer has its outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from celery import Celery

from producers.loyale import LoyaleClient
from worker.messages import QUEUE_BACKFILL, CustomerMessage, enqueue_many, snapshot_id
from worker.store import Store

log = structlog.get_logger("backfill")

#: Stable order while paging, so a customer does not move between pages as others are added.
BACKFILL_SORTS = "createdDate"
#: Loyale's list leaves deleted customers out unless the filter names `deleted`; a backfill needs
#: them too (a deleted customer's Klaviyo profile is suppressed). If Loyale's Sieve does not know the
#: field it ignores the filter, which is the same list as without it.
BACKFILL_FILTERS = "deleted==true|false"

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Produced:
    run_id: str
    enqueued: int
    duplicates: int


def enqueue_customers(app: Celery, store: Store, loyale: LoyaleClient, tenant: str, run_id: str,
                      customers: list[object], queue: str, resume: bool = False) -> tuple[int, int]:
    """Snapshot and enqueue a page of customers once each, in one round trip; returns (enqueued, duplicates).

    `resume`: enqueue every customer without an outcome in the run, even if it was enqueued before
    (its message may have been lost with a Redis that kept nothing); a second delivery is harmless."""
    snapshots = [loyale.snapshot(raw) for raw in customers]
    ids = [snapshot_id(s) for s in snapshots]
    fresh = store.mark_enqueued(run_id, ids)
    if resume:
        fresh = [outcome is None for outcome in store.outcomes_of(run_id, ids)]
    enqueued = enqueue_many(app, [CustomerMessage(tenant=tenant, run=run_id, customer=snapshot)
                                  for snapshot, is_new in zip(snapshots, fresh, strict=True) if is_new], queue)
    return enqueued, len(snapshots) - enqueued


def wait_for_room(store: Store, run_id: str, max_in_flight: int, poll_s: float = 0.2,
                  sleep: Callable[[float], None] = time.sleep) -> None:
    """Backpressure: hold the producer while `max_in_flight` of the run's customers wait, on the queue or
    in a worker's buffer (`Store.waiting`).

    The queue (and so Redis memory) then stays bounded for any scheme size, and two runs producing at
    once each keep at most their bound on the queue, so a FIFO queue interleaves them fairly. Customers
    a worker's batch holds (looked up, in bulk jobs that may take minutes) do not count: they are bounded
    by the workers' threads and batch size, and counting them held a backfill to one bound's worth of
    customers per job duration (10,000 per 90 s job: 111 a second).
    """
    while store.waiting(run_id) >= max_in_flight:
        sleep(poll_s)


def run_backfill(*, app: Celery, store: Store, loyale: LoyaleClient, tenant: str, run_id: str | None = None,
                 queue: str = QUEUE_BACKFILL, on_progress: Progress | None = None,
                 max_in_flight: int | None = None, resume: bool = False) -> Produced:
    """Page through the whole scheme and enqueue every customer; returns when all are enqueued.
    `resume` re-enqueues the customers of an existing run that have no outcome yet."""
    run_id = run_id or store.create_run(tenant, "backfill")
    known = store.run(run_id)
    if known is None or not known.tenant:     # new, or its record was lost (a worker's counter may remain)
        store.create_run(tenant, "backfill", run_id=run_id)
    elif resume:
        store.set_run_field(run_id, state="running")
    store.set_run_field(run_id, **{"meta:queue": queue})   # where a rescue sends its lost customers
    enqueued = duplicates = 0
    for page in loyale.pages(filters=BACKFILL_FILTERS, sorts=BACKFILL_SORTS):
        if max_in_flight:
            wait_for_room(store, run_id, max_in_flight)
        added, dupes = enqueue_customers(app, store, loyale, tenant, run_id, page.customers, queue, resume)
        enqueued += added
        duplicates += dupes
        store.set_run_field(run_id, **{"meta:page": str(page.number)})
        if on_progress:
            on_progress(enqueued, page.total_count)
    store.finish_producing(run_id, store.enqueued_count(run_id))
    log.info("backfill_enqueued", tenant=tenant, run=run_id, customers=enqueued, duplicates=duplicates)
    return Produced(run_id, enqueued, duplicates)
