"""The ceiling: a backfill's necessary work, in one plain process with no queue, against the same fakes.

Page Loyale (the project's `LoyaleClient`, pages read ahead by one thread), prepare each customer
(`worker.pipeline.prepare`), look customers up 100 emails a request (`worker.pipeline.lookup_many`,
the project's `KlaviyoClient` behind the same fleet-wide limiter, waiting for it in place), plan them
(`worker.merge.plan_sync`, no memory of earlier syncs), check the phones the rows would carry 100 a
request (`any(phone_number,[...])`: a phone another profile holds is left out, as the batch does, since
a bulk row joining the two would merge them), send suppressions 100 a request, and put the rows in bulk
import jobs of 10,000 (`worker.bulk_import.chunks`) as soon as that many are ready; each job is
submitted and polled by `worker.bulk_import.BulkImport` in a thread of its own, so as many jobs are in
flight as the limiter lets the process create. No locks, ledger, journal, phone claims or per-customer
fallback: it is this machine's limit for the work, what the Celery path is compared with.

The phone checks are the necessary work too: without them the ceiling spent about 1,000 lookups per
100,000 customers where the batched path spends about 1,650, so on a machine fast enough to reach
Klaviyo's 750 lookups a minute the comparison measured the phone checks, not the pipeline.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from producers.backfill import BACKFILL_FILTERS, BACKFILL_SORTS
from producers.loyale import LoyaleClient
from worker.batch import BatchSettings
from worker.bulk_import import BulkImport, Polling, Row, Verdict, chunks
from worker.errors import RetryableError, SyncError
from worker.job_watcher import JobWatcher
from worker.klaviyo import MAX_BULK_PROFILES, MAX_FILTER_VALUES, MAX_SUPPRESSION_EMAILS, KlaviyoClient
from worker.merge import Memory, Plan, Policy, plan_sync
from worker.messages import snapshot_json
from worker.pipeline import Ready, lookup_many, prepare
from worker.runtime import Runtime
from worker.settings import Settings, TenantConfig
from worker.sync import phone_of

T = TypeVar("T")

#: Customers looked up together (lookups of 100 emails each).
LOOKUP_GROUP = 1000
#: Seconds the ceiling may wait in place for the limiter per request (it never defers).
WAIT_INLINE_S = 3600.0


@dataclass
class Ceiling:
    customers: int
    seconds: float
    jobs: int
    #: Verdicts of the bulk rows by kind (Confirmed, Refused, ...), and the plans by outcome.
    rows: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def customers_per_second(self) -> float:
        return self.customers / max(self.seconds, 1e-9)


def retried(fn: Callable[[], T], attempts: int = 5) -> T:
    """A passing failure (a 5xx, a dropped connection) is asked again after a second."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except RetryableError:
            if attempt == attempts:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def fail(error: SyncError) -> NoReturn:
    raise error


def read_ahead(pages: Iterator[list[Any]], depth: int = 10) -> Iterator[list[Any]]:
    """The pages, fetched by a thread of their own up to `depth` ahead of the consumer."""
    buffer: queue.Queue[list[Any] | BaseException | None] = queue.Queue(maxsize=depth)

    def fill() -> None:
        try:
            for page in pages:
                buffer.put(page)
            buffer.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            buffer.put(exc)

    threading.Thread(target=fill, daemon=True).start()
    while (item := buffer.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def row_of(plan: Plan) -> dict[str, Any]:
    """The bulk import row of a plan that writes (as the batch builds it; a bulk row cannot unset)."""
    if plan.write == "create":
        return {"type": "profile", "attributes": plan.attributes}
    return {"type": "profile", "id": plan.profile_id, "attributes": plan.attributes}


class CeilingRun:
    def __init__(self, klaviyo: KlaviyoClient, loyale: LoyaleClient, tenant: TenantConfig) -> None:
        self.klaviyo = klaviyo
        self.loyale = loyale
        self.tenant = tenant
        self.policy = Policy(merge_customers=tenant.merge_customers, existing_profiles=tenant.existing_profiles)
        batch = BatchSettings()
        self.importer: BulkImport[str] = BulkImport(
            klaviyo, tenant.id, Polling(poll_first_s=batch.poll_first_s, poll_max_s=batch.poll_max_s,
                                        job_timeout_s=batch.job_timeout_s, lock_ttl_s=batch.lock_ttl_s),
            call=retried, fail=fail, refresh_locks=lambda: None,
            watcher=JobWatcher(lambda tenant, wait_s: None), poll_job=klaviyo.bulk_import_job)
        self.verdicts: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.rows: list[Row[str]] = []
        self.suppress: list[str] = []
        self.jobs: list[Future[None]] = []
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="bulk-job")
        self.customers = 0

    def verdict(self, key: str, verdict: Verdict) -> None:
        with self.lock:
            self.verdicts[type(verdict).__name__] += 1

    def submit(self, rows: list[Row[str]]) -> None:
        for chunk in chunks(rows):
            self.jobs.append(self.pool.submit(self.importer.round, chunk, self.verdict))

    def plan(self, readies: list[Ready]) -> None:
        matches = lookup_many(self.klaviyo, self.policy, readies)
        plans = [(ready, plan_sync(ready.customer, ready.mapped, matches[ready], self.policy, Memory()))
                 for ready in readies]
        for ready, plan in self.check_phones(plans):
            self.outcomes[plan.outcome.value] += 1
            if plan.write:
                self.rows.append((ready.customer.id, row_of(plan)))
            if plan.suppress_email:
                self.suppress.append(plan.suppress_email)
        if len(self.suppress) >= MAX_SUPPRESSION_EMAILS:
            emails, self.suppress = self.suppress, []
            retried(lambda: self.klaviyo.suppress(emails))
        if len(self.rows) >= MAX_BULK_PROFILES:
            full, self.rows = self.rows[:MAX_BULK_PROFILES], self.rows[MAX_BULK_PROFILES:]
            self.submit(full)

    def check_phones(self, plans: list[tuple[Ready, Plan]]) -> list[tuple[Ready, Plan]]:
        """Leave out of each row a phone that another Klaviyo profile holds (looked up 100 a request)."""
        phones = [phone for _, plan in plans if plan.write and (phone := phone_of(plan))]
        owners: dict[str, str] = {}
        for start in range(0, len(phones), MAX_FILTER_VALUES):
            chunk = phones[start:start + MAX_FILTER_VALUES]
            for profile in retried(lambda chunk=chunk: self.klaviyo.find_many("phone_number", chunk)):
                if profile.phone:
                    owners[profile.phone] = profile.id
        checked = []
        for ready, plan in plans:
            phone = phone_of(plan) if plan.write else None
            if phone is not None and owners.get(phone, plan.profile_id) != plan.profile_id:
                plan = plan.without_phone()
            checked.append((ready, plan))
        return checked

    def run(self) -> Ceiling:
        started = time.monotonic()
        group: list[Ready] = []
        pages = (page.customers for page in self.loyale.pages(filters=BACKFILL_FILTERS, sorts=BACKFILL_SORTS))
        for customers in read_ahead(pages):
            for raw in customers:
                self.customers += 1
                prepared = prepare(snapshot_json(self.loyale.snapshot(raw)), self.tenant.default_phone_region)
                if isinstance(prepared, Ready):
                    group.append(prepared)
                else:
                    self.outcomes[prepared.plan.outcome.value] += 1
            if len(group) >= LOOKUP_GROUP:
                self.plan(group)
                group = []
        self.plan(group)
        if self.suppress:
            emails = self.suppress
            retried(lambda: self.klaviyo.suppress(emails))
        self.submit(self.rows)
        for job in self.jobs:
            job.result()
        self.pool.shutdown()
        return Ceiling(customers=self.customers, seconds=time.monotonic() - started, jobs=len(self.jobs),
                       rows=dict(self.verdicts), outcomes=dict(self.outcomes))


def run_ceiling(redis_url: str, tenant: TenantConfig) -> Ceiling:
    """The ceiling for one tenant (its Loyale scheme, its Klaviyo account), limited through `redis_url`."""
    runtime = Runtime.build(Settings(redis_url=redis_url, tenants_file=None), {tenant.id: tenant},
                            wait_inline_s=WAIT_INLINE_S)
    try:
        loyale = LoyaleClient(runtime.http, tenant=tenant.id, base_url=tenant.loyale_base_url,
                              scheme_id=tenant.loyale_scheme_id, admin_email=tenant.loyale_admin_email,
                              admin_password=tenant.loyale_admin_password)
        return CeilingRun(runtime.klaviyo(tenant.id), loyale, tenant).run()
    finally:
        runtime.close()
