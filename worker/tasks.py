"""The per-customer Celery task, `sync.customer`: a thin shim around `worker.sync.sync_customer`.

One message per customer carries the tenant id (never a key), the run id and the customer's
snapshot. The task is acknowledged late and requeued if its worker dies; it is idempotent because
the plan is recomputed from Klaviyo's current state and the outcome is recorded once per run.

What happens on each kind of error (DESIGN.md decisions 10-12):
  Deferred (limiter, lock)  -> retried after the wait; not an attempt
  Throttled (429)           -> the whole tenant backs off for Retry-After; retried after it
  RetryableError (5xx...)   -> exponential backoff with jitter, up to `max_attempts`, then `failed`
  TenantFatalError (401/3)  -> the tenant is paused with one clear error; its tasks end `failed`
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery import Celery, Task

from worker import backoff
from worker.errors import Deferred, RetryableError, TenantFatalError, Throttled
from worker.outcomes import Outcome
from worker.runtime import Runtime, current_run
from worker.sync import customer_id_of, sync_customer

log = structlog.get_logger("tasks")

TASK_NAME = "sync.customer"
QUEUE_BACKFILL = "sync.backfill"
QUEUE_INCREMENTAL = "sync.incremental"
#: A 429 is not the customer's fault: it does not spend an attempt, but a storm that never ends
#: still has to stop somewhere.
MAX_THROTTLES = 200
LOCK_WAIT_S = 1.0

_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's dependencies, built on first use (in the worker child, after fork)."""
    global _runtime
    if _runtime is None:
        from worker.settings import get_settings

        _runtime = Runtime.build(get_settings())
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    global _runtime
    _runtime = runtime


def task_repr(tenant: str, run: str, customer_id: str) -> str:
    """What Flower and the logs show of a task: ids only, never the customer's personal data."""
    return repr({"tenant": tenant, "run": run, "customer_id": customer_id})


def enqueue(app: Celery, tenant: str, run: str, customer: dict[str, Any], queue: str, **options: Any) -> None:
    """Put one customer on the queue."""
    app.send_task(
        TASK_NAME, kwargs={"tenant": tenant, "run": run, "customer": customer}, queue=queue,
        kwargsrepr=task_repr(tenant, run, customer_id_of(customer)), **options,
    )


def sync_customer_task(self: Task, tenant: str, run: str, customer: dict[str, Any], attempt: int = 1,
                       throttles: int = 0) -> str:
    rt = get_runtime()
    store = rt.store
    customer_id = customer_id_of(customer)
    bound = log.bind(tenant=tenant, run=run, customer_id=customer_id, attempt=attempt)

    def again(countdown_s: float, *, next_attempt: int = attempt, next_throttles: int = throttles) -> None:
        countdown_s = min(max(countdown_s, 0.05), rt.settings.max_countdown_s)
        raise self.retry(
            kwargs={"tenant": tenant, "run": run, "customer": customer, "attempt": next_attempt,
                    "throttles": next_throttles},
            countdown=countdown_s, max_retries=None, kwargsrepr=task_repr(tenant, run, customer_id),
        )

    def fail(reason: str) -> str:
        store.record_outcome(run_id=run, tenant=tenant, customer_id=customer_id, outcome=Outcome.FAILED,
                             reason=reason)
        bound.warning("customer_failed", reason=reason)
        return Outcome.FAILED.value

    if tenant not in rt.tenants:
        return fail(f"tenant {tenant!r} is not configured in this worker (check SYNC_TENANTS_FILE)")
    if (paused := store.tenant_paused(tenant)) is not None:
        return fail(f"tenant paused: {paused}")
    if (wait_s := store.backoff_remaining_s(tenant)) > 0:
        again(wait_s)

    token = self.request.id or uuid.uuid4().hex
    if not store.lock_customer(tenant, customer_id, token):
        again(LOCK_WAIT_S)  # another sync of this customer is running: let it finish first
    run_token = current_run.set(run)
    try:
        return sync_customer(rt.deps(tenant), run, customer).outcome.value
    except Deferred as exc:
        again(exc.retry_after_s or LOCK_WAIT_S)
    except Throttled as exc:
        wait_s = backoff.after_throttle_s(exc.retry_after_s, rt.settings.retry_base_s, rt.settings.max_countdown_s)
        store.back_off_tenant(tenant, wait_s)
        bound.info("klaviyo_throttled", retry_after_s=exc.retry_after_s, countdown_s=round(wait_s, 2))
        if throttles + 1 >= MAX_THROTTLES:
            return fail(f"Klaviyo kept throttling: {MAX_THROTTLES} 429 answers in a row")
        again(wait_s, next_throttles=throttles + 1)
    except RetryableError as exc:
        if attempt >= rt.settings.max_attempts:
            return fail(f"gave up after {attempt} attempts: {exc}")
        wait_s = backoff.exponential_s(attempt, rt.settings.retry_base_s, rt.settings.retry_max_s)
        bound.info("sync_retry", error=str(exc), countdown_s=round(wait_s, 2))
        again(wait_s, next_attempt=attempt + 1)
    except TenantFatalError as exc:
        if store.pause_tenant(tenant, exc.reason):
            log.error("tenant_paused", tenant=tenant, reason=exc.reason,
                      fix="fix the key, then run `loyale-sync verify` and `loyale-sync retry-failures`")
        return fail(f"tenant paused: {exc.reason}")
    finally:
        current_run.reset(run_token)
        store.unlock_customer(tenant, customer_id, token)
    raise AssertionError("unreachable")  # every branch above returns or raises


def register(app: Celery) -> None:
    app.task(
        name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
        max_retries=None, typing=False,
    )(sync_customer_task)
