"""Tables, text and progress shown by the commands: times, durations and outcome counts for people,
and the operators' tables (runs, requests, problem customers, a customer's history, failures)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.merge import Plan
from worker.outcomes import PROBLEMS, Outcome
from worker.store import EventOutcome, RunInfo, Store

if TYPE_CHECKING:  # cli.queries imports this module for `iso` and `RANK`
    from cli.queries import Failure

#: How often a progress bar reads the run's counts.
POLL_S = 0.5
#: Reasons are what the operator reads: ids and times do not wrap, reasons do, but not to a sliver.
REASON_WIDTH = 30
RANK = {outcome.value: index for index, outcome in enumerate(Outcome)}


def short(value: Any, limit: int = 60) -> str:
    text = "—" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(epoch_s: float | None) -> str:
    return "—" if not epoch_s else datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def readable_loyale_time(value: str | None) -> str:
    """The ledger's ISO `updatedDate` (Loyale's text), for people: to the second, in UTC."""
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"
    except ValueError:
        return value or "—"


def iso(epoch_s: float | None) -> str | None:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat() if epoch_s else None


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def ordered_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Counts in the order of `Outcome` (an outcome this version does not know goes last)."""
    return sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: (RANK.get(kv[0], len(RANK)), kv[0]))


def counts_text(counts: dict[str, int]) -> str:
    problems = {o.value for o in PROBLEMS}
    return ", ".join(f"[red]{k} {v}[/]" if k in problems else f"{k} {v}" for k, v in ordered_counts(counts)) or "—"


def progress_text(info: RunInfo) -> str:
    return f"{info.completed} / {info.expected}" if info.expected is not None else f"{info.completed} / ?"


def requests_by_endpoint(raw: dict[str, int]) -> dict[str, dict[str, int]]:
    """`{"GET /api/profiles 200": 3}` (the store's keys) -> `{"GET /api/profiles": {"200": 3}}`."""
    grouped: dict[str, dict[str, int]] = {}
    for key, count in sorted(raw.items()):
        endpoint, _, status = key.rpartition(" ")
        grouped.setdefault(endpoint or key, {})[status] = count
    return grouped


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


def runs_table(tenant_id: str, found: list[RunInfo]) -> Table:
    """`runs`: a tenant's recent runs, newest first."""
    table = Table(title=f"runs of {tenant_id} (newest first)")
    table.add_column("run", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("customers", justify="right", no_wrap=True)
    table.add_column("outcomes", min_width=24)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    for info in found:
        table.add_row(info.id, info.kind, info.state, progress_text(info), counts_text(info.counts),
                      when(info.started_at), duration(info.duration_s))
    return table


def requests_table(spent: dict[str, int]) -> Table:
    """`report`: the Klaviyo requests a run spent, per endpoint and status."""
    spent_table = Table(title=f"Klaviyo requests: {sum(spent.values())}")
    spent_table.add_column("endpoint")
    spent_table.add_column("status", justify="right")
    spent_table.add_column("requests", justify="right")
    for endpoint, statuses in requests_by_endpoint(spent).items():
        for code, count in statuses.items():
            spent_table.add_row(endpoint, code, str(count))
    return spent_table


def problems_table(rows: list[dict[str, Any]], limit: int) -> Table:
    """`report`: the customers that did not succeed (`cli.queries.problem_rows`), the first `limit` of them."""
    table = Table(title=f"customers that did not succeed: {len(rows)}")
    table.add_column("customer", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("reason", min_width=REASON_WIDTH)
    table.add_column("Klaviyo profile", no_wrap=True)
    for row in rows[:limit]:
        table.add_row(escape(row["customer_id"]), row["outcome"], escape(short(row["reason"], 200)),
                      escape(row["profile_id"] or "—"))
    return table


def history_table(customer_id: str, tenant_id: str, entries: list[dict[str, Any]]) -> Table:
    """`customer`: a customer's ledger entries, newest first."""
    table = Table(title=f"customer {escape(customer_id)} of {tenant_id} (newest first)")
    table.add_column("time (UTC) / run", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("reason", min_width=REASON_WIDTH)
    table.add_column("Klaviyo profile", no_wrap=True)
    for entry in entries:
        reason = escape(entry.get("reason") or "")
        reason += "".join(f"\n[yellow]warning:[/] {escape(w)}" for w in entry.get("warnings") or [])
        if entry.get("updated_date"):
            reason += f"\n[dim]Loyale updatedDate {readable_loyale_time(entry['updated_date'])}[/]"
        table.add_row(f"{when(entry.get('at')).removesuffix(' UTC')}\n{entry.get('run', '')}",
                      str(entry.get("outcome", "")), reason, escape(entry.get("profile_id") or "—"))
    return table


def events_table(counts: dict[str, int]) -> Table:
    """`report`: the run's loyalty events per outcome (worker/state/events.py)."""
    table = Table(title=f"loyalty events: {sum(counts.values())}")
    table.add_column("outcome")
    table.add_column("events", justify="right")
    for outcome in EventOutcome:
        if counts.get(outcome.value):
            table.add_row(outcome.value, str(counts[outcome.value]))
    return table


def event_history_table(customer_id: str, tenant_id: str, entries: list[dict[str, Any]]) -> Table:
    """`customer`: the customer's loyalty events and what became of each, newest first."""
    table = Table(title=f"loyalty events of customer {escape(customer_id)} of {tenant_id} (newest first)")
    table.add_column("recorded (UTC) / run", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("Loyale time (UTC)", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("reason", min_width=REASON_WIDTH)
    for entry in entries:
        table.add_row(f"{when(entry.get('at')).removesuffix(' UTC')}\n{entry.get('run', '')}",
                      escape(str(entry.get("event", ""))), readable_loyale_time(entry.get("time")),
                      str(entry.get("outcome", "")), escape(short(entry.get("reason") or "", 200)))
    return table


def failures_table(found: list[Failure], scope: str) -> Table:
    """`failures`: the open failures, with a tenant column when they span several tenants."""
    several = len({f.tenant for f in found}) > 1
    table = Table(title=f"failed and rejected customers in {scope}: {len(found)}")
    if several:
        table.add_column("tenant", no_wrap=True)
    table.add_column("customer", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("reason", min_width=REASON_WIDTH)
    table.add_column("run", no_wrap=True)
    for failure in found:
        cells = (escape(failure.customer_id), failure.outcome, escape(failure.reason), failure.run)
        table.add_row(*((failure.tenant, *cells) if several else cells))
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
