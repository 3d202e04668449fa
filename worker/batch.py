"""Batched Klaviyo traffic for backfills: the customers a worker holds, synced together.

The queue still carries one task per customer (its retries, outcome and Flower entry stay per
customer); the worker groups the ones it holds when it talks to Klaviyo:

  lookups     `any(email,[...])` of up to 100 emails per request (plus `any(external_id,[...])` where
              the per-customer path would look, see below)
  plan        the same pure merge policy as the per-customer path, customer by customer
  writes      new and changed profiles in bulk import jobs of up to 10,000 rows (one request each,
              submitted together, then polled together while the customers' locks are refreshed);
              a customer is reported created/updated only when its job completed, its counts add
              up and no import error names its row
  errors      import errors are matched to rows by `original_payload` (the spec's pointer is only
              `/data`); an error that matches no row, or a job whose counts do not add up, sends the
              rows it may concern to the per-customer path, which confirms each write; a cancelled
              job (or one that never ends) is sent again for its rows
  phones      a phone is an identifier in Klaviyo, and a bulk row joining an email and a phone held by
              two profiles merges them. Phones are looked up first (`any(phone_number,[...])`), and
              claimed for the customer in Redis (a lookup may not show a phone sent moments ago); one
              that belongs to someone else is dropped with a warning, and a row Klaviyo refuses for
              its phone is sent again without it
  suppression opt-outs suppressed, and our own suppressions lifted, in requests of 100 emails; the jobs
              apply later and are remembered as pending until seen applied

External ids: the per-customer path also looks a customer up by external id when email finds no
profile (or one without our id). With merge off the batch does the same, so an existing profile is
never touched. With merge on it does so only for customers it synced before (an email change): for a
first sync it would cost a request per hundred customers for nothing. A profile id remembered from
the customer's last sync is read by id where the filters show nothing (they lag behind writes).

A customer without an email is keyed by its phone, looked up and claimed like any other; if the
phone cannot be used, nothing is created (a profile whose only identifier is our id would be an
orphan). Plans that must unset a property go to the per-customer path: a bulk row cannot unset.

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

from worker import backoff
from worker.errors import (
    Deferred,
    RecordRejected,
    RetryableError,
    SyncError,
    TenantFatalError,
    Throttled,
)
from worker.klaviyo import (
    MAX_BULK_PROFILES,
    MAX_FILTER_VALUES,
    BulkImportJob,
    ImportError_,
    KlaviyoClient,
    row_identifiers,
)
from worker.mapping import MappedProfile
from worker.merge import Match, Memory, Plan, plan_sync, stale_plan
from worker.models import KlaviyoProfile, LoyaleCustomer
from worker.outcomes import Outcome, after_interruption
from worker.store import Store
from worker.sync import (
    PHONE_CLAIM_TTL_S,
    SyncDeps,
    customer_id_of,
    phone_of,
    prepare,
    sync_customer,
    without_unusable_phone,
)

log = structlog.get_logger("batch")

ROW_POINTER = re.compile(r"^/data/attributes/profiles/data/(\d+)")
#: Stay under Klaviyo's 5 MB body limit with room for the envelope.
MAX_JOB_BYTES = 4_500_000
MAX_THROTTLES = 200
#: A customer colliding with another in its batch waits this long for a later batch, at most this often.
COLLISION_DELAY_S = 1.0
MAX_COLLISIONS = 2
#: A failed Klaviyo call of a batch is tried again in place this often, after about this long.
INLINE_RETRIES = 3
INLINE_RETRY_BASE_S = 0.2


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
    #: Klaviyo confirmed the customer's bulk row (job complete, counts add up, no error for it).
    confirmed: bool = False
    #: What an interrupted earlier attempt of this run planned (its write may have landed).
    interrupted: str | None = None

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
    job_timeout_s: float = 900.0
    lock_ttl_s: float = 120.0
    #: Jobs tried for one row (a cancelled or never-ending job is sent again for its rows).
    job_rounds: int = 3


@dataclass
class JobRows:
    """One bulk import job and the customers whose rows it carries."""

    rows: list[tuple[Work, dict[str, Any]]]
    job: BulkImportJob | None = None


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
        self._locks: list[tuple[str, str]] = []

    # --- outcomes --------------------------------------------------------------------------------

    def finish(self, work: Work, outcome: Outcome, reason: str, profile_id: str | None = None) -> None:
        if work.warnings:
            reason = f"{reason} [{'; '.join(work.warnings)}]"
        if work.interrupted is not None:
            outcome = after_interruption(work.interrupted, outcome)
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

    def retry_later(self, work: Work, reason: str) -> None:
        """A failed attempt for this customer: back on the queue with backoff, or failed at the limit."""
        if work.item.attempt >= self.settings.max_attempts:
            self.finish(work, Outcome.FAILED, f"gave up after {work.item.attempt} attempts: {reason}")
        else:
            wait_s = backoff.exponential_s(work.item.attempt, self.settings.retry_base_s, self.settings.retry_max_s)
            self.again(work, wait_s, reason, attempt=work.item.attempt + 1)

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
                self.retry_later(w, str(error))
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
                        if w.plan.unset:
                            w.solo = True    # a bulk row cannot unset a property; PATCH can
                self._remember_plans(batch)
                self._phones(batch)
                self._write(batch)
                self._suppressions(batch)
                self._settle_remaining(batch)
            except StageFailed:
                pass
            for w in locked:
                if w.solo and w.result is None:
                    self._one_by_one(w)
        finally:
            # Also every lock an earlier run of these same messages took (same task id as token) and
            # could not release: its pool process died mid-batch. A customer that leaves this batch
            # another way (collided, synced on its own) would otherwise keep it until the TTL.
            earlier = [(w.item.customer_id, w.item.task_id) for w in works]
            earlier += [(email_lock(w.mapped.email), w.item.task_id) for w in works if w.mapped and w.mapped.email]
            self.store.unlock_customers(self.tenant, list(dict.fromkeys(self._locks + earlier)))
        return [w.result for w in works if w.result]

    def _remember_plans(self, works: list[Work]) -> None:
        """Note what an interrupted earlier attempt planned, then what this one will write."""
        by_run: dict[str, list[Work]] = {}
        for w in works:
            if w.open and w.plan is not None:
                by_run.setdefault(w.item.run, []).append(w)
        for run, group in by_run.items():
            planned = self.store.pending(run, [w.customer.id for w in group])
            for w in group:
                w.interrupted = planned.get(w.customer.id)
            self.store.mark_pending(run, {w.customer.id: w.plan.outcome.value for w in group
                                          if w.plan.writes_anything})

    def _lock(self, works: list[Work]) -> list[Work]:
        held = []
        pairs = [(w.item.customer_id, w.item.task_id) for w in works]
        grants = self.store.lock_customers(self.tenant, pairs, self.settings.lock_ttl_s)
        for w, pair, locked in zip(works, pairs, grants, strict=True):
            if locked:
                held.append(w)
                self._locks.append(pair)
            else:
                self.again(w, 1.0, "another sync of this customer is running")
        return held

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
        prepared_all = [prepare(w.item.customer, self.deps.tenant.default_phone_region) for w in works]
        phones = [p.mapped.fields["phone_number"] for p in prepared_all
                  if p.mapped is not None and "phone_number" in p.mapped.fields]
        unusable = self.store.unusable_phones(self.tenant, phones)
        for w, prepared in zip(works, prepared_all, strict=True):
            prepared = without_unusable_phone(prepared, unusable)
            w.customer, w.mapped, w.warnings = prepared.customer, prepared.mapped, prepared.warnings
            if prepared.early is not None or w.customer is None or w.mapped is None:
                self.finish(w, prepared.early.outcome if prepared.early else Outcome.INVALID,
                            prepared.early.reason if prepared.early else "unreadable")
                continue
            identities = {f"id:{w.customer.id}"}
            if w.mapped.email is not None:
                identities.add(f"email:{w.mapped.email}")
            if identities & seen:
                self._collided(w)
                continue
            seen |= identities
            batch.append(w)
        # Two customers with one email in two batches at once would both look "new" and the later
        # bulk upsert would take over the earlier's profile: one sync per email at a time.
        emails = [w for w in batch if w.mapped.email is not None]
        pairs = [(email_lock(w.mapped.email), w.item.task_id) for w in emails]
        for w, pair, locked in zip(emails, pairs, self.store.lock_customers(self.tenant, pairs,
                                                                             self.settings.lock_ttl_s), strict=True):
            if locked:
                self._locks.append(pair)
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
        """One Klaviyo call for the batch. A passing failure (5xx, timeout, dropped connection) is tried
        again in place a few times: a batch makes a dozen calls, and sending thousands of customers
        back to the queue for one of them would rarely let a batch through a flaky minute. Every call
        here is safe to repeat (reads; upserts; suppressions). A 429 or our own limiter's wait is not
        retried here: the tenant backs off and the customers wait on the queue."""
        for attempt in range(INLINE_RETRIES + 1):
            try:
                return fn()
            except (Throttled, Deferred, TenantFatalError) as exc:
                self.fail_open(works, exc)
            except RetryableError as exc:
                if attempt == INLINE_RETRIES:
                    self.fail_open(works, exc)
                self.sleep(backoff.exponential_s(attempt + 1, INLINE_RETRY_BASE_S, INLINE_RETRY_BASE_S * 8))
        raise AssertionError("unreachable")   # the last failure above raises StageFailed

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

        # With merge on, only customers whose profile an earlier sync wrote can hold it under another
        # email (an email change): they are looked up by our id, the rest would cost a request per
        # hundred for nothing. Customers without an email can only be found by our id.
        unknown = [w for w in works if w.open and w.by_external_id is None
                   and (w.mapped.email is None or not self.deps.policy.merge_customers
                        or (w.by_email is None and w.memory.has_profile))]
        self._each_chunk(works, unknown, MAX_FILTER_VALUES, by_external_id)
        for w in unknown:
            w.by_external_id = by_id.get(w.customer.id)
        # A profile this service wrote may not show in a filter yet (read lag), or carry an older
        # email: a read by the remembered id sees it.
        for w in works:
            if w.open and w.by_email is None and w.by_external_id is None and w.memory.profile_id:
                remembered = self._call(works, lambda w=w: self.klaviyo.get_profile(w.memory.profile_id))
                if remembered is not None and remembered.external_id in (None, w.customer.id):
                    if remembered.email is not None and remembered.email == w.mapped.email:
                        w.by_email = remembered
                    else:
                        w.by_external_id = remembered

    def _phones(self, works: list[Work]) -> None:
        """Drop every phone that belongs to another profile, or that another customer sent moments
        ago, before any row carries it (a bulk row would merge the two profiles)."""
        senders = [w for w in works if w.open and w.plan and w.plan.write and w.plan.sends_phone]
        owners: dict[str, KlaviyoProfile] = {}

        def by_phone(chunk: list[Work]) -> None:
            for profile in self.klaviyo.find_many("phone_number", [phone_of(w.plan) for w in chunk]):
                if profile.phone:
                    owners[profile.phone] = profile

        self._each_chunk(works, senders, MAX_FILTER_VALUES, by_phone)
        senders = [w for w in senders if w.open]
        for w in senders:
            owner = owners.get(phone_of(w.plan))
            if owner is not None and owner.id != w.plan.profile_id:
                self.store.remember_taken_phone(self.tenant, owner.phone)
                w.warnings.append(f"phone not sent: it belongs to Klaviyo profile {owner.id}")
                w.plan = w.plan.without_phone()
        senders = [w for w in senders if w.plan.sends_phone]
        claims = self.store.claim_phones(self.tenant, [(phone_of(w.plan), w.customer.id) for w in senders],
                                         PHONE_CLAIM_TTL_S)
        for w, granted in zip(senders, claims, strict=True):
            if not granted:
                w.warnings.append("phone not sent: another customer with this phone was synced moments ago")
                w.plan = w.plan.without_phone()

    # --- writes ----------------------------------------------------------------------------------

    def _write(self, works: list[Work]) -> None:
        writers = [w for w in works if w.open and w.plan and w.plan.write]
        for w in writers:
            if w.plan.write == "update" and w.plan.overwrites:
                self.store.journal_overwrites(w.item.run, self.tenant, w.customer.id, w.plan.profile_id,
                                              w.plan.overwrites)
        pending = writers
        for _ in range(self.settings.job_rounds):
            if not pending:
                break
            pending = self._import(works, pending)
        for w in pending:
            self.retry_later(w, "Klaviyo did not apply its bulk import row (cancelled or unfinished jobs)")
        for w in writers:
            if w.open and w.confirmed and not w.plan.writes_suppression:
                self.finish(w, w.plan.outcome, w.plan.reason, w.plan.profile_id)

    @staticmethod
    def _row(w: Work) -> dict[str, Any]:
        if w.plan.write == "create":
            return {"type": "profile", "attributes": w.plan.attributes}
        return {"type": "profile", "id": w.plan.profile_id, "attributes": w.plan.attributes}

    def _import(self, works: list[Work], writers: list[Work]) -> list[Work]:
        """One round of bulk jobs for `writers`: every job is submitted, then all are polled together.
        Confirmed rows get `confirmed`; refused ones an outcome or the per-customer path; returns the
        customers to send again (a phone dropped, a cancelled or unfinished job)."""
        resend: list[Work] = []
        jobs: list[JobRows] = []
        queue = _chunks([(w, self._row(w)) for w in writers])
        while queue:
            chunk = queue.pop(0)
            try:
                job = self._call(works, lambda chunk=chunk: self.klaviyo.start_bulk_import([r for _, r in chunk]))
            except RecordRejected as refused:
                # An all-or-nothing 400 names rows of our own request (these pointers are ours).
                named = {i: e for e in refused.errors if (i := _row_index(e.pointer)) is not None and i < len(chunk)}
                if named:
                    for index, error in named.items():
                        if self._refused_row(chunk[index][0], error):
                            resend.append(chunk[index][0])
                    rest = [pair for i, pair in enumerate(chunk) if i not in named]
                    if rest:
                        queue.insert(0, rest)
                elif len(chunk) > 1:     # refused without naming a row (e.g. 413 too large): halve
                    queue[:0] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2:]]
                else:
                    self._finish_error(chunk[0][0], refused)
                continue
            jobs.append(JobRows(chunk, job))
        self._wait_all(works, jobs)
        for entry in jobs:
            resend += self._settle_job(works, entry)
        return resend

    def _settle_job(self, works: list[Work], entry: JobRows) -> list[Work]:
        """Map a finished (or given up) job back to its customers; returns those to send again."""
        job, rows = entry.job, entry.rows
        errors = []
        if job.done and job.failed_count != 0:
            errors = self._call(works, lambda: self.klaviyo.import_errors(job.id))
        by_ident: dict[str, list[int]] = {}
        for i, (_, row) in enumerate(rows):
            for ident in row_identifiers(row["attributes"], row.get("id")):
                by_ident.setdefault(ident, []).append(i)
        failed: dict[int, ImportError_] = {}
        unmatched = 0
        for error in errors:
            candidates = {i for ident in error.identifiers for i in by_ident.get(ident, [])}
            hint = _row_index(error.pointer)
            if hint is not None and hint in candidates:
                candidates = {hint}    # the pointer is trusted only where the payload agrees
            if len(candidates) == 1:
                failed[candidates.pop()] = error
            else:
                unmatched += 1
        accounted = (job.counts_add_up and not unmatched and job.failed_count == len(failed))
        resend: list[Work] = []
        for i, (w, _) in enumerate(rows):
            if i in failed:
                if self._refused_row(w, failed[i]):
                    resend.append(w)
            elif job.status == "complete" and accounted:
                w.confirmed = True
            elif job.status == "complete":
                # Klaviyo's account of the job does not add up: the per-customer path confirms each.
                w.solo = True
            else:
                resend.append(w)      # cancelled part-way, or never ended: its row may not be applied
        if job.status == "complete" and not accounted:
            log.warning("bulk_job_unaccounted", tenant=self.tenant, job=job.id, total=job.total_count,
                        completed=job.completed_count, failed=job.failed_count, errors=len(errors),
                        unmatched=unmatched)
        elif job.status != "complete":
            log.warning("bulk_job_not_applied", tenant=self.tenant, job=job.id, status=job.status,
                        rows=len(rows) - len(failed))
        return resend

    def _refused_row(self, w: Work, error: ImportError_ | RecordRejected) -> bool:
        """Klaviyo refused the customer's row: True to send it again (without its phone), else the
        customer ends here or goes to the per-customer path."""
        code = error.code
        if w.plan.sends_phone and (error.about_phone or code == "duplicate_profile"):
            if code != "duplicate_profile":
                self.store.remember_refused_phone(self.tenant, phone_of(w.plan))
            w.warnings.append(f"phone not sent: Klaviyo refused it ({error.detail[:120]})")
            w.plan = w.plan.without_phone()
            if w.plan.write is None or not w.plan.changes:
                if w.plan.write is None:
                    self.finish(w, w.plan.outcome, w.plan.reason, w.plan.profile_id)
                return False
            return True
        if code in ("duplicate_profile", "not_found"):
            # An identifier now belongs to another profile (or the profile was merged away): the
            # per-customer path looks again and re-plans.
            w.solo = True
            return False
        status = error.status if isinstance(error, RecordRejected) else 400
        self._finish_error(w, RecordRejected(status, code or "invalid", error.detail, error.pointer))
        return False

    def _finish_error(self, w: Work, error: RecordRejected) -> None:
        if error.code == "duplicate_profile":
            self.finish(w, Outcome.CONFLICT, f"Klaviyo: {error.detail} (an identifier belongs to another profile)",
                        w.plan.profile_id if w.plan else None)
        else:
            self.finish(w, Outcome.REJECTED, str(error), w.plan.profile_id if w.plan else None)

    def _wait_all(self, works: list[Work], jobs: list[JobRows]) -> None:
        """Poll every job until Klaviyo has applied it or it is given up (Klaviyo's jobs take seconds
        to minutes). The customers' locks are refreshed all along, so an incremental sync of one of
        them waits for the job instead of being overtaken by this older snapshot."""
        delay_s, waited_s = self.settings.poll_first_s, 0.0
        # Refresh several times per lock TTL, however slowly the job is polled.
        poll_max_s = min(self.settings.poll_max_s, self.settings.lock_ttl_s / 3)
        while True:
            running = [entry for entry in jobs if not entry.job.done]
            if not running or waited_s > self.settings.job_timeout_s:
                return
            self.store.refresh_locks(self.tenant, self._locks, self.settings.lock_ttl_s)
            for entry in running:
                try:
                    entry.job = self.klaviyo.bulk_import_job(entry.job.id)
                except Throttled as exc:
                    # Honour the wait, and back the whole tenant off like any other 429.
                    wait_s = backoff.after_throttle_s(exc.retry_after_s, self.settings.retry_base_s,
                                                      self.settings.max_countdown_s)
                    self.back_off(self.tenant, wait_s)
                    self.sleep(wait_s)
                    waited_s += wait_s
                    break
                except Deferred as exc:   # the job runs at Klaviyo: wait here rather than lose track
                    self.sleep(exc.retry_after_s or delay_s)
                    waited_s += exc.retry_after_s or delay_s
                    break
                except RetryableError:
                    continue              # asked again on the next round, until the job timeout
                except TenantFatalError as exc:
                    self.fail_open(works, exc)
            if any(not entry.job.done for entry in jobs):
                self.sleep(delay_s)
                waited_s += delay_s
                delay_s = min(poll_max_s, delay_s * 2)

    def _suppressions(self, works: list[Work]) -> None:
        suppress = [w for w in works if w.open and w.plan and w.plan.suppress_email]
        unsuppress = [w for w in works if w.open and w.plan and w.plan.unsuppress_email]

        def apply(chunk: list[Work], call: Callable[[list[str]], list[str]], mark: Callable[..., None]) -> None:
            emails = [w.plan.suppress_email or w.plan.unsuppress_email for w in chunk]
            job_ids = call(emails)
            job_id = job_ids[0] if job_ids else ""
            for w, email in zip(chunk, emails, strict=True):
                mark(self.tenant, email, job_id, w.customer.id)
                self.finish(w, w.plan.outcome, w.plan.reason, w.plan.profile_id)

        self._each_chunk(works, suppress, 100, lambda c: apply(c, self.klaviyo.suppress, self.store.mark_suppressed))
        self._each_chunk(works, unsuppress, 100,
                         lambda c: apply(c, self.klaviyo.unsuppress, self.store.mark_unsuppressed))

    def _settle_remaining(self, works: list[Work]) -> None:
        for w in works:
            if w.open and w.plan is not None and not w.plan.writes_anything:
                self.finish(w, w.plan.outcome, w.plan.reason, w.plan.profile_id)

    def _one_by_one(self, w: Work) -> None:
        """The per-customer path, for customers the batch cannot confirm or write."""
        w.solo = False   # from here on it is open like any other customer
        if (paused := self.store.tenant_paused(self.tenant)) is not None:
            self.finish(w, Outcome.FAILED, f"tenant paused: {paused}")
            return
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
