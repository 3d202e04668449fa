"""Stranded customers: re-enqueue the customers of a run whose messages the broker lost.

Celery's Redis transport takes a message off the queue and then, in a second step, records it as
unacknowledged (celery/celery#7950, celery/kombu#305). A worker SIGKILLed between the two steps
loses that one message: it is neither queued nor unacknowledged, and its customer would never get an
outcome, leaving the run "running" for ever. (Seen in our fault suite: about one customer in 1,500
after three SIGKILLs of a busy batching worker.)

Beat runs `rescue_stalled_runs` every `SYNC_RESCUE_INTERVAL_S`. A run is stranded when all of these
hold, and then every customer of it without an outcome is read again from Loyale and enqueued again
(a customer synced twice is harmless: syncs are idempotent and a run counts one outcome each):
  - its producer has finished and some customers have no outcome;
  - no customer got an outcome for `SYNC_STALL_AFTER_S` (by default longer than the visibility
    timeout plus the longest countdown, so any message still held by a worker, or restored from a
    dead one, would have produced one);
  - the sync queues are empty on the broker (a backlog of other work is not a lost message).

On RabbitMQ (`SYNC_BROKER_URL=amqp://`) that loss does not happen: a delivery stays the broker's until it
is acknowledged, and goes back on the queue when the consumer's connection dies, so the stall is sized
from the consumer timeout instead of the visibility timeout. The rescue stays on as a safety net for
what still loses a message there: an operator purging a queue, or RabbitMQ 4's default delivery limit
on quorum queues (a message returned 20 times is dropped).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from celery import Celery

from producers.loyale import LoyaleClient, fresh_snapshot
from worker.broker import Broker
from worker.messages import QUEUE_BACKFILL, QUEUE_INCREMENTAL, CustomerMessage, enqueue_many
from worker.store import RunInfo, Store

log = structlog.get_logger("rescue")

#: Runs whose customers travel through the queues (undo and sync-one run in the command itself).
#: The queue each kind uses, unless the run names its own (a `--per-customer` backfill does).
QUEUED_KINDS = {"backfill": QUEUE_BACKFILL, "retry": QUEUE_INCREMENTAL, "incremental": QUEUE_INCREMENTAL,
                "webhook": QUEUE_INCREMENTAL}


def is_stranded(run: RunInfo, now: float, stall_after_s: float) -> bool:
    """The run's producer is done, customers lack an outcome and none arrived for `stall_after_s`."""
    if run.kind not in QUEUED_KINDS or run.done or run.expected is None or run.completed >= run.expected:
        return False
    last_progress = max(run.progress_at or 0.0, run.produced_at or 0.0, run.started_at)
    return now - last_progress >= stall_after_s


@dataclass(frozen=True)
class Rescued:
    run_id: str
    enqueued: int


def rescue_run(app: Celery, store: Store, loyale: LoyaleClient, run: RunInfo) -> Rescued:
    """Read each customer of `run` without an outcome from Loyale again and enqueue it again."""
    missing = store.missing(run.id)
    # read one by one as they are published, a chunk per round trip
    enqueue_many(app, (CustomerMessage(tenant=run.tenant, run=run.id, customer=fresh_snapshot(loyale, customer_id))
                       for customer_id in missing), run.meta.get("queue") or QUEUED_KINDS[run.kind])
    store.set_run_field(run.id, progress_at=repr(time.time()))   # give the rescued customers time
    log.warning("run_rescued", run=run.id, tenant=run.tenant, customers=len(missing),
                why="customers without an outcome and nothing left on the queues (a lost broker message)")
    return Rescued(run.id, len(missing))


def rescue_stalled_runs(app: Celery, store: Store, broker: Broker, tenants: list[str],
                        loyale_for: Callable[[str], LoyaleClient], stall_after_s: float, now: float | None = None,
                        runs_per_tenant: int = 50) -> list[Rescued]:
    now = time.time() if now is None else now
    stranded = [run for tenant in tenants for run in store.runs(tenant, limit=runs_per_tenant)
                if is_stranded(run, now, stall_after_s)]
    if not stranded or not broker.empty([QUEUE_BACKFILL, QUEUE_INCREMENTAL]):
        return []
    return [rescue_run(app, store, loyale_for(run.tenant), run) for run in stranded]
