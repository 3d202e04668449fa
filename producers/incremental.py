"""Incremental passes: the customers Loyale changed since the tenant's watermark, one task each.

A pass reads `updatedDate >= watermark - overlap` (the overlap catches changes stamped just before
the previous pass read, and clock skew between Loyale and us), sorted by `updatedDate`. It enqueues
each (customer, updatedDate) once, even when passes overlap, and moves the watermark to the time
the pass started only after everything it read is enqueued: a pass that fails part-way leaves the
watermark where it was, and the next pass reads those changes again (and skips what was enqueued).

Loyale's list uses Sieve, which silently ignores a filter it does not support: the answer would be
the whole scheme. Every customer the pass reads is checked against the filter, and a pass that gets
customers older than it asked for stops with an error instead of re-syncing the whole scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from celery import Celery

from producers.loyale import LoyaleClient
from worker.errors import SyncError
from worker.models import parse_datetime
from worker.store import Store
from worker.sync import customer_id_of
from worker.tasks import QUEUE_INCREMENTAL, enqueue

log = structlog.get_logger("incremental")

SORTS = "updatedDate,id"


class FilterIgnored(SyncError):
    """Raised when Loyale answered a filtered list with customers outside the filter."""


@dataclass(frozen=True)
class PassResult:
    run_id: str
    since: datetime
    read: int
    enqueued: int
    watermark: datetime


def loyale_time(moment: datetime) -> str:
    """UTC with a Z: a "+00:00" in a query string can arrive as " 00:00" and break the filter."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_incremental(*, app: Celery, store: Store, loyale: LoyaleClient, tenant: str, overlap_s: float,
                    now: datetime | None = None) -> PassResult:
    started = now or datetime.now(UTC)
    watermark = store.watermark(tenant) or started - timedelta(seconds=overlap_s)
    since = watermark - timedelta(seconds=overlap_s)
    run_id = store.create_run(tenant, "incremental", since=since.isoformat())
    read = enqueued = 0
    # `deleted` is named so that deleted customers are listed too (they must be suppressed).
    filters = f"updatedDate>={loyale_time(since)},deleted==true|false"
    for page in loyale.pages(filters=filters, sorts=SORTS):
        changes = []
        for raw in page.customers:
            updated = parse_datetime(raw.get("updatedDate")) if isinstance(raw, dict) else None
            if updated is not None and updated < since:
                store.set_run_field(run_id, state="failed", error="Loyale ignored the updatedDate filter")
                raise FilterIgnored(
                    f"Loyale returned a customer last updated {updated.isoformat()}, before the "
                    f"{since.isoformat()} this pass asked for: it ignored the updatedDate filter. The pass "
                    "stopped instead of re-syncing the whole scheme; check that Loyale's customer list "
                    "supports Filters=updatedDate>=... for this scheme")
            changes.append((raw, updated))
        read += len(changes)
        fresh = store.claim_changes(tenant, [(customer_id_of(raw), updated) for raw, updated in changes],
                                    ttl_s=int(overlap_s * 3) + 60)
        new = [(raw, updated) for (raw, updated), is_new in zip(changes, fresh, strict=True) if is_new]
        store.mark_enqueued(run_id, [customer_id_of(raw) for raw, _ in new])
        for raw, _ in new:
            enqueue(app, tenant, run_id, loyale.snapshot(raw), QUEUE_INCREMENTAL)
        enqueued += len(new)
    store.finish_producing(run_id, store.enqueued_count(run_id))
    store.set_watermark(tenant, started)
    log.info("incremental_pass", tenant=tenant, run=run_id, read=read, enqueued=enqueued, since=since.isoformat())
    return PassResult(run_id, since, read, enqueued, started)
