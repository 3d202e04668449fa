"""Tables and progress shown by the commands."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.merge import Plan
from worker.outcomes import Outcome
from worker.store import RunInfo, Store

#: How often a progress bar reads the run's counts.
POLL_S = 0.5


def short(value: Any, limit: int = 60) -> str:
    text = "—" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def outcome_table(info: RunInfo) -> Table:
    table = Table(title=f"run {info.id} ({info.tenant}, {info.kind}): {info.state}, {info.duration_s:.1f}s")
    table.add_column("outcome")
    table.add_column("customers", justify="right")
    for outcome in Outcome:
        if info.counts.get(outcome.value):
            table.add_row(outcome.value, str(info.counts[outcome.value]))
    table.add_row("[bold]total[/]", f"[bold]{info.completed}[/]" + (f" / {info.expected}" if info.expected else ""))
    return table


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"plan: {plan.outcome.value} — {plan.reason}")
    table.add_column("field")
    table.add_column("Klaviyo now")
    table.add_column("Loyale")
    table.add_column("action")
    for change in plan.changes:
        table.add_row(change.field, short(change.old), short(change.new), change.kind)
    for change in plan.kept:
        table.add_row(change.field, short(change.old), short(change.new), "keep")
    if plan.suppress_email:
        table.add_row("(suppression)", "—", "opted out", "suppress")
    if plan.unsuppress_email:
        table.add_row("(suppression)", "USER_SUPPRESSED", "opted in", "unsuppress")
    return table


def wait_for_run(store: Store, run_id: str, *, console: Console) -> RunInfo:
    """A progress bar until every enqueued customer of the run has an outcome."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(run_id, total=None)
        while True:
            info = store.run(run_id)
            if info is None:
                raise LookupError(f"no run {run_id!r} in Redis (expired after the retention period, or a typo)")
            total = info.expected if info.expected is not None else max(store.enqueued_count(run_id), 1)
            progress.update(bar, completed=info.completed, total=total)
            if info.done:
                return info
            time.sleep(POLL_S)
