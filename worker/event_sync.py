"""Send a customer's loyalty events to Klaviyo after its profile sync, consent first.

Called with the customer's sync (`Synced`: the snapshot, its outcome and profile id) while the
customer's lock is still held, so an event never races the profile it refers to: the per-customer
task calls it right after `sync_customer`, the batch after its customers' outcomes are recorded.

For each event, in this order:
  duplicate            its unique id already has an outcome (a webhook delivered twice, a catch-up that
                       read the transaction again): recorded, not sent
  dropped_no_consent   the customer has not opted in to marketing in Loyale (or is deleted, suspended,
                       on hold, or left the scheme: then only `Loyale Left Scheme` goes): never sent
  dropped_no_profile   no Klaviyo profile this service synced for the customer (never synced, a
                       conflict, invalid, rejected): never sent. Klaviyo's event endpoints create a
                       profile for an identifier no profile holds, so an event names its profile by the
                       Klaviyo id this service remembers, and only that
  rejected             Klaviyo refused it (4xx, with its detail); a key without `events:write` (403)
                       blocks the tenant's events for `EVENTS_BLOCK_S` instead of pausing its profile sync
  sent                 Klaviyo accepted it (202)

Level changes are computed here: the levels held now against the levels last synced (`worker.state.events`),
remembered once every event of the customer has its outcome (a sync that fails part-way computes them
again next time, with the same unique ids).

Few events go one request each (`POST /api/events`, 350/s); many (a catch-up, a backfill's level
changes) go in bulk jobs of up to 1,000 (`POST /api/event-bulk-create-jobs`, 10/s). A bulk job fails
whole when it repeats an event Klaviyo holds, so an event sent before without a recorded outcome (the
worker died after sending) is sent again on its own, where Klaviyo drops a repeat. Retryable errors
and a 401 propagate to the caller, which retries the customer (or pauses the tenant) as for its sync.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog

from worker.errors import RecordRejected, TenantFatalError
from worker.events import LEFT_SCHEME, LoyaltyEvent, level_changes
from worker.klaviyo import bulk_event_chunks
from worker.models import LoyaleCustomer
from worker.outcomes import Outcome
from worker.state.events import EventOutcome
from worker.state.runs import REMEMBERED
from worker.sync import SyncDeps, SyncResult

log = structlog.get_logger("events")

#: From this many events to send at once, bulk jobs (1,000 events a request, 150 requests a minute)
#: instead of one request each (3,500 a minute).
BULK_FROM = 20
#: After Klaviyo refused a tenant's events for the key's scopes (403), they are not tried again for
#: this long (the profile sync goes on; `loyale-sync verify` shows the missing scope).
EVENTS_BLOCK_S = 3600


@dataclass(frozen=True)
class Synced:
    """One customer's profile sync, as its events need it."""

    customer_id: str
    customer: LoyaleCustomer | None
    outcome: Outcome
    profile_id: str | None
    #: The events the customer's message carried (from webhooks or the catch-up pass).
    events: tuple[LoyaltyEvent, ...] = ()


@dataclass(frozen=True)
class EventResult:
    event: LoyaltyEvent
    outcome: EventOutcome
    reason: str = ""


@dataclass
class _Pending:
    synced: Synced
    profile_id: str
    event: LoyaltyEvent


def carried(events: list[dict[str, Any]]) -> tuple[LoyaltyEvent, ...]:
    """The events a message carries (`LoyaltyEvent.to_json`); anything else is left out."""
    return tuple(e for raw in events if isinstance(raw, dict) and (e := LoyaltyEvent.from_json(raw)) is not None)


def synced(result: SyncResult, events: list[dict[str, Any]]) -> Synced:
    """A per-customer sync's result with the events its message carried."""
    return Synced(result.customer_id, result.customer, result.outcome, result.profile_id, carried(events))


def settle_failed_events(deps: SyncDeps, run_id: str, customer_id: str, events: list[dict[str, Any]]) -> None:
    """The customer's sync failed for good: its message's events are recorded `failed`, never sent."""
    EventSender(deps).settle(run_id, [Synced(customer_id, None, Outcome.FAILED, None, carried(events))])


def consent_reason(customer: LoyaleCustomer | None, metric: str) -> str | None:
    """Why the customer's event may not be sent for consent, or None when it may."""
    if customer is None:
        return "the customer could not be read from Loyale"
    if customer.deleted:
        return "deleted in Loyale"
    if customer.on_hold:
        return "suspended or on hold in Loyale"
    if customer.marketing_sub is not True:
        return "not opted in to marketing in Loyale"
    if customer.left_scheme and metric != LEFT_SCHEME:
        return "left the scheme in Loyale"
    return None


def verdict(synced: Synced, event: LoyaltyEvent, last_outcome: str | None = None) -> EventResult | None:
    """The outcome of an event that may not be sent, or None when it may. `last_outcome`: the
    customer's last outcome, which stands for a stale snapshot's (a newer one was synced)."""
    if synced.outcome == Outcome.FAILED:
        return EventResult(event, EventOutcome.FAILED, "the customer's sync failed")
    if (why := consent_reason(synced.customer, event.metric)) is not None:
        return EventResult(event, EventOutcome.DROPPED_NO_CONSENT, why)
    outcome = last_outcome if synced.outcome == Outcome.STALE else synced.outcome.value
    if synced.profile_id is None or outcome not in {o.value for o in REMEMBERED}:
        return EventResult(event, EventOutcome.DROPPED_NO_PROFILE,
                           f"no Klaviyo profile this service synced for the customer (outcome {outcome})")
    return None


def _settles_levels(synced: Synced) -> LoyaleCustomer | None:
    """The customer whose levels this sync makes the ones last synced (not a stale or failed one, and
    only levels Loyale confirmed)."""
    customer = synced.customer
    if customer is None or customer.levels_unknown or synced.outcome in (Outcome.STALE, Outcome.FAILED,
                                                                          Outcome.INVALID):
        return None
    return customer


@dataclass
class EventSender:
    deps: SyncDeps
    bulk_from: int = BULK_FROM
    block_s: int = EVENTS_BLOCK_S
    #: Decide only (`loyale-sync preview`): nothing is sent or recorded, no level remembered; an event
    #: that would be sent is reported `sent`.
    dry_run: bool = False
    results: list[EventResult] = field(default_factory=list)

    @property
    def tenant(self) -> str:
        return self.deps.tenant.id

    def settle(self, run_id: str, synced: list[Synced]) -> list[EventResult]:
        """Decide, send and record every event of these customers (see the module docstring)."""
        store = self.deps.store
        self.results = []
        settling = {s.customer_id: c for s in synced if (c := _settles_levels(s)) is not None}
        before = store.synced_levels(self.tenant, list(settling))
        events: dict[str, list[LoyaltyEvent]] = {}
        for s in synced:
            found = list(s.events)
            if (customer := settling.get(s.customer_id)) is not None:
                found += level_changes(s.customer_id, before.get(s.customer_id), customer.level_names,
                                       customer.level_since, customer.updated_date)
            events[s.customer_id] = list({e.unique_id: e for e in found}.values())   # once each, in order
        if self.deps.tenant.events:
            self._settle(run_id, synced, events)
        if self.dry_run:
            return self.results
        store.remember_levels(self.tenant, {cid: c.level_names for cid, c in settling.items()})
        if self.results:
            counts = Counter(r.outcome.value for r in self.results)
            log.info("events_settled", tenant=self.tenant, run=run_id, customers=len(synced), **counts)
        return self.results

    def _record(self, run_id: str, customer_id: str, result: EventResult, profile_id: str | None = None) -> None:
        if self.dry_run:
            self.results.append(result)
            return
        self.deps.store.record_event(
            run_id=run_id, tenant=self.tenant, customer_id=customer_id, metric=result.event.metric,
            unique_id=result.event.unique_id, time_iso=result.event.time.isoformat(), outcome=result.outcome,
            reason=result.reason, profile_id=profile_id)
        self.results.append(result)

    def _settle(self, run_id: str, synced: list[Synced], events: dict[str, list[LoyaltyEvent]]) -> None:
        store = self.deps.store
        stale = [s for s in synced if s.outcome == Outcome.STALE and events[s.customer_id]]
        memories = store.memories(self.tenant, [(s.customer_id, None) for s in stale])
        last = {s.customer_id: (m.last_outcome, m.profile_id) for s, m in zip(stale, memories, strict=True)}
        pending: list[_Pending] = []
        for s in synced:
            found = events[s.customer_id]
            handled = store.handled_events(self.tenant, s.customer_id, [e.unique_id for e in found])
            last_outcome, remembered_id = last.get(s.customer_id, (None, None))
            profile_id = remembered_id if s.outcome == Outcome.STALE else s.profile_id
            for event in found:
                if event.unique_id in handled:
                    self._record(run_id, s.customer_id, EventResult(event, EventOutcome.DUPLICATE,
                                                                    "already sent or settled"))
                elif (refused := verdict(Synced(s.customer_id, s.customer, s.outcome, profile_id), event,
                                         last_outcome)) is not None:
                    self._record(run_id, s.customer_id, refused)
                else:
                    assert profile_id is not None   # verdict refuses an event without a profile
                    pending.append(_Pending(s, profile_id, event))
        if pending and self.dry_run:
            for p in pending:
                self._record(run_id, p.synced.customer_id, EventResult(p.event, EventOutcome.SENT, "would be sent"))
        elif pending:
            self._send(run_id, pending)

    def _send(self, run_id: str, pending: list[_Pending]) -> None:
        store, klaviyo = self.deps.store, self.deps.klaviyo
        if (blocked := store.events_blocked(self.tenant)) is not None:
            for p in pending:
                self._record(run_id, p.synced.customer_id, EventResult(p.event, EventOutcome.REJECTED, blocked))
            return
        one_by_one = pending
        if len(pending) >= self.bulk_from:
            tried = {p.synced.customer_id: store.attempted_events(self.tenant, p.synced.customer_id)
                     for p in pending}
            one_by_one = [p for p in pending if p.event.unique_id in tried[p.synced.customer_id]]
            fresh = [p for p in pending if p.event.unique_id not in tried[p.synced.customer_id]]
            self._attempt(fresh)
            by_key = {(p.profile_id, p.event.unique_id): p for p in fresh}
            for chunk in bulk_event_chunks([(p.profile_id, p.event) for p in fresh]):
                group = [by_key[(profile_id, event.unique_id)] for profile_id, event in chunk]
                try:
                    if not self._unless_blocked(run_id, pending, partial(klaviyo.create_event_bulk_job, chunk)):
                        return
                except RecordRejected as exc:
                    # A refused job names its bad events only by pointer: each goes on its own instead.
                    log.warning("event_bulk_job_refused", tenant=self.tenant, events=len(chunk), error=str(exc)[:300])
                    one_by_one += group
                    continue
                for p in group:
                    self._record(run_id, p.synced.customer_id, EventResult(p.event, EventOutcome.SENT), p.profile_id)
        self._attempt(one_by_one)
        for p in one_by_one:
            try:
                if not self._unless_blocked(run_id, pending, partial(klaviyo.create_event, p.event, p.profile_id)):
                    return
            except RecordRejected as exc:
                self._record(run_id, p.synced.customer_id, EventResult(p.event, EventOutcome.REJECTED, str(exc)[:500]))
                continue
            self._record(run_id, p.synced.customer_id, EventResult(p.event, EventOutcome.SENT), p.profile_id)

    def _unless_blocked(self, run_id: str, pending: list[_Pending], call: Callable[[], None]) -> bool:
        """`call()`; False when Klaviyo refused the tenant's events for the key's scopes (403): then every
        event of `pending` without an outcome yet is recorded rejected."""
        try:
            call()
        except TenantFatalError as exc:
            if not self._blocked(exc):
                raise
            self._send(run_id, [p for p in pending if p.event.unique_id not in self._done()])
            return False
        return True

    def _attempt(self, pending: list[_Pending]) -> None:
        by_customer: dict[str, list[str]] = {}
        for p in pending:
            by_customer.setdefault(p.synced.customer_id, []).append(p.event.unique_id)
        self.deps.store.mark_attempted(self.tenant, by_customer)

    def _done(self) -> set[str]:
        return {r.event.unique_id for r in self.results}

    def _blocked(self, exc: TenantFatalError) -> bool:
        """A 403 on an event endpoint: the key lacks `events:write`. The tenant's events stop for a
        while (the rest of this call is recorded rejected), its profile sync goes on."""
        if exc.status != 403:
            return False
        reason = (f"Klaviyo refused the events (403): the private key lacks the events:write scope; create a "
                  f"key with it (`loyale-sync verify --tenant {self.tenant}` lists the scopes), or set "
                  f"events = false for tenant {self.tenant!r}")
        if self.deps.store.block_events(self.tenant, reason, self.block_s):
            log.error("events_blocked", tenant=self.tenant, reason=reason, for_s=self.block_s)
        return True
