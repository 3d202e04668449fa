"""`retry-failures`' producer: re-read each failed customer from Loyale and enqueue it under a new `retry` run."""

from __future__ import annotations

from celery import Celery
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli import context as ctx
from cli.queries import Failure
from producers.backfill import wait_for_room
from producers.loyale import LoyaleRouteMissing, fresh_snapshot
from worker.errors import RetryableError, TenantFatalError
from worker.messages import QUEUE_INCREMENTAL, CustomerMessage, enqueue
from worker.runtime import Runtime
from worker.settings import TenantConfig


def redrive(rt: Runtime, celery_app: Celery, chosen: TenantConfig, found: list[Failure]) -> tuple[str, str | None]:
    """Enqueue the tenant's failures under a new run; returns the run id and what stopped it early, if anything."""
    loyale = ctx.loyale_client(rt.http, chosen)
    sources = ",".join(sorted({f.run for f in found}))
    run_id = rt.store.create_run(chosen.id, "retry", source=sources)
    ctx.console.print(f"run [bold]{run_id}[/]: re-reading {len(found)} customers of {chosen.id} from Loyale "
                      f"(failures of {sources})…")
    bar = Progress(TextColumn("enqueued"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=ctx.console, transient=True)
    task = bar.add_task("enqueue", total=len(found))
    enqueued = 0
    error: str | None = None
    bar.start()
    try:
        for index, failure in enumerate(found):
            if index % 100 == 0:
                wait_for_room(rt.store, run_id, rt.settings.max_queued_per_tenant)
            message = CustomerMessage(tenant=chosen.id, run=run_id,
                                      customer=fresh_snapshot(loyale, failure.customer_id))
            if rt.store.mark_enqueued(run_id, [message.customer_id])[0]:
                enqueue(celery_app, message, QUEUE_INCREMENTAL)
                enqueued += 1
            bar.update(task, completed=index + 1)
    except (TenantFatalError, LoyaleRouteMissing, RetryableError) as exc:
        error = (f"reading Loyale failed ({exc}); {enqueued} of {len(found)} enqueued in run {run_id}; "
                 "run `loyale-sync retry-failures` again for the rest")
    finally:
        bar.stop()
        # the run ends when the customers enqueued so far have their outcomes, even if reading stopped early
        rt.store.finish_producing(run_id, rt.store.enqueued_count(run_id))
    ctx.console.print(f"enqueued {enqueued} customers on {QUEUE_INCREMENTAL}")
    return run_id, error
