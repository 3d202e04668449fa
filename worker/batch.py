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
import contextvars
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal, NoReturn, TypeVar

import structlog

from worker.bulk_import import (
    BulkImport,
    Confirmed,
    NotApplied,
    Polling,
    Refused,
    Rejected,
    Unaccounted,
    Verdict,
)
from worker.errors import (
    Deferred,
    RecordRejected,
    RetryableError,
    SyncError,
    TenantFatalError,
    Throttled,
    refuses_region,
)
from worker.event_sync import EventSender, Synced, synced
from worker.job_watcher import JobWatcher
from worker.klaviyo import MAX_FILTER_VALUES, BulkImportJob, ImportError_, KlaviyoClient
from worker.merge import FieldChange, Plan, plan_sync, stale_plan
from worker.messages import customer_id_of
from worker.models import KlaviyoProfile
from worker.outcomes import LOOKUP_LAGS, Outcome, after_interruption, lookup_lags
from worker.pipeline import Prepared, Ready, Stopped, lookup_many, prepare_many
from worker.ratelimit.gate import waiting_inline
from worker.retry import Decision, Fail, PauseTenant, Retry, RetryPolicy, decide
from worker.store import OutcomeRecord, Store
from worker.sync import PHONE_CLAIM_TTL_S, SyncDeps, phone_of, sync_customer

log = structlog.get_logger("batch")

T = TypeVar("T")
X = TypeVar("X")

#: A customer colliding with another in its batch waits this long for a later batch, at most this often.
COLLISION_DELAY_S = 1.0
MAX_COLLISIONS = 2
#: A failed Klaviyo call of a batch is tried again in place this often, after about this long.
INLINE_RETRIES = 3
INLINE_RETRY_BASE_S = 0.2
INLINE_POLICY = RetryPolicy(max_attempts=INLINE_RETRIES + 1, base_s=INLINE_RETRY_BASE_S, max_s=INLINE_RETRY_BASE_S * 8)


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
    """A customer's message on its way through the batch, whatever stage it reached."""

    item: Item
    #: What preparation made of it (None until prepared).
    prepared: Prepared | None = None
    warnings: list[str] = field(default_factory=list)
    result: Result | None = None
    #: Taken out of the batch: synced on its own after it (collisions, requests Klaviyo refused).
    solo: bool = False
    #: What an interrupted earlier attempt of this run planned (its write may have landed).
    interrupted: str | None = None

    @property
    def open(self) -> bool:
        return self.result is None and not self.solo

    @property
    def email(self) -> str | None:
        return self.prepared.mapped.email if isinstance(self.prepared, Ready) else None


@dataclass(eq=False)
class Planned:
    """A customer of the batch past its lookup: who it is and what the sync will do."""

    work: Work
    ready: Ready
    plan: Plan
    #: Klaviyo confirmed the customer's bulk row (job complete, counts add up, no error for it).
    confirmed: bool = False

    @property
    def open(self) -> bool:
        return self.work.open

    @property
    def customer_id(self) -> str:
        return self.ready.customer.id


class StageFailed(Exception):
    """Raised inside the batch when a Klaviyo call failed for every customer still open."""


@dataclass
class BatchSettings:
    #: What an error means for the batch's customers: the same policy as the per-customer task's.
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_first_s: float = 0.2
    poll_max_s: float = 5.0
    job_timeout_s: float = 900.0
    lock_ttl_s: float = 120.0
    #: Jobs tried for one row (a cancelled or never-ending job is sent again for its rows).
    job_rounds: int = 3


class _LookupCalls:
    """`worker.pipeline.Calls` for the batch: calls retried in place, a refused chunk set aside."""

    def __init__(self, sync: BatchSync, works: list[Work], work_of: dict[Ready, Work]) -> None:
        self.sync, self.works, self.work_of = sync, works, work_of

    def chunks(self, group: list[Ready], size: int, fn: Callable[[list[Ready]], None]) -> None:
        self.sync.each_chunk(self.works, group, size, fn, self.work_of.__getitem__)

    def call(self, fn: Callable[[], T]) -> T:
        return self.sync.call(self.works, fn)

    def still_open(self, ready: Ready) -> bool:
        return self.work_of[ready].open


class BatchSync:
    """Sync one tenant's customers together. Nothing here raises: every item ends Done or Again."""

    def __init__(self, deps: SyncDeps, settings: BatchSettings, back_off: Callable[[str, float], None],
                 sleep: Callable[[float], None] = time.sleep, watcher: JobWatcher | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deps = deps
        self.settings = settings
        self.back_off = back_off
        self.sleep = sleep
        self.clock = clock
        #: When this batch's locks were last taken or refreshed (`_refresh_locks`).
        self._locked_at = 0.0
        #: Polls this batch's bulk jobs with those of the process's other batches (`worker.job_watcher`).
        self.watcher = watcher or JobWatcher(back_off, retry=settings.retry)
        self.tenant = deps.tenant.id
        self.store: Store = deps.store
        self.klaviyo: KlaviyoClient = deps.klaviyo
        self._locks: list[tuple[str, str]] = []
        #: (run, customer) whose outcome the batch recorded, for their loyalty events (level changes).
        self.synced: list[tuple[str, Synced]] = []
        #: Outcomes decided but not yet recorded (`record_outcomes`).
        self._outcomes: list[OutcomeRecord] = []
        #: The batch's customers, and its name for `Store.hold`.
        self._works: list[Work] = []
        self._token = uuid.uuid4().hex

    # --- outcomes --------------------------------------------------------------------------------

    def finish(self, work: Work, outcome: Outcome, reason: str, profile_id: str | None = None) -> None:
        if work.warnings:
            reason = f"{reason} [{'; '.join(work.warnings)}]"
        if work.interrupted is not None:
            outcome = after_interruption(work.interrupted, outcome)
        customer = work.prepared.customer if work.prepared is not None else None
        self._outcomes.append(OutcomeRecord(
            run_id=work.item.run, tenant=self.tenant, customer_id=work.item.customer_id, outcome=outcome,
            reason=reason, profile_id=profile_id, updated_date=customer.updated_date if customer else None,
            warnings=work.warnings or None,
        ))
        work.result = Done(work.item, outcome, reason)
        self.synced.append((work.item.run, Synced(work.item.customer_id, customer, outcome, profile_id)))

    def record_outcomes(self) -> None:
        """Record the outcomes decided so far in one round trip (`Store.record_outcomes`): done before
        a batch waits on its jobs and before it releases its locks, so an outcome is never recorded
        after another sync of the customer could start."""
        outcomes, self._outcomes = self._outcomes, []
        self.store.record_outcomes(outcomes)
        if outcomes:
            self._hold()

    def _hold(self, *, letting_go: bool = False) -> None:
        """Tell the producers' backpressure how many of each run's customers this batch holds off the
        queue without a recorded outcome (`Store.hold`); `letting_go` at the end of the batch."""
        held: dict[str, int] = {}
        for w in self._works:
            held.setdefault(w.item.run, 0)
            if not letting_go and not isinstance(w.result, Done):
                held[w.item.run] += 1
        for run, customers in held.items():
            self.store.hold(run, self._token, customers, self.settings.lock_ttl_s)

    def finish_planned(self, p: Planned) -> None:
        self.finish(p.work, p.plan.outcome, p.plan.reason, p.plan.profile_id)

    def again(self, work: Work, countdown_s: float, reason: str, *, attempt: int | None = None,
              throttles: int | None = None) -> None:
        item = replace(work.item, attempt=attempt or work.item.attempt,
                       throttles=work.item.throttles if throttles is None else throttles)
        work.result = Again(item, self.settings.retry.clamp(countdown_s), reason)

    def retry_later(self, work: Work, reason: str) -> None:
        """A failed attempt for this customer: back on the queue with backoff, or failed at the limit."""
        self.carry_out(work, decide(RetryableError(reason), work.item.attempt, work.item.throttles,
                                    self.settings.retry))

    def carry_out(self, work: Work, decision: Decision) -> None:
        if isinstance(decision, Retry):
            self.again(work, decision.countdown_s, decision.reason, attempt=decision.attempt,
                       throttles=decision.throttles)
        elif isinstance(decision, Fail):
            self.finish(work, Outcome.FAILED, decision.reason)
        else:
            self.finish(work, Outcome.FAILED, decision.failure)

    def end_stage(self, works: list[Work], error: SyncError) -> NoReturn:
        """A Klaviyo call failed for the whole batch: decide for every customer still open, as the
        per-customer task would (defer, back off, pause the tenant, retry later), and end the stage."""
        open_works = [w for w in works if w.open]
        known = error if isinstance(error, RetryableError | TenantFatalError) else RetryableError(str(error))
        draw = self.settings.retry.rand()
        policy = replace(self.settings.retry, rand=lambda: draw)   # one wait for the whole batch
        first = decide(known, 1, 0, policy)
        if isinstance(first, PauseTenant):
            if self.store.pause_tenant(self.tenant, first.reason):
                log.error("tenant_paused", tenant=self.tenant, reason=first.reason,
                          fix="fix the key, then run `loyale-sync verify` and `loyale-sync retry-failures`")
        elif first.back_off_s is not None:   # a 429: the whole tenant backs off, once
            self.back_off(self.tenant, first.back_off_s)
        for w in open_works:
            self.carry_out(w, decide(known, w.item.attempt, w.item.throttles, policy))
        if isinstance(first, Retry) and first.deferred:
            for run in {w.item.run for w in open_works}:
                self.store.count_deferral(run)
        raise StageFailed(str(error))

    # --- the batch -------------------------------------------------------------------------------

    def run(self, items: list[Item]) -> list[Result]:
        works = [Work(item) for item in items]
        self._works = works
        paused = self.store.tenant_paused(self.tenant)
        if paused is not None:
            for w in works:
                self.finish(w, Outcome.FAILED, f"tenant paused: {paused}")
            self.record_outcomes()
            return [w.result for w in works if w.result]
        self._hold()
        locked = self._lock(works)
        try:
            batch = self._prepare(locked)
            try:
                planned = self._remember_plans(self._plan(locked, batch))
                self._phones(locked, planned)
                self.record_outcomes()
                self._write(locked, planned)
                self._suppressions(locked, planned)
                for p in planned:
                    if p.open and not p.plan.writes_anything:
                        self.finish_planned(p)
            except StageFailed:
                pass
            for w in locked:
                if w.solo and w.result is None:
                    self._one_by_one(w)
            self.record_outcomes()   # before the events, which follow the recorded profile sync
            self._settle_events()
        finally:
            try:
                self.record_outcomes()
                self._hold(letting_go=True)
            finally:
                # Also every lock an earlier run of these same messages took (same task id as token) and
                # could not release: its pool process died mid-batch. A customer that leaves this batch
                # another way (collided, synced on its own) would otherwise keep it until the TTL.
                earlier = [(w.item.customer_id, w.item.task_id) for w in works]
                earlier += [(email_lock(w.email), w.item.task_id) for w in works if w.email]
                self.store.unlock_customers(self.tenant, list(dict.fromkeys(self._locks + earlier)))
        return [w.result for w in works if w.result]

    def _plan(self, works: list[Work], batch: list[tuple[Work, Ready]]) -> list[Planned]:
        """Look the customers up (`worker.pipeline.lookup_many`) and plan each; a plan that must unset
        a property goes to the per-customer path (a bulk row cannot unset; PATCH can)."""
        work_of = {ready: w for w, ready in batch}
        matches = lookup_many(self.klaviyo, self.deps.policy, [ready for _, ready in batch],
                              calls=_LookupCalls(self, works, work_of))
        planned: list[Planned] = []
        for w, ready in batch:
            if w.open:
                plan = plan_sync(ready.customer, ready.mapped, matches[ready], self.deps.policy, ready.memory)
                if plan.unset:
                    w.solo = True
                else:
                    planned.append(Planned(w, ready, plan))
        return planned

    def _remember_plans(self, planned: list[Planned]) -> list[Planned]:
        """Note what an interrupted earlier attempt planned, then what this one will write. A customer
        whose lookup finds no profile where an earlier attempt found one goes back to the queue
        (`lookup_lags`). Returns the plans still to carry out."""
        by_run: dict[str, list[Planned]] = {}
        for p in planned:
            by_run.setdefault(p.work.item.run, []).append(p)
        for run, group in by_run.items():
            earlier = self.store.pending(run, [p.customer_id for p in group])
            for p in group:
                p.work.interrupted = earlier.get(p.customer_id)
                if lookup_lags(p.work.interrupted, p.plan.outcome, p.plan.profile_id):
                    self.retry_later(p.work, LOOKUP_LAGS)
            self.store.mark_pending(run, {p.customer_id: p.plan.outcome.value for p in group
                                          if p.open and p.plan.writes_anything})
        return [p for p in planned if p.open]

    def _lock(self, works: list[Work]) -> list[Work]:
        self._locked_at = self.clock()   # before any is taken: their TTLs run from later than this
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

    def _prepare(self, works: list[Work]) -> list[tuple[Work, Ready]]:
        """Prepare (`worker.pipeline`) and check order; set aside customers that need the
        per-customer path. Returns the customers to look up, with what this service remembers."""
        batch: list[tuple[Work, Ready]] = []
        seen: set[str] = set()
        prepared_all = prepare_many([w.item.customer for w in works], self.deps.tenant.default_phone_region,
                                    partial(self.store.unusable_phones, self.tenant))
        for w, prepared in zip(works, prepared_all, strict=True):
            w.prepared, w.warnings = prepared, list(prepared.warnings)
            if isinstance(prepared, Stopped):
                self.finish(w, prepared.plan.outcome, prepared.plan.reason)
                continue
            identities = {f"id:{prepared.customer.id}"}
            if prepared.mapped.email is not None:
                identities.add(f"email:{prepared.mapped.email}")
            if identities & seen:
                self._collided(w)
                continue
            seen |= identities
            batch.append((w, prepared))
        # Two customers with one email in two batches at once would both look "new" and the later
        # bulk upsert would take over the earlier's profile: one sync per email at a time.
        with_email = [(w, email) for w, ready in batch if (email := ready.mapped.email) is not None]
        pairs = [(email_lock(email), w.item.task_id) for w, email in with_email]
        grants = self.store.lock_customers(self.tenant, pairs, self.settings.lock_ttl_s)
        for (w, _), pair, locked in zip(with_email, pairs, grants, strict=True):
            if locked:
                self._locks.append(pair)
            else:
                self.again(w, 1.0, "another customer with this email is being synced")
        batch = [(w, ready) for w, ready in batch if w.open]
        memories = self.store.memories(self.tenant, [(r.customer.id, r.mapped.email) for _, r in batch])
        remembered: list[tuple[Work, Ready]] = []
        for (w, ready), memory in zip(batch, memories, strict=True):
            if (stale := stale_plan(ready.customer, memory)) is not None:
                self.finish(w, stale.outcome, stale.reason)
            else:
                remembered.append((w, replace(ready, memory=memory)))
        return remembered

    def call(self, works: list[Work], fn: Callable[[], T]) -> T:
        """One Klaviyo call for the batch. A passing failure (5xx, timeout, dropped connection) is tried
        again in place a few times: a batch makes a dozen calls, and sending thousands of customers
        back to the queue for one of them would rarely let a batch through a flaky minute. Every call
        here is safe to repeat (reads; upserts; suppressions). A 429 or our own limiter's wait is not
        retried here: the tenant backs off and the customers wait on the queue."""
        for attempt in range(INLINE_RETRIES + 1):
            try:
                return fn()
            except (Throttled, Deferred, TenantFatalError) as exc:
                self.end_stage(works, exc)
            except RetryableError as exc:
                inline = decide(exc, attempt + 1, 0, INLINE_POLICY)
                if not isinstance(inline, Retry):
                    self.end_stage(works, exc)
                self.sleep(inline.countdown_s)
        raise AssertionError("unreachable")   # the last failure above raises StageFailed

    def each_chunk(self, works: list[Work], group: list[X], size: int, fn: Callable[[list[X]], None],
                   work_of: Callable[[X], Work]) -> None:
        """Call `fn` per chunk of `group`; a chunk Klaviyo refuses (4xx) is synced one by one instead."""
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            try:
                self.call(works, partial(fn, chunk))
            except RecordRejected:
                for x in chunk:
                    work_of(x).solo = True

    def _phones(self, works: list[Work], planned: list[Planned]) -> None:
        """Drop every phone that belongs to another profile, or that another customer sent moments
        ago, before any row carries it (a bulk row would merge the two profiles)."""
        senders = [(p, phone) for p in planned if p.open and p.plan.write and (phone := phone_of(p.plan))]
        owners: dict[str, KlaviyoProfile] = {}

        def by_phone(chunk: list[tuple[Planned, str]]) -> None:
            for profile in self.klaviyo.find_many("phone_number", [phone for _, phone in chunk]):
                if profile.phone:
                    owners[profile.phone] = profile

        self.each_chunk(works, senders, MAX_FILTER_VALUES, by_phone, lambda sender: sender[0].work)
        senders = [(p, phone) for p, phone in senders if p.open]
        for p, phone in senders:
            owner = owners.get(phone)
            if owner is not None and owner.id != p.plan.profile_id:
                self.store.remember_taken_phone(self.tenant, phone)
                p.work.warnings.append(f"phone not sent: it belongs to Klaviyo profile {owner.id}")
                p.plan = p.plan.without_phone()
        senders = [(p, phone) for p, phone in senders if p.plan.sends_phone]
        claims = self.store.claim_phones(self.tenant, [(phone, p.customer_id) for p, phone in senders],
                                         PHONE_CLAIM_TTL_S)
        for (p, _), granted in zip(senders, claims, strict=True):
            if not granted:
                p.work.warnings.append("phone not sent: another customer with this phone was synced moments ago")
                p.plan = p.plan.without_phone()

    # --- writes ----------------------------------------------------------------------------------

    def _write(self, works: list[Work], planned: list[Planned]) -> None:
        """Bulk import rounds (`worker.bulk_import`) for every customer with a write, until each row is
        confirmed, refused, or out of rounds."""
        writers = [p for p in planned if p.open and p.plan.write]
        overwrites: dict[str, list[tuple[str, str, tuple[FieldChange, ...]]]] = {}
        for p in writers:
            if p.plan.write == "update" and p.plan.overwrites and p.plan.profile_id:
                overwrites.setdefault(p.work.item.run, []).append((p.customer_id, p.plan.profile_id, p.plan.overwrites))
        for run, journaled in overwrites.items():
            self.store.journal_many(run, self.tenant, journaled)
        importer: BulkImport[Planned] = BulkImport(
            self.klaviyo, self.tenant, Polling(
                poll_first_s=self.settings.poll_first_s, poll_max_s=self.settings.poll_max_s,
                job_timeout_s=self.settings.job_timeout_s, lock_ttl_s=self.settings.lock_ttl_s),
            call=partial(self.call, works), fail=partial(self.end_stage, works),
            refresh_locks=self._refresh_locks,
            watcher=self.watcher, poll_job=self._job_poller())
        pending = writers
        for _ in range(self.settings.job_rounds):
            if not pending:
                break
            resend: list[Planned] = []

            def settle(p: Planned, verdict: Verdict, resend: list[Planned] = resend) -> None:
                if self._settle_row(p, verdict):
                    resend.append(p)

            def again(p: Planned, resend: list[Planned] = resend) -> dict[str, Any] | None:
                """A row refused at submit goes again at once (its phone left out), in this round."""
                if p not in resend:
                    return None
                resend.remove(p)
                return self._row(p)

            importer.round([(p, self._row(p)) for p in pending], settle, again)
            pending = resend
        for p in pending:
            self.retry_later(p.work, "Klaviyo did not apply its bulk import row (cancelled or unfinished jobs)")
        for p in writers:
            if p.open and p.confirmed and not p.plan.writes_suppression:
                self.finish_planned(p)

    def _refresh_locks(self) -> None:
        """Extend this batch's locks while its jobs run, unless they were taken or refreshed less than a
        third of their TTL ago: the waiting loop calls this every few seconds at most (`BulkImport`), so
        a lock keeps at least a third of its TTL, and a batch whose jobs end quickly refreshes nothing
        (it refreshed every lock of the batch each round: a third of its Redis work)."""
        now = self.clock()
        if now - self._locked_at < self.settings.lock_ttl_s / 3:
            return
        self.store.refresh_locks(self.tenant, self._locks, self.settings.lock_ttl_s)
        self._hold()   # the customers still count as held, not waiting, for as long as the locks
        self._locked_at = now

    def _job_poller(self) -> Callable[[str], BulkImportJob]:
        """How the watcher thread polls this batch's jobs: in this batch's context (its run, for the
        request counts), but never waiting for the limiter in place (it polls every batch's jobs)."""
        context = contextvars.copy_context()

        def poll(job_id: str) -> BulkImportJob:
            with waiting_inline(0.0):
                return self.klaviyo.bulk_import_job(job_id)

        return lambda job_id: context.run(poll, job_id)

    @staticmethod
    def _row(p: Planned) -> dict[str, Any]:
        if p.plan.write == "create":
            return {"type": "profile", "attributes": p.plan.attributes}
        return {"type": "profile", "id": p.plan.profile_id, "attributes": p.plan.attributes}

    def _settle_row(self, p: Planned, verdict: Verdict) -> bool:
        """What a bulk row's verdict means for its customer; True to send the row again."""
        match verdict:
            case Confirmed():
                p.confirmed = True
            case Refused(error):
                return self._refused_row(p, error)
            case Rejected(error):
                self._finish_error(p, error)
            case Unaccounted():
                # Klaviyo's account of the job does not add up: the per-customer path confirms each.
                p.work.solo = True
            case NotApplied():
                return True       # cancelled part-way, or never ended: its row may not be applied
        return False

    def _refused_row(self, p: Planned, error: ImportError_ | RecordRejected) -> bool:
        """Klaviyo refused the customer's row: True to send it again (without its phone), else the
        customer ends here or goes to the per-customer path."""
        code = error.code
        if (phone := phone_of(p.plan)) is not None and (error.about_phone or code == "duplicate_profile"):
            if code != "duplicate_profile":
                self.store.remember_refused_phone(self.tenant, phone, region_wide=refuses_region(error.detail))
            p.work.warnings.append(f"phone not sent: Klaviyo refused it ({error.detail[:120]})")
            p.plan = p.plan.without_phone()
            if p.plan.write is None or not p.plan.changes:
                if p.plan.write is None:
                    self.finish_planned(p)
                return False
            return True
        if code in ("duplicate_profile", "not_found"):
            # An identifier now belongs to another profile (or the profile was merged away): the
            # per-customer path looks again and re-plans.
            p.work.solo = True
            return False
        status = error.status if isinstance(error, RecordRejected) else 400
        self._finish_error(p, RecordRejected(status, code or "invalid", error.detail, error.pointer))
        return False

    def _finish_error(self, p: Planned, error: RecordRejected) -> None:
        if error.code == "duplicate_profile":
            self.finish(p.work, Outcome.CONFLICT,
                        f"Klaviyo: {error.detail} (an identifier belongs to another profile)", p.plan.profile_id)
        else:
            self.finish(p.work, Outcome.REJECTED, str(error), p.plan.profile_id)

    def _suppressions(self, works: list[Work], planned: list[Planned]) -> None:
        suppress = [(p, email) for p in planned if p.open and (email := p.plan.suppress_email)]
        unsuppress = [(p, email) for p in planned if p.open and (email := p.plan.unsuppress_email)]

        def apply(chunk: list[tuple[Planned, str]], call: Callable[[list[str]], list[str]],
                  action: Literal["suppress", "unsuppress"]) -> None:
            job_ids = call([email for _, email in chunk])
            self.store.mark_many(self.tenant, action, [(email, p.customer_id) for p, email in chunk],
                                 job_ids[0] if job_ids else "")
            for p, _ in chunk:
                self.finish_planned(p)

        def work_of(pair: tuple[Planned, str]) -> Work:
            return pair[0].work

        self.each_chunk(works, suppress, 100,
                        lambda c: apply(c, self.klaviyo.suppress, "suppress"), work_of)
        self.each_chunk(works, unsuppress, 100,
                        lambda c: apply(c, self.klaviyo.unsuppress, "unsuppress"), work_of)

    def _settle_events(self) -> None:
        """The loyalty events of the customers synced (their level changes), sent after their profiles
        and under their locks (worker/event_sync.py). A failure is logged, not the batch's: each
        customer's levels stay unremembered, so its next sync finds the same changes again."""
        by_run: dict[str, list[Synced]] = {}
        for run, customer in self.synced:
            by_run.setdefault(run, []).append(customer)
        for run, group in by_run.items():
            try:
                EventSender(self.deps).settle(run, group)
            except SyncError as exc:
                if isinstance(exc, Throttled):
                    self.back_off(self.tenant, exc.retry_after_s or 1.0)
                log.warning("batch_events_postponed", tenant=self.tenant, run=run, customers=len(group),
                            error=str(exc)[:300])

    def _one_by_one(self, w: Work) -> None:
        """The per-customer path, for customers the batch cannot confirm or write."""
        w.solo = False   # from here on it is open like any other customer
        if (paused := self.store.tenant_paused(self.tenant)) is not None:
            self.finish(w, Outcome.FAILED, f"tenant paused: {paused}")
            return
        try:
            result = sync_customer(self.deps, w.item.run, w.item.customer)
            w.result = Done(w.item, result.outcome, result.reason)
            self.synced.append((w.item.run, synced(result, [])))
        except (RetryableError, TenantFatalError) as exc:
            with contextlib.suppress(StageFailed):
                self.end_stage([w], exc)


def email_lock(email: str | None) -> str:
    """The lock name that keeps two syncs of one email apart (see `Store.lock_customer`)."""
    return f"email:{(email or '').strip().lower()}"
