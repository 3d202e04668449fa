"""The per-customer Celery task, `sync.customer`: a thin shim around `worker.sync.sync_customer`.

One message per customer carries the tenant id (never a key), the run id and the customer's
snapshot. The task is acknowledged late and requeued if its worker dies; it is idempotent because
the plan is recomputed from Klaviyo's current state and the outcome is recorded once per run.

What happens on each kind of error is `worker.retry.decide`'s answer: a deferral or a 429 is retried
without spending an attempt (a 429 backs the whole tenant off), other passing errors are retried with
backoff up to `max_attempts` and then `failed`, a 401/403 pauses the tenant.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from typing import Any

import redis
import structlog
from celery import Celery, Task
from celery.exceptions import Reject
from kombu.exceptions import BatchPublishError

from worker.adaptive_batches import AdaptiveBatches
from worker.batch import Again, BatchSettings, BatchSync, Done, Item, Result, email_lock
from worker.deliveries import HELD
from worker.errors import Deferred, RetryableError, TenantFatalError, Throttled
from worker.event_sync import EventSender, settle_failed_events, synced
from worker.klaviyo import GET_PROFILES
from worker.messages import (
    QUEUE_BACKFILL,
    TASK_BACKFILL_CUSTOMER,
    TASK_CUSTOMER,
    CustomerMessage,
    customer_id_of,
    enqueue,
    read_snapshot,
    task_repr,
)
from worker.outcomes import Outcome
from worker.ratelimit import LimiterUnavailable
from worker.retry import Fail, PauseTenant, Retry, decide, retry_policy
from worker.runtime import LOOKUPS_PER_SYNC, Runtime, current_run, get_runtime
from worker.settings import Settings
from worker.store import OutcomeRecord
from worker.sync import sync_customer

log = structlog.get_logger("tasks")

LOCK_WAIT_S = 1.0

def sync_customer_task(self: Task, tenant: str, run: str, customer: dict[str, Any], attempt: int = 1,
                       throttles: int = 0, events: list[dict[str, Any]] | None = None) -> str:
    try:
        return _sync_customer_task(self, tenant, run, customer, attempt, throttles, events or [])
    except (redis.ConnectionError, redis.TimeoutError, LimiterUnavailable) as exc:
        # Our own state store is unreachable: nothing may be sent without the limiter and no
        # outcome can be recorded. Put the message back; if even that fails, the broker
        # redelivers it after the visibility timeout. Never acknowledge it unprocessed.
        log.warning("state_store_unavailable", tenant=tenant, run=run, error=str(exc))
        raise Reject(str(exc), requeue=True) from exc


def _sync_customer_task(self: Task, tenant: str, run: str, customer: dict[str, Any], attempt: int,
                        throttles: int, events: list[dict[str, Any]]) -> str:
    rt = get_runtime()
    store = rt.store
    customer_id = customer_id_of(customer)
    bound = log.bind(tenant=tenant, run=run, customer_id=customer_id, attempt=attempt)

    policy = retry_policy(rt.settings)

    def again(countdown_s: float, *, next_attempt: int = attempt, next_throttles: int = throttles) -> None:
        countdown_s = policy.clamp(countdown_s)
        raise self.retry(
            kwargs={"tenant": tenant, "run": run, "customer": customer, "attempt": next_attempt,
                    "throttles": next_throttles, **({"events": events} if events else {})},
            countdown=countdown_s, max_retries=None, kwargsrepr=task_repr(tenant, run, customer_id),
        )

    def fail(reason: str) -> str:
        store.record_outcome(run_id=run, tenant=tenant, customer_id=customer_id, outcome=Outcome.FAILED,
                             reason=reason)
        if tenant in rt.tenants:
            settle_failed_events(rt.deps(tenant), run, customer_id, events)
        bound.warning("customer_failed", reason=reason)
        return Outcome.FAILED.value

    if tenant not in rt.tenants:
        return fail(f"tenant {tenant!r} is not configured in this worker (check SYNC_TENANTS_FILE)")
    if (paused := store.tenant_paused(tenant)) is not None:
        return fail(f"tenant paused: {paused}")
    if (wait_s := rt.limiter.backoff_remaining_s(tenant)) > 0:
        again(wait_s)

    token = self.request.id or uuid.uuid4().hex
    if not store.lock_customer(tenant, customer_id, token, rt.settings.lock_ttl_s):
        again(LOCK_WAIT_S)  # another sync of this customer is running: let it finish first
    email = customer.get("email") if isinstance(customer.get("email"), str) else None
    if email and not store.lock_customer(tenant, email_lock(email), token, rt.settings.lock_ttl_s):
        store.unlock_customer(tenant, customer_id, token)
        again(LOCK_WAIT_S)  # another customer with this email is being synced (case duplicates)
    run_token = current_run.set(run)
    try:
        waited_s = 0.0
        while True:
            with rt.prepaid(tenant, GET_PROFILES, LOOKUPS_PER_SYNC) as wait_s:
                if wait_s <= 0:
                    deps = rt.deps(tenant)
                    result = sync_customer(deps, run, customer)
                    # Still under the customer's lock: its events never race its profile (worker/event_sync.py).
                    EventSender(deps).settle(run, [synced(result, events)])
                    return result.outcome.value
            if waited_s + wait_s > rt.wait_inline_s:    # 0 on Redis: always deferred
                raise Deferred("waiting for the rate limit before the lookups", retry_after_s=wait_s)
            time.sleep(wait_s)
            waited_s += wait_s
    except (RetryableError, TenantFatalError) as exc:
        decision = decide(exc, attempt, throttles, policy)
        if isinstance(decision, PauseTenant):
            if store.pause_tenant(tenant, decision.reason):
                log.error("tenant_paused", tenant=tenant, reason=decision.reason,
                          fix="fix the key, then run `loyale-sync verify` and `loyale-sync retry-failures`")
            return fail(decision.failure)
        if decision.back_off_s is not None:   # a 429: the whole tenant waits
            rt.limiter.back_off(tenant, decision.back_off_s)
            bound.info("klaviyo_throttled", retry_after_s=exc.retry_after_s if isinstance(exc, Throttled) else None,
                       countdown_s=round(decision.back_off_s, 2))
        if isinstance(decision, Fail):
            return fail(decision.reason)
        if decision.deferred:
            bound.debug("sync_deferred", reason=decision.reason, countdown_s=decision.countdown_s)
            store.count_deferral(run)
        elif decision.back_off_s is None:
            bound.info("sync_retry", error=decision.reason, countdown_s=round(decision.countdown_s, 2))
        again(decision.countdown_s, next_attempt=decision.attempt, next_throttles=decision.throttles)
    finally:
        current_run.reset(run_token)
        store.unlock_customer(tenant, customer_id, token)
        if email:
            store.unlock_customer(tenant, email_lock(email), token)
    raise AssertionError("unreachable")  # every branch above returns or raises


def backfill_batch(app: Celery, requests: list[Any]) -> None:
    """Run by a backfill worker on the customers it holds (celery-batches hands them over together).

    Every customer ends recorded or back on the queue. If something unexpected breaks the batch, each
    of its customers is retried as after a passing error (`decide`: backoff, `failed` at max_attempts);
    if even that fails, this pool process exits so that the broker redelivers the unacknowledged
    messages instead of their being acknowledged unprocessed. A second delivery of a message another
    batch of this process holds is dropped (`worker.deliveries`).
    """
    started = time.monotonic()
    claimed, duplicates = HELD.claim(r.id for r in requests)
    if duplicates:
        log.warning("duplicate_delivery_dropped", customers=len(duplicates),
                    why="another batch of this worker holds these messages (given back to the queue when the "
                        "broker connection dropped); that batch records their outcomes")
        requests = [r for r in requests if r.id in claimed]
    try:
        try:
            rt = get_runtime()
            settings = BatchSettings(retry=retry_policy(rt.settings), job_timeout_s=rt.settings.bulk_job_timeout_s,
                                     lock_ttl_s=rt.settings.lock_ttl_s)
            results = _sync_groups(rt, settings, requests)
        finally:
            HELD.release(claimed)   # before any customer goes back to the queue with its task id
        for result in results:
            if isinstance(result, Again):
                _requeue(app, result.item, result.countdown_s)
        _announce(app, requests, results, time.monotonic() - started)
        log.info("batch_synced", customers=len(requests), requeued=sum(isinstance(r, Again) for r in results),
                 seconds=round(time.monotonic() - started, 2))
    except Exception as exc:  # noqa: BLE001 - nothing may be acknowledged unprocessed
        log.exception("batch_failed", error=repr(exc), customers=len(requests))
        try:
            rt = get_runtime()
            policy = retry_policy(rt.settings)
            unexpected = RetryableError(f"internal error: {exc!r}")   # retried as a 5xx would be
            for request in requests:
                item = Item.from_request(request)
                decision = decide(unexpected, item.attempt, item.throttles, policy)
                if isinstance(decision, Retry):
                    item.attempt, item.throttles = decision.attempt, decision.throttles
                    _requeue(app, item, decision.countdown_s)
                else:
                    rt.store.record_outcome(run_id=item.run, tenant=item.tenant, customer_id=item.customer_id,
                                            outcome=Outcome.FAILED, reason=decision.reason)
        except Exception:  # noqa: BLE001
            log.critical("batch_requeue_failed", customers=len(requests))
            os._exit(70)


def _sync_groups(rt: Runtime, settings: BatchSettings, requests: list[Any]) -> list[Result]:
    """Each (tenant, run) group of the batch through `BatchSync`."""
    groups: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for request in requests:
        item = Item.from_request(request)
        groups[(item.tenant, item.run)].append(item)
    results: list[Result] = []
    for (tenant, run), items in groups.items():
        if tenant not in rt.tenants:
            reason = f"tenant {tenant!r} is not configured in this worker (check SYNC_TENANTS_FILE)"
            rt.store.record_outcomes([OutcomeRecord(run_id=run, tenant=tenant, customer_id=item.customer_id,
                                                    outcome=Outcome.FAILED, reason=reason) for item in items])
            results += [Done(item, Outcome.FAILED, reason) for item in items]
            continue
        token = current_run.set(run)
        try:
            # A batch holds thousands of customers and spends one lookup per hundred: it waits out
            # a short limit (the 1 s burst window) in place rather than requeue them all.
            with rt.waiting_inline(rt.settings.batch_wait_inline_s):
                results += BatchSync(rt.deps(tenant), settings, back_off=rt.limiter.back_off,
                                     watcher=rt.watcher).run(items)
        finally:
            current_run.reset(token)
    return results


def _requeue(app: Celery, item: Item, countdown_s: float) -> None:
    message = CustomerMessage(tenant=item.tenant, run=item.run, customer=read_snapshot(item.customer),
                              attempt=item.attempt, throttles=item.throttles, collisions=item.collisions)
    enqueue(app, message, QUEUE_BACKFILL, countdown=countdown_s, task_id=item.task_id)


#: Flower events `_announce` publishes per Redis round trip.
ANNOUNCE_CHUNK = 1000


def _announce(app: Celery, requests: list[Any], results: list[Result], runtime_s: float) -> None:
    """Tell Flower what became of each customer's task (the batch runs them together).

    One event per customer, as before, but a chunk of `ANNOUNCE_CHUNK` in one Redis round trip
    (kombu's `Producer.batch`, as `enqueue_many` publishes): sent one by one, each event cost a round
    trip and a new Redis client in kombu's fanout, about 0.7 ms per customer, the largest share of a
    batch's own work. A chunk whose pipeline fails is sent again one event each (Flower takes a
    repeated event as the same state); a transport without batch publishing sends each at once.

    Best effort: the outcomes are recorded and the requeues sent, so an event the broker cannot take
    (RabbitMQ restarting: the dispatcher's pooled connection died with it, and events are sent without
    retries) is logged rather than failing a batch that is done."""
    hostname = next((r.hostname for r in requests if r.hostname), None)
    events: list[tuple[str, dict[str, Any]]] = [
        ("task-succeeded", {"uuid": r.item.task_id, "result": repr(r.outcome.value), "runtime": runtime_s})
        if isinstance(r, Done) else
        ("task-retried", {"uuid": r.item.task_id, "exception": r.reason[:200], "traceback": ""})
        for r in results]
    try:
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            if not dispatcher.enabled:
                return
            for start in range(0, len(events), ANNOUNCE_CHUNK):
                chunk = events[start:start + ANNOUNCE_CHUNK]
                try:
                    with dispatcher.producer.batch(max_size=ANNOUNCE_CHUNK):
                        for kind, fields in chunk:
                            dispatcher.send(kind, **fields)
                except BatchPublishError as exc:
                    log.warning("announce_chunk_resent", events=len(chunk), error=str(exc.__cause__ or exc))
                    for kind, fields in chunk:
                        dispatcher.send(kind, **fields)
    except Exception as exc:  # noqa: BLE001 - Flower's view of the batch, not its work
        log.warning("batch_events_not_sent", customers=len(results), error=repr(exc))


def register(app: Celery, settings: Settings) -> None:
    app.task(
        name=TASK_CUSTOMER, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
        max_retries=None, typing=False,
    )(sync_customer_task)

    def sync_backfill_customers(requests: list[Any]) -> None:
        backfill_batch(app, requests)

    app.task(
        name=TASK_BACKFILL_CUSTOMER, base=AdaptiveBatches, acks_late=True, ignore_result=True,
        flush_every=settings.batch_size, flush_interval=settings.batch_flush_interval_s,
        max_wait_s=settings.batch_max_wait_s,
    )(sync_backfill_customers)
