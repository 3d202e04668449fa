"""Batched Klaviyo traffic for backfills: the customers a worker holds, synced together.

The queue still carries one task per customer (its retries, outcome and Flower entry stay per
customer); the worker groups the ones it holds when it talks to Klaviyo:

  lookups     `any(email,[...])` of up to 100 emails per request (plus `any(external_id,[...])` where
              the per-customer path would look, see below)
  plan        the same pure merge policy as the per-customer path, customer by customer
  writes      new and changed profiles in bulk import jobs of up to 10,000 rows (one request), polled
              until complete; `import-errors` and all-or-nothing 400s are mapped back to customers,
              a refused row is taken out and the rest resent
  phones      a phone is an identifier in Klaviyo: a new row carrying a phone owned by another
              profile would be merged into that profile. New profiles are therefore created without
              their phone, and phones are set by a second job keyed by email, where a phone owned by
              someone else fails alone (the customer still syncs, with a warning), as on the
              per-customer path
  suppression opt-outs suppressed, and our own suppressions lifted, in requests of 100 emails

External ids: the per-customer path also looks a customer up by external id when email finds no
profile (or one without our id). With merge off the batch does the same, so an existing profile is
never touched. With merge on it lets Klaviyo's own identifier matching in the bulk import do it: a
profile holding the customer's id under an older email is updated (as merge on says), and a profile
holding it while the email belongs to another is refused by Klaviyo and recorded as a conflict. The
one difference: such an email change is recorded `created` and its old values are not journaled.

Customers that collide inside one batch (two with the same email, the same customer twice) cannot
share a bulk job: the later one is sent on to a later batch (and synced on its own after the batch if
it collides again). Customers without an email that are not opted in are looked up by external id, to
be suppressed.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from pydantic import ValidationError

from worker import backoff
from worker.errors import (
    Deferred,
    RecordRejected,
    RetryableError,
    SyncError,
    TenantFatalError,
    Throttled,
)
from worker.klaviyo import MAX_BULK_PROFILES, MAX_FILTER_VALUES, BulkImportJob, KlaviyoClient
from worker.mapping import InvalidCustomer, MappedProfile, map_customer
from worker.merge import Match, Memory, Plan, plan_sync, stale_plan
from worker.models import KlaviyoProfile, LoyaleCustomer, parse_customer
from worker.outcomes import Outcome, after_interruption
from worker.store import Store
from worker.sync import SyncDeps, customer_id_of, sync_customer

log = structlog.get_logger("batch")

ROW_POINTER = re.compile(r"^/data/attributes/profiles/data/(\d+)")
#: Stay under Klaviyo's 5 MB body limit with room for the envelope.
MAX_JOB_BYTES = 4_500_000
MAX_THROTTLES = 200
#: A customer colliding with another in its batch waits this long for a later batch, at most this often.
COLLISION_DELAY_S = 1.0
MAX_COLLISIONS = 2


@dataclass
class Item:
    """One customer's message, as the worker holds it."""

    task_id: str
    tenant: str
    run: str
    customer: dict[str, Any]
    attempt: int = 1
    throttles: int = 0
    #: Times it was sent on to a later batch because it collided with another customer in one.
    collisions: int = 0

    @property
    def customer_id(self) -> str:
        return customer_id_of(self.customer)

    @classmethod
    def from_request(cls, request: Any) -> Item:
        """The customer of a celery-batches request (its kwargs are what `_requeue` sends)."""
        kw = request.kwargs
        return cls(task_id=request.id, tenant=kw["tenant"], run=kw["run"], customer=kw["customer"],
                   attempt=int(kw.get("attempt", 1)), throttles=int(kw.get("throttles", 0)),
                   collisions=int(kw.get("collisions", 0)))


@dataclass
class Done:
    """The customer's outcome is recorded."""

    item: Item
    outcome: Outcome
    reason: str


@dataclass
class Again:
    """The customer goes back on the queue after `countdown_s` (a deferral keeps its attempt count)."""

    item: Item
    countdown_s: float
    reason: str


Result = Done | Again


@dataclass(eq=False)   # compared and hashed by identity: used as a dict key
class Work:
    """A customer on its way through the batch."""

    item: Item
    customer: LoyaleCustomer | None = None
    mapped: MappedProfile | None = None
    memory: Memory = field(default_factory=Memory)
    warnings: list[str] = field(default_factory=list)
    by_email: KlaviyoProfile | None = None
    by_external_id: KlaviyoProfile | None = None
    plan: Plan | None = None
    result: Result | None = None
    #: Taken out of the batch: synced on its own after it (collisions, requests Klaviyo refused).
    solo: bool = False

    @property
    def open(self) -> bool:
        return self.result is None and not self.solo


class StageFailed(Exception):
    """Raised inside the batch when a Klaviyo call failed for every customer still open."""


@dataclass
class BatchSettings:
    max_attempts: int = 8
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    max_countdown_s: float = 900.0
    poll_first_s: float = 0.2
    poll_max_s: float = 5.0
    job_timeout_s: float = 600.0


class BatchSync:
    """Sync one tenant's customers together. Nothing here raises: every item ends Done or Again."""

    def __init__(self, deps: SyncDeps, settings: BatchSettings, back_off: Callable[[str, float], None],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.deps = deps
        self.settings = settings
        self.back_off = back_off
        self.sleep = sleep
        self.tenant = deps.tenant.id
        self.store: Store = deps.store
        self.klaviyo: KlaviyoClient = deps.klaviyo
        self._email_locks: list[Work] = []

    # --- outcomes --------------------------------------------------------------------------------

    def finish(self, work: Work, outcome: Outcome, reason: str, profile_id: str | None = None) -> None:
        if work.warnings:
            reason = f"{reason} [{'; '.join(work.warnings)}]"
        self.store.record_outcome(
            run_id=work.item.run, tenant=self.tenant, customer_id=work.item.customer_id, outcome=outcome,
            reason=reason, profile_id=profile_id, updated_date=work.customer.updated_date if work.customer else None,
            warnings=work.warnings or None,
        )
        work.result = Done(work.item, outcome, reason)

    def again(self, work: Work, countdown_s: float, reason: str, *, attempt: int | None = None,
              throttles: int | None = None) -> None:
        item = replace(work.item, attempt=attempt or work.item.attempt,
                       throttles=work.item.throttles if throttles is None else throttles)
        work.result = Again(item, min(max(countdown_s, 0.05), self.settings.max_countdown_s), reason)

    def fail_open(self, works: list[Work], error: SyncError) -> None:
        """A Klaviyo call failed: decide for every customer still open, as the per-customer task would."""
        open_works = [w for w in works if w.open]
        if isinstance(error, Deferred):
            for w in open_works:
                self.again(w, error.retry_after_s or 1.0, str(error))
            for run in {w.item.run for w in open_works}:
                self.store.count_deferral(run)
        elif isinstance(error, Throttled):
            wait_s = backoff.after_throttle_s(error.retry_after_s, self.settings.retry_base_s,
                                              self.settings.max_countdown_s)
            self.back_off(self.tenant, wait_s)
            for w in open_works:
                if w.item.throttles + 1 >= MAX_THROTTLES:
                    self.finish(w, Outcome.FAILED, f"Klaviyo kept throttling: {MAX_THROTTLES} 429 answers")
                else:
                    self.again(w, wait_s, str(error), throttles=w.item.throttles + 1)
        elif isinstance(error, TenantFatalError):
            if self.store.pause_tenant(self.tenant, error.reason):
                log.error("tenant_paused", tenant=self.tenant, reason=error.reason,
                          fix="fix the key, then run `loyale-sync verify` and `loyale-sync retry-failures`")
            for w in open_works:
                self.finish(w, Outcome.FAILED, f"tenant paused: {error.reason}")
        else:
            for w in open_works:
                if w.item.attempt >= self.settings.max_attempts:
                    self.finish(w, Outcome.FAILED, f"gave up after {w.item.attempt} attempts: {error}")
                else:
                    wait_s = backoff.exponential_s(w.item.attempt, self.settings.retry_base_s,
                                                   self.settings.retry_max_s)
                    self.again(w, wait_s, str(error), attempt=w.item.attempt + 1)
        raise StageFailed(str(error))

    # --- the batch -------------------------------------------------------------------------------

    def run(self, items: list[Item]) -> list[Result]:
        works = [Work(item) for item in items]
        paused = self.store.tenant_paused(self.tenant)
        if paused is not None:
            for w in works:
                self.finish(w, Outcome.FAILED, f"tenant paused: {paused}")
            return [w.result for w in works if w.result]
        locked = self._lock(works)
        try:
            batch = self._prepare(locked)
            try:
                self._lookup(batch)
                for w in batch:
                    if w.open:
                        w.plan = plan_sync(w.customer, w.mapped, Match(w.by_email, w.by_external_id),
                                           self.deps.policy, w.memory)
                self._remember_plans(batch)
                self._write(batch)
                self._suppressions(batch)
                self._settle_remaining(batch)
            except StageFailed:
                pass
            for w in locked:
                if w.solo and w.result is None:
                    self._one_by_one(w)
        finally:
            self._unlock(locked)
        return [w.result for w in works if w.result]

    def _remember_plans(self, works: list[Work]) -> None:
        """Correct outcomes after an interrupted earlier attempt, then note what this one will write."""
        by_run: dict[str, list[Work]] = {}
        for w in works:
            if w.open and w.plan is not None:
                by_run.setdefault(w.item.run, []).append(w)
        for run, group in by_run.items():
            planned = self.store.pending(run, [w.customer.id for w in group])
            for w in group:
                if w.customer.id in planned:
                    w.plan = replace(w.plan, outcome=after_interruption(planned[w.customer.id], w.plan.outcome))
            self.store.mark_pending(run, {w.customer.id: w.plan.outcome.value for w in group
                                          if w.plan.writes_anything})

    def _lock(self, works: list[Work]) -> list[Work]:
        held = []
        grants = self.store.lock_customers(self.tenant, [(w.item.customer_id, w.item.task_id) for w in works])
        for w, locked in zip(works, grants, strict=True):
            if locked:
                held.append(w)
            else:
                self.again(w, 1.0, "another sync of this customer is running")
        return held

    def _unlock(self, works: list[Work]) -> None:
        self.store.unlock_customers(self.tenant, [(w.item.customer_id, w.item.task_id) for w in works]
                                    + [(email_lock(w.mapped.email), w.item.task_id) for w in self._email_locks])

    def _collided(self, w: Work) -> None:
        """Two customers of one batch share an email (or one customer came twice): they
        cannot be written in one bulk job. The later one joins a later batch, where the earlier one's
        profile exists; if it collides again it is synced on its own after this batch."""
        if w.item.collisions < MAX_COLLISIONS:
            item = replace(w.item, collisions=w.item.collisions + 1)
            w.result = Again(item, COLLISION_DELAY_S, "shares an email with another customer in this batch")
        else:
            w.solo = True

    def _prepare(self, works: list[Work]) -> list[Work]:
        """Parse, map and check order; set aside customers that need the per-customer path."""
        batch: list[Work] = []
        seen: set[str] = set()
        for w in works:
            try:
                w.customer, w.warnings = parse_customer(w.item.customer)
            except ValidationError as exc:
                problem = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
                self.finish(w, Outcome.INVALID, f"unreadable Loyale record: {problem}")
                continue
            try:
                w.mapped = map_customer(w.customer, self.deps.tenant.default_phone_region)
            except InvalidCustomer as exc:
                if w.customer.opted_in:
                    self.finish(w, Outcome.INVALID, str(exc))
                    continue
                # Not opted in and nothing to send: its profile is found by our id (the batch's
                # external id lookups), to suppress it, as on the per-customer path.
                w.mapped = MappedProfile(fields={"external_id": w.customer.id})
            w.warnings = w.warnings + w.mapped.warnings
            identities = {f"id:{w.customer.id}"}
            if w.mapped.email is not None:
                identities.add(f"email:{w.mapped.email}")
            # A phone shared with another customer of the batch needs no care here: a create's phone
            # goes in the phone job, where the second row carrying it fails alone; an update's is
            # refused for its row and resent without it (see `_write`).
            if identities & seen:
                self._collided(w)
                continue
            seen |= identities
            batch.append(w)
        # Two customers with one email in two batches at once would both look "new" and the later
        # bulk upsert would take over the earlier's profile: one sync per email at a time.
        emails = [w for w in batch if w.mapped.email is not None]
        for w, locked in zip(emails, self.store.lock_customers(
                self.tenant, [(email_lock(w.mapped.email), w.item.task_id) for w in emails]), strict=True):
            if locked:
                self._email_locks.append(w)
            else:
                self.again(w, 1.0, "another customer with this email is being synced")
        batch = [w for w in batch if w.open]
        memories = self.store.memories(self.tenant, [(w.customer.id, w.mapped.email) for w in batch])
        for w, memory in zip(batch, memories, strict=True):
            w.memory = memory
            if (stale := stale_plan(w.customer, memory)) is not None:
                self.finish(w, stale.outcome, stale.reason)
        return [w for w in batch if w.open]

    def _call(self, works: list[Work], fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (RetryableError, TenantFatalError) as exc:
            self.fail_open(works, exc)

    def _each_chunk(self, works: list[Work], group: list[Work], size: int,
                    fn: Callable[[list[Work]], Any]) -> None:
        """Call `fn` per chunk of `group`; a chunk Klaviyo refuses (4xx) is synced one by one instead."""
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            try:
                self._call(works, lambda chunk=chunk: fn(chunk))
            except RecordRejected:
                for w in chunk:
                    w.solo = True

    def _lookup(self, works: list[Work]) -> None:
        found: dict[str, KlaviyoProfile] = {}

        def by_email(chunk: list[Work]) -> None:
            for profile in self.klaviyo.find_many("email", [w.mapped.email for w in chunk]):
                if profile.email:
                    found[profile.email] = profile

        self._each_chunk(works, [w for w in works if w.mapped.email is not None], MAX_FILTER_VALUES, by_email)
        for w in works:
            w.by_email = found.get(w.mapped.email) if w.mapped.email is not None else None
            if w.by_email is not None and w.by_email.external_id == w.customer.id:
                w.by_external_id = w.by_email
        by_id: dict[str, KlaviyoProfile] = {}

        def by_external_id(chunk: list[Work]) -> None:
            for profile in self.klaviyo.find_many("external_id", [w.customer.id for w in chunk]):
                if profile.external_id:
                    by_id[profile.external_id] = profile

        # With merge on, Klaviyo's identifier matching in the bulk import covers the rest (module
        # docstring); customers without an email can only be found by our id.
        unknown = [w for w in works if w.open and w.by_external_id is None
                   and (w.mapped.email is None or not self.deps.policy.merge_customers)]
        self._each_chunk(works, unknown, MAX_FILTER_VALUES, by_external_id)
        for w in unknown:
            w.by_external_id = by_id.get(w.customer.id)

    # --- writes ----------------------------------------------------------------------------------

    def _write(self, works: list[Work]) -> None:
        writers = [w for w in works if w.open and w.plan and w.plan.write]
        for w in writers:
            if w.plan.write == "update" and w.plan.overwrites:
                self.store.journal_overwrites(w.item.run, self.tenant, w.customer.id, w.plan.profile_id,
                                              w.plan.overwrites)
        failed = self._import(works, writers, [self._row(w) for w in writers])

        # An update refused because its phone belongs to another profile is resent without the
        # phone (the per-customer path does the same after a 409); any other refusal stands.
        retry = [w for w, error in failed.items() if w.plan.write == "update"
                 and error.code == "duplicate_profile" and "phone_number" in w.plan.attributes]
        for w in retry:
            w.plan = replace(w.plan, changes=tuple(c for c in w.plan.changes if c.field != "phone_number"))
        still = self._import(works, [w for w in retry if w.plan.changes],
                             [self._row(w) for w in retry if w.plan.changes])
        for w in retry:
            if w not in still:
                del failed[w]
                w.warnings.append("phone not sent: it belongs to another Klaviyo profile")
        failed.update(still)
        for w, error in failed.items():
            self._finish_error(w, error)

        created = [w for w in writers if w.open and w.plan.write == "create" and "phone_number" in w.mapped.fields]
        phone_rows = [{"type": "profile", "attributes": {"email": w.mapped.email,
                                                         "phone_number": w.mapped.fields["phone_number"]}}
                      for w in created]
        for w in self._import(works, created, phone_rows):
            w.warnings.append("phone not sent: it belongs to another Klaviyo profile")
        for w in writers:
            if w.open and not w.plan.suppress_email and not w.plan.unsuppress_email:
                self.finish(w, w.plan.outcome, w.plan.reason, w.plan.profile_id)

    def _row(self, w: Work) -> dict[str, Any]:
        attributes = w.plan.attributes
        if w.plan.write == "create":
            attributes.pop("phone_number", None)   # set by the phone job, see the module docstring
            return {"type": "profile", "attributes": attributes}
        return {"type": "profile", "id": w.plan.profile_id, "attributes": attributes}

    def _finish_error(self, w: Work, error: RecordRejected) -> None:
        if error.code == "duplicate_profile":
            self.finish(w, Outcome.CONFLICT, f"Klaviyo: {error.detail} (an identifier belongs to another profile)",
                        w.plan.profile_id if w.plan else None)
        else:
            self.finish(w, Outcome.REJECTED, str(error), w.plan.profile_id if w.plan else None)

    def _import(self, works: list[Work], writers: list[Work], rows: list[dict[str, Any]]
                ) -> dict[Work, RecordRejected]:
        """Bulk-import `rows` (row i belongs to writers[i]); returns the customers whose row failed."""
        failed: dict[Work, RecordRejected] = {}
        queue = _chunks(list(zip(writers, rows, strict=True)))
        while queue:
            chunk = queue.pop(0)
            try:
                job = self._call(works, lambda chunk=chunk: self.klaviyo.start_bulk_import([r for _, r in chunk]))
            except RecordRejected as refused:
                named = {i: e for e in refused.errors if (i := _row_index(e.pointer)) is not None and i < len(chunk)}
                if named:
                    # all-or-nothing 400: take the rows it names out, send the rest again
                    for index, error in named.items():
                        failed[chunk[index][0]] = error
                    rest = [pair for i, pair in enumerate(chunk) if i not in named]
                elif len(chunk) > 1:
                    # refused without naming a row (e.g. 413 too large): halve and resend
                    rest = chunk
                    queue[:0] = [rest[: len(rest) // 2], rest[len(rest) // 2:]]
                    continue
                else:
                    failed[chunk[0][0]] = refused
                    rest = []
                if rest:
                    queue.insert(0, rest)
                continue
            job = self._wait(works, job)
            if job.failed_count:
                for error in self._call(works, lambda job=job: self.klaviyo.import_errors(job.id)):
                    index = _row_index(error.pointer)
                    if index is not None and index < len(chunk):
                        failed[chunk[index][0]] = RecordRejected(
                            409 if error.code == "duplicate_profile" else 400, error.code or "invalid",
                            error.detail, error.pointer)
        return failed

    def _wait(self, works: list[Work], job: BulkImportJob) -> BulkImportJob:
        """Poll the job until Klaviyo has applied it (Klaviyo's jobs take seconds to minutes)."""
        delay_s, waited_s = self.settings.poll_first_s, 0.0
        while not job.done:
            try:
                job = self.klaviyo.bulk_import_job(job.id)
            except Deferred as exc:      # the job is running at Klaviyo: wait here rather than lose track
                self.sleep(exc.retry_after_s or delay_s)
                continue
            except (RetryableError, TenantFatalError) as exc:
                if isinstance(exc, RetryableError) and waited_s < self.settings.job_timeout_s:
                    self.sleep(delay_s)
                    waited_s += delay_s
                    continue
                self.fail_open(works, exc)
            if not job.done:
                self.sleep(delay_s)
                waited_s += delay_s
                delay_s = min(self.settings.poll_max_s, delay_s * 2)
            if waited_s > self.settings.job_timeout_s:
                self.fail_open(works, RetryableError(f"bulk import job {job.id} did not complete in time"))
        return job

    def _suppressions(self, works: list[Work]) -> None:
        suppress = [w for w in works if w.open and w.plan and w.plan.suppress_email]
        unsuppress = [w for w in works if w.open and w.plan and w.plan.unsuppress_email]

        def apply(chunk: list[Work], call: Callable[[list[str]], None], mark: Callable[[str, str], None]) -> None:
            emails = [w.plan.suppress_email or w.plan.unsuppress_email for w in chunk]
            call(emails)
            for w, email in zip(chunk, emails, strict=True):
                mark(self.tenant, email)
                self.finish(w, w.plan.outcome, w.plan.reason, w.plan.profile_id)

        self._each_chunk(works, suppress, 100, lambda c: apply(c, self.klaviyo.suppress, self.store.mark_suppressed))
        self._each_chunk(works, unsuppress, 100,
                         lambda c: apply(c, self.klaviyo.unsuppress, self.store.mark_unsuppressed))

    def _settle_remaining(self, works: list[Work]) -> None:
        for w in works:
            if w.open and w.plan is not None and not w.plan.writes_anything:
                self.finish(w, w.plan.outcome, w.plan.reason, w.plan.profile_id)

    def _one_by_one(self, w: Work) -> None:
        """The per-customer path, for customers that collide inside the batch."""
        w.solo = False   # from here on it is open like any other customer
        try:
            result = sync_customer(self.deps, w.item.run, w.item.customer)
            w.result = Done(w.item, result.outcome, result.reason)
        except (RetryableError, TenantFatalError) as exc:
            with contextlib.suppress(StageFailed):
                self.fail_open([w], exc)


def email_lock(email: str | None) -> str:
    """The lock name that keeps two syncs of one email apart (see `Store.lock_customer`)."""
    return f"email:{(email or '').strip().lower()}"


def _row_index(pointer: str | None) -> int | None:
    found = ROW_POINTER.match(pointer or "")
    return int(found.group(1)) if found else None


def _chunks(pairs: list[tuple[Work, dict[str, Any]]]) -> list[list[tuple[Work, dict[str, Any]]]]:
    """Bulk jobs of at most 10,000 rows and under the 5 MB body limit."""
    chunks: list[list[tuple[Work, dict[str, Any]]]] = []
    current: list[tuple[Work, dict[str, Any]]] = []
    size = 0
    for pair in pairs:
        row_size = len(json.dumps(pair[1], ensure_ascii=False).encode()) + 1
        if current and (len(current) >= MAX_BULK_PROFILES or size + row_size > MAX_JOB_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(pair)
        size += row_size
    if current:
        chunks.append(current)
    return chunks
