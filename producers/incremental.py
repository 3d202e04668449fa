"""Incremental passes: the customers Loyale changed since the tenant's watermark, one task each.

A pass reads `updatedDate >= watermark - overlap` (the overlap catches changes stamped just before
the previous pass read, and clock skew between Loyale and us), sorted by `updatedDate`. It enqueues
each (customer, updatedDate) once, even when passes overlap, and moves the watermark to the time
the pass started only after everything it read is enqueued: a pass that fails part-way leaves the
watermark where it was, and the next pass reads those changes again (and skips what was enqueued).

Paging is by key, never by page number: the sort key (`updatedDate`) moves while we read (a customer
updated during the pass jumps to the end, and every later customer moves up a row, so page N+1 would
start one customer too late and that customer would be skipped). Each request asks again for page 1 of
`updatedDate >= <the last updatedDate read>`, and the customers already read at that exact stamp are
skipped by id (ids are not compared: Loyale's GUID order is not Python's string order). A customer
updated during the pass is simply read again further on. When more customers than a page share one
stamp, that group is read by page number over `updatedDate == stamp` sorted by id, and read again
until a full read finds no one new: customers only leave such a group (an update moves them later,
where the walk finds them anyway), so a re-read catches whoever moved up a page.

Loyale's list uses Sieve, which silently ignores a filter it does not support: the answer would be
the whole scheme. Every customer the pass reads is checked against the filter, and a pass that gets
customers older than it asked for stops with an error instead of re-syncing the whole scheme.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from celery import Celery

from producers.loyale import PAGE_SIZE_MAX, LoyaleClient
from producers.watermarks import Watermarks
from worker.errors import RetryableError, SyncError
from worker.messages import QUEUE_INCREMENTAL, CustomerMessage, customer_id_of, enqueue_many
from worker.models import parse_datetime
from worker.store import Store

log = structlog.get_logger("incremental")

SORTS = "updatedDate,id"
#: `deleted` is named so that deleted customers are listed too (they must be suppressed).
INCLUDE_DELETED = "deleted==true|false"
#: Re-reads of one over-full group of equal stamps before the pass gives up (the next pass retries).
MAX_TIE_REREADS = 20


class FilterIgnored(SyncError):
    """Raised when Loyale answered a filtered list with customers outside the filter."""


@dataclass(frozen=True)
class PassResult:
    run_id: str
    since: datetime
    read: int
    enqueued: int
    watermark: datetime


def to_loyale_filter_time(moment: datetime) -> str:
    """UTC with a Z: a "+00:00" in a query string can arrive as " 00:00" and break the filter."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp(raw: Any) -> datetime | None:
    return parse_datetime(raw.get("updatedDate")) if isinstance(raw, dict) else None


def _id(raw: Any) -> str:
    return str(raw.get("id")) if isinstance(raw, dict) else ""


def _check_filter(raw: Any, lower: datetime, upper: datetime | None, since: datetime, on_ignored: Any) -> None:
    """A customer outside what we asked for means Loyale ignored the filter (Sieve does, silently)."""
    updated = _stamp(raw)
    if updated is not None and (updated < lower or (upper is not None and updated >= upper)):
        on_ignored()
        raise FilterIgnored(
            f"Loyale returned a customer last updated {updated.isoformat()}, outside the updatedDate range "
            f"from {lower.isoformat()} this pass asked for (the pass reads changes since {since.isoformat()}): "
            "it ignored the updatedDate filter. The pass stopped instead of re-syncing the whole scheme; "
            "check that Loyale's customer list supports Filters=updatedDate>=... for this scheme")


def changed_since(loyale: LoyaleClient, since: datetime, *, page_size: int = PAGE_SIZE_MAX,
                  on_ignored: Any = lambda: None) -> Iterator[list[Any]]:
    """Every customer with `updatedDate >= since`, in batches, paged by key (see the module docstring).

    A customer may come twice (updated while we read: the second time with its new stamp); none is skipped."""
    size = min(page_size, PAGE_SIZE_MAX)
    cursor = since                 # every customer stamped before `cursor` has been read
    at_cursor: set[str] = set()    # ids already read at exactly `cursor`
    while True:
        page = loyale.page(1, filters=f"updatedDate>={to_loyale_filter_time(cursor)},{INCLUDE_DELETED}", sorts=SORTS,
                           page_size=size)
        rows = page.customers
        for raw in rows:
            _check_filter(raw, cursor, None, since, on_ignored)
        stamps = [_stamp(raw) or cursor for raw in rows]
        if len(rows) >= size and all(stamp == cursor for stamp in stamps):
            # A whole page at one stamp: page 1 would never move on. Read that group whole, then go on
            # from the next microsecond (the stamps travel at microseconds; see _tie_group).
            yield from _tie_group(loyale, cursor, at_cursor, size, since, on_ignored)
            cursor, at_cursor = cursor + timedelta(microseconds=1), set()
            continue
        fresh = []
        for raw, stamp in zip(rows, stamps, strict=True):
            if stamp == cursor and _id(raw) in at_cursor:
                continue
            if stamp != cursor:
                cursor, at_cursor = stamp, set()
            at_cursor.add(_id(raw))
            fresh.append(raw)
        if fresh:
            yield fresh
        if len(rows) < size:
            return
        if not fresh:   # a full page with nothing new: Loyale's order disagrees with its own filter
            raise RetryableError("Loyale's customer list did not advance past updatedDate "
                                 f"{to_loyale_filter_time(cursor)}; the next pass reads these changes again")


def _tie_group(loyale: LoyaleClient, stamp: datetime, seen: set[str], size: int, since: datetime,
               on_ignored: Any) -> Iterator[list[Any]]:
    """Every customer stamped `stamp` not in `seen`, reading the group again until nothing is new."""
    # Loyale may keep more digits than the microseconds we read: ask for the whole microsecond.
    upper = stamp + timedelta(microseconds=1)
    filters = (f"updatedDate>={to_loyale_filter_time(stamp)},updatedDate<{to_loyale_filter_time(upper)},"
               f"{INCLUDE_DELETED}")
    for _ in range(MAX_TIE_REREADS):
        found_new = False
        for page in loyale.pages(filters=filters, sorts="id", page_size=size):
            for raw in page.customers:
                _check_filter(raw, stamp, upper, since, on_ignored)
            fresh = [raw for raw in page.customers if _id(raw) not in seen]
            seen.update(_id(raw) for raw in fresh)
            if fresh:
                found_new = True
                yield fresh
        if not found_new:
            return
    raise RetryableError(f"the customers stamped {to_loyale_filter_time(stamp)} kept changing while they were read; "
                         "the next pass reads these changes again")


def run_incremental(*, app: Celery, store: Store, watermarks: Watermarks, loyale: LoyaleClient, tenant: str,
                    overlap_s: float, now: datetime | None = None, page_size: int = PAGE_SIZE_MAX) -> PassResult:
    started = now or datetime.now(UTC)
    watermark = watermarks.watermark(tenant) or started - timedelta(seconds=overlap_s)
    since = watermark - timedelta(seconds=overlap_s)
    run_id = store.create_run(tenant, "incremental", since=since.isoformat())
    read = enqueued = 0

    def ignored() -> None:
        store.set_run_field(run_id, state="failed", error="Loyale ignored the updatedDate filter")

    for batch in changed_since(loyale, since, page_size=page_size, on_ignored=ignored):
        changes = [(raw, _stamp(raw)) for raw in batch]
        read += len(changes)
        fresh = watermarks.claim_changes(tenant, [(customer_id_of(raw), updated) for raw, updated in changes],
                                         ttl_s=int(overlap_s * 3) + 60)
        new = [(raw, updated) for (raw, updated), is_new in zip(changes, fresh, strict=True) if is_new]
        store.mark_enqueued(run_id, [customer_id_of(raw) for raw, _ in new])
        enqueued += enqueue_many(app, [CustomerMessage(tenant=tenant, run=run_id, customer=loyale.snapshot(raw))
                                       for raw, _ in new], QUEUE_INCREMENTAL)
    store.finish_producing(run_id, store.enqueued_count(run_id))
    watermarks.set_watermark(tenant, started)
    log.info("incremental_pass", tenant=tenant, run=run_id, read=read, enqueued=enqueued, since=since.isoformat())
    return PassResult(run_id, since, read, enqueued, started)
