"""The events' catch-up pass: Loyale's transactions and customer coupons since the tenant's events
watermark, so a loyalty event whose webhook was lost (Loyale gives up on a post after about five hours,
or our intake was down) still reaches Klaviyo, once.

Each pass reads `createdDate >= watermark - overlap` of the transactions and `updatedDate >= watermark -
overlap` of the customer coupons, makes their events (`worker.events`), leaves out those that already
have an outcome (a webhook brought them; `Store.handled_events`), and puts a hint per customer on the
queue carrying its events: the customer is read again and synced, and its events sent after the
profile, consent first (`worker.event_sync`), as for a webhook. The watermark moves to the time the
pass started once everything it read is on the queue; a pass that fails part-way is read again by the
next (the events' unique ids make a second read harmless).

Coupons change while they are read (a use moves one to the end of the `updatedDate` order, and the
rows after it up by one, across a page boundary), so every list is read again until a whole read finds
nothing new. Loyale's Sieve silently ignores a filter it does not know: a row older than asked for stops
the pass with an error instead of sending the whole history again. The list routes are UNCONFIRMED in
Loyale's documentation; one that answers 404 is skipped with a warning (webhooks still bring its events).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from celery import Celery

from producers.incremental import FilterIgnored, to_loyale_filter_time
from producers.loyale import PAGE_SIZE_MAX, LoyaleClient, LoyaleRouteMissing
from producers.watermarks import Watermarks
from worker import events as ev
from worker.errors import RetryableError
from worker.messages import QUEUE_INCREMENTAL, TASK_CUSTOMER_HINT, task_repr
from worker.models import parse_datetime
from worker.store import Store

log = structlog.get_logger("event_catchup")

TRANSACTIONS = "/api/Transaction"
CUSTOMER_COUPONS = "/api/CustomerCoupon"
#: Whole reads of one list before the pass gives up on a list that keeps moving (the next pass retries).
MAX_REREADS = 10


@dataclass(frozen=True)
class CatchUpResult:
    run_id: str | None
    since: datetime
    read: int
    events: int
    customers: int
    watermark: datetime


def read_since(loyale: LoyaleClient, route: str, field: str, since: datetime, *,
               page_size: int = PAGE_SIZE_MAX) -> Iterator[dict[str, Any]]:
    """Every row of `route` with `field >= since`, each once, read again until a whole read finds nothing
    new (see the module docstring). Raises FilterIgnored when Loyale answers rows outside the filter."""
    seen: set[str] = set()
    filters = f"{field}>={to_loyale_filter_time(since)}"
    for _ in range(MAX_REREADS):
        new = False
        number = 1
        while True:
            page = loyale.list_page(route, number, filters=filters, sorts=f"{field},id", page_size=page_size)
            for row in page.customers:
                if not isinstance(row, dict):
                    continue
                stamp = parse_datetime(row.get(field))
                if stamp is not None and stamp < since:
                    raise FilterIgnored(
                        f"Loyale answered GET {route} with a row of {field} {stamp.isoformat()}, before the "
                        f"{since.isoformat()} the pass asked for: it ignored the filter. The events' catch-up "
                        f"stopped instead of reading the whole history; check that {route} supports "
                        f"Filters={field}>=...")
                key = f"{row.get('id')}|{row.get(field)}"
                if key not in seen:
                    seen.add(key)
                    new = True
                    yield row
            if len(page.customers) < min(page_size, PAGE_SIZE_MAX) or (
                    page.total_pages is not None and number >= page.total_pages):
                break
            number += 1
        if not new:
            return
    raise RetryableError(f"Loyale's {route} kept changing while it was read ({MAX_REREADS} reads); the next "
                         "pass reads it again")


def events_since(loyale: LoyaleClient, since: datetime, *, page_size: int = PAGE_SIZE_MAX,
                 on_missing: Callable[[str], None] = lambda route: None) -> tuple[int, list[ev.LoyaltyEvent]]:
    """(rows read, the events they make) of the transactions and customer coupons since `since`."""
    read = 0
    made: list[ev.Derived] = []
    try:
        for tx in read_since(loyale, TRANSACTIONS, "createdDate", since, page_size=page_size):
            read += 1
            made.append(ev.from_transaction(tx))
    except LoyaleRouteMissing:
        on_missing(TRANSACTIONS)
    try:
        for cc in read_since(loyale, CUSTOMER_COUPONS, "updatedDate", since, page_size=page_size):
            read += 1
            created = parse_datetime(cc.get("createdDate"))
            if created is None or created >= since:
                made.append(ev.coupon_issued(cc))
            if ev.coupon_was_used(cc):
                made.append(ev.coupon_used(cc))
    except LoyaleRouteMissing:
        on_missing(CUSTOMER_COUPONS)
    return read, [e for e in made if isinstance(e, ev.LoyaltyEvent)]


def run_event_catch_up(*, app: Celery, store: Store, watermarks: Watermarks, loyale: LoyaleClient, tenant: str,
                       overlap_s: float, now: datetime | None = None, page_size: int = PAGE_SIZE_MAX
                       ) -> CatchUpResult:
    """One catch-up pass of a tenant (see the module docstring)."""
    started = now or datetime.now(UTC)
    watermark = watermarks.event_watermark(tenant) or started - timedelta(seconds=overlap_s)
    since = watermark - timedelta(seconds=overlap_s)

    def missing(route: str) -> None:
        log.warning("event_catchup_route_missing", tenant=tenant, route=route,
                    effect="events from it come by webhook only")

    read, found = events_since(loyale, since, page_size=page_size, on_missing=missing)
    by_customer: dict[str, dict[str, ev.LoyaltyEvent]] = {}
    for event in found:   # a row read twice (it changed during the pass) makes its events once
        by_customer.setdefault(event.customer_id, {})[event.unique_id] = event
    fresh: dict[str, list[ev.LoyaltyEvent]] = {}
    for customer_id, events in by_customer.items():
        handled = store.handled_events(tenant, customer_id, list(events))
        if left := [e for uid, e in events.items() if uid not in handled]:
            fresh[customer_id] = left
    run_id = None
    if fresh:
        run_id = store.create_run(tenant, "events", since=since.isoformat())
        store.mark_enqueued(run_id, list(fresh))
        for customer_id, carried in fresh.items():
            app.send_task(TASK_CUSTOMER_HINT, queue=QUEUE_INCREMENTAL,
                          kwargs={"tenant": tenant, "customer_id": customer_id, "run": run_id,
                                  "events": [e.to_json() for e in carried]},
                          kwargsrepr=task_repr(tenant, run_id, customer_id))
        store.finish_producing(run_id, len(fresh))
    watermarks.set_event_watermark(tenant, started)
    count = sum(len(e) for e in fresh.values())
    log.info("event_catchup_pass", tenant=tenant, run=run_id, read=read, events=count, customers=len(fresh),
             since=since.isoformat())
    return CatchUpResult(run_id, since, read, count, len(fresh), started)
