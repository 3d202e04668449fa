"""Celery tasks of the producing side, run by workers: scheduled passes and webhook hints.

  sync.incremental_pass   beat, every SYNC_INCREMENTAL_INTERVAL_S per tenant (queue sync.producers)
  sync.scheduled_backfill beat, the tenant's `backfill_cron` (queue sync.producers)
  sync.rescue_stalled_runs beat, every SYNC_RESCUE_INTERVAL_S: re-enqueue customers of runs whose
                          broker messages were lost (producers/rescue.py; queue sync.producers)
  sync.recheck_suppressions beat, every SYNC_SUPPRESSION_RECHECK_INTERVAL_S: suppressions Klaviyo has
                          not applied yet are checked, and sent again if they did not land
                          (worker/suppressions.py; queue sync.producers)
  sync.customer_hint      the webhook intake: re-read one customer from Loyale and sync it now
                          (queue sync.incremental)

`worker.app` registers them on its app with `register(app)`; this module never imports the app.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from celery import Celery, Task

from producers.backfill import run_backfill
from producers.event_catchup import run_event_catch_up
from producers.incremental import FilterIgnored, run_incremental
from producers.loyale import CustomerNotFound, LoyaleClient, LoyaleRouteMissing, gone_snapshot
from producers.rescue import rescue_stalled_runs as rescue
from producers.watermarks import Watermarks
from worker.errors import RetryableError, TenantFatalError
from worker.messages import (
    QUEUE_BACKFILL,
    QUEUE_INCREMENTAL,
    QUEUE_PRODUCERS,
    TASK_CUSTOMER_HINT,
    TASK_INCREMENTAL_PASS,
    TASK_RECHECK_SUPPRESSIONS,
    TASK_RESCUE_STALLED_RUNS,
    TASK_SCHEDULED_BACKFILL,
    CustomerMessage,
    Snapshot,
    enqueue,
)
from worker.retry import Retry, decide, retry_policy
from worker.runtime import get_runtime
from worker.suppressions import recheck_suppressions as recheck

log = structlog.get_logger("producer_tasks")

_loyale: dict[str, LoyaleClient] = {}


def loyale_for(tenant_id: str) -> LoyaleClient:
    """One Loyale client per tenant per process (keeps its admin token and level names)."""
    if tenant_id not in _loyale:
        rt = get_runtime()
        tenant = rt.tenants[tenant_id]
        _loyale[tenant_id] = LoyaleClient(
            rt.http, tenant=tenant.id, base_url=tenant.loyale_base_url, scheme_id=tenant.loyale_scheme_id,
            admin_email=tenant.loyale_admin_email, admin_password=tenant.loyale_admin_password)
    return _loyale[tenant_id]


def webhook_run_id(tenant: str, at: datetime | None = None) -> str:
    """Webhook syncs of a tenant are grouped into one run per minute (a redelivery lands in the same)."""
    return f"webhook-{tenant}-{(at or datetime.now(UTC)):%Y%m%dT%H%M}"


def register(app: Celery) -> None:
    """Register the producing side's tasks on the worker's app (`worker.app` calls it)."""

    def incremental_pass(self: Task, tenant: str) -> dict[str, Any] | None:
        rt = get_runtime()
        watermarks = Watermarks(rt.redis)
        token = self.request.id or uuid.uuid4().hex
        # a pass still running (a slow Loyale) makes the next one skip rather than read the same again
        if not watermarks.try_pass_lock(tenant, "incremental", token, ttl_s=rt.settings.incremental_interval_s * 10):
            log.info("incremental_pass_skipped", tenant=tenant, reason="the previous pass is still running")
            return None
        try:
            result = run_incremental(app=app, store=rt.store, watermarks=watermarks, loyale=loyale_for(tenant),
                                     tenant=tenant, overlap_s=rt.settings.incremental_overlap_s)
            caught_up = catch_up_events(tenant, watermarks)
            return {"run": result.run_id, "enqueued": result.enqueued, **caught_up}
        except (FilterIgnored, TenantFatalError, LoyaleRouteMissing) as exc:
            log.error("incremental_pass_failed", tenant=tenant, error=str(exc))
            return None
        except RetryableError as exc:
            log.warning("incremental_pass_incomplete", tenant=tenant, error=str(exc),
                        hint="the next pass reads these changes again")
            return None
        finally:
            watermarks.release_pass_lock(tenant, "incremental", token)


    def catch_up_events(tenant: str, watermarks: Watermarks) -> dict[str, Any]:
        """The events' catch-up pass after the customers' (producers/event_catchup.py); its failure is
        logged and left to the next pass, the customers' pass stands."""
        rt = get_runtime()
        if not rt.tenants[tenant].events:
            return {}
        try:
            done = run_event_catch_up(app=app, store=rt.store, watermarks=watermarks, loyale=loyale_for(tenant),
                                      tenant=tenant, overlap_s=rt.settings.incremental_overlap_s)
        except (FilterIgnored, TenantFatalError, RetryableError) as exc:
            log.warning("event_catchup_incomplete", tenant=tenant, error=str(exc),
                        hint="the next pass reads these events again")
            return {}
        return {"events_run": done.run_id, "events": done.events}

    def scheduled_backfill(self: Task, tenant: str) -> str | None:
        rt = get_runtime()
        watermarks = Watermarks(rt.redis)
        token = self.request.id or uuid.uuid4().hex
        if not watermarks.try_pass_lock(tenant, "backfill", token, ttl_s=6 * 3600):
            log.info("scheduled_backfill_skipped", tenant=tenant, reason="a scheduled backfill is still running")
            return None
        try:
            produced = run_backfill(app=app, store=rt.store, loyale=loyale_for(tenant), tenant=tenant,
                                    queue=QUEUE_BACKFILL, max_in_flight=rt.settings.max_queued_per_tenant)
            return produced.run_id
        except (TenantFatalError, LoyaleRouteMissing, RetryableError) as exc:
            log.error("scheduled_backfill_failed", tenant=tenant, error=str(exc))
            return None
        finally:
            watermarks.release_pass_lock(tenant, "backfill", token)


    def customer_hint(self: Task, tenant: str, customer_id: str, run: str, attempt: int = 1,
                      events: list[dict[str, Any]] | None = None) -> str | None:
        """A webhook named this customer: read its current state from Loyale, then sync it as usual;
        the loyalty events the post carried (or the catch-up pass found) go with it, sent after the
        profile sync (worker/event_sync.py)."""
        rt = get_runtime()
        if tenant not in rt.tenants:
            log.warning("hint_for_unknown_tenant", tenant=tenant)
            return None
        try:
            raw = loyale_for(tenant).customer(customer_id)
            snapshot: Snapshot = loyale_for(tenant).snapshot(raw)
        except CustomerNotFound:
            snapshot = gone_snapshot(customer_id)
        except RetryableError as exc:
            # backoff capped by the countdown limit only, as the hint's retries always were
            decision = decide(exc, attempt, 0, replace(retry_policy(rt.settings), max_s=rt.settings.max_countdown_s))
            if not isinstance(decision, Retry):
                log.warning("hint_dropped", tenant=tenant, customer_id=customer_id, error=str(exc),
                            hint="the next incremental pass picks the change up")
                return None
            raise self.retry(kwargs={"tenant": tenant, "customer_id": customer_id, "run": run,
                                     "attempt": decision.attempt, **({"events": events} if events else {})},
                             countdown=decision.countdown_s, max_retries=None) from exc
        except (TenantFatalError, LoyaleRouteMissing) as exc:
            log.error("hint_failed", tenant=tenant, customer_id=customer_id, error=str(exc))
            return None
        if rt.store.run(run) is None:
            # one run per tenant per minute gathers the webhook syncs, so `runs` and `report` show them
            rt.store.create_run(tenant, "webhook", run_id=run)
            rt.store.set_run_field(run, state="running")
        rt.store.mark_enqueued(run, [customer_id])
        # Same task, same retries and outcome recording as any per-customer sync: hand it over.
        enqueue(app, CustomerMessage(tenant=tenant, run=run, customer=snapshot, events=events or []),
                QUEUE_INCREMENTAL)
        return "enqueued"


    def rescue_stalled_runs() -> int:
        rt = get_runtime()
        watermarks = Watermarks(rt.redis)
        token = uuid.uuid4().hex
        if not watermarks.try_pass_lock("*", "rescue", token, ttl_s=max(60.0, rt.settings.rescue_interval_s)):
            return 0
        try:
            rescued = rescue(app, rt.store, rt.broker(), list(rt.tenants), loyale_for,
                                 rt.settings.stall_after_effective_s)
            return sum(r.enqueued for r in rescued)
        finally:
            watermarks.release_pass_lock("*", "rescue", token)


    def recheck_suppressions() -> dict[str, int]:
        """Every tenant's pending suppressions, checked once (one checker at a time, fleet-wide)."""
        rt = get_runtime()
        watermarks = Watermarks(rt.redis)
        token = uuid.uuid4().hex
        if not watermarks.try_pass_lock("*", "suppressions", token,
                                      ttl_s=max(60.0, rt.settings.suppression_recheck_interval_s)):
            return {}
        totals = {"settled": 0, "resent": 0, "waiting": 0}
        try:
            for tenant in rt.tenants:
                if rt.store.tenant_paused(tenant) is not None:
                    continue
                try:
                    done = recheck(rt.store, rt.deps(tenant).klaviyo, tenant,
                                   overdue_s=rt.settings.suppression_recheck_max_s)
                except (RetryableError, TenantFatalError) as exc:
                    log.warning("suppression_recheck_postponed", tenant=tenant, error=str(exc))
                    continue
                for name in totals:
                    totals[name] += getattr(done, name)
            return totals
        finally:
            watermarks.release_pass_lock("*", "suppressions", token)

    app.task(name=TASK_INCREMENTAL_PASS, bind=True, ignore_result=True, queue=QUEUE_PRODUCERS)(incremental_pass)
    app.task(name=TASK_SCHEDULED_BACKFILL, bind=True, ignore_result=True, queue=QUEUE_PRODUCERS)(scheduled_backfill)
    app.task(name=TASK_CUSTOMER_HINT, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
              max_retries=None)(customer_hint)
    app.task(name=TASK_RESCUE_STALLED_RUNS, ignore_result=True, queue=QUEUE_PRODUCERS)(rescue_stalled_runs)
    app.task(name=TASK_RECHECK_SUPPRESSIONS, ignore_result=True, queue=QUEUE_PRODUCERS)(recheck_suppressions)
