"""Operators' run reports and the re-drive of failures: `runs`, `status`, `report`, `customer`, `failures`
and `retry-failures`.

Everything here reads the run records and the per-customer ledger that the workers keep in Redis;
only `retry-failures` reads Loyale and enqueues. Reports show ids, outcomes and reasons, never a key
or a customer's record. The commands only wire the parts: the queries in `cli/queries.py`, the tables
and text in `cli/render.py`, the re-drive's producer in `cli/redrive.py`.
"""

from __future__ import annotations

import csv
import json
import sys
from itertools import groupby
from typing import Annotated

import typer
from rich.markup import escape

from cli import context as ctx
from cli.queries import (
    RECENT_RUNS,
    open_failures,
    problem_rows,
    queues_text,
    redis_errors,
    run_or_fail,
    runs_to_scan,
    state,
)
from cli.redrive import redrive
from cli.render import (
    event_history_table,
    events_table,
    failures_table,
    history_table,
    iso,
    ordered_counts,
    outcome_table,
    problems_table,
    requests_by_endpoint,
    requests_table,
    runs_table,
    wait_for_run,
    when,
)
from worker.outcomes import PROBLEMS, Outcome

#: The terminal table of `report` stops here; --csv and --json always carry every customer.
REPORT_TABLE_ROWS = 500

TenantOpt = Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id (default: every tenant).")]
RunArg = Annotated[str, typer.Argument(help="The run id, as printed when the run started (see `loyale-sync runs`).")]
SourceRunOpt = Annotated[str | None, typer.Option(
    "--run", help=f"Only this run (default: the last {RECENT_RUNS} runs of each tenant).")]


def register(app: typer.Typer) -> None:
    """Add the operators' commands to `loyale-sync`."""
    app.command("runs")(runs)
    app.command("status")(status)
    app.command("report")(report)
    app.command("customer")(customer)
    app.command("failures")(failures)
    app.command("retry-failures")(retry_failures)


def runs(
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Runs shown per tenant.")] = 10,
) -> None:
    """Recent runs of each tenant, newest first: kind, state, counts per outcome, start and duration."""
    with state() as (all_tenants, store):
        for chosen in ctx.selected(all_tenants, tenant):
            found = store.runs(chosen.id, limit)
            if not found:
                ctx.console.print(f"{chosen.id}: no runs in Redis")
                continue
            ctx.console.print(runs_table(chosen.id, found))
    ctx.console.print(queues_text(ctx.settings()))


def status(run_id: RunArg) -> None:
    """Follow a run: a progress bar until every customer has an outcome, then the outcome table.

    Ctrl-C stops watching; the run goes on."""
    with state() as (_, store):
        info = run_or_fail(store, run_id)
        if not info.done:
            ctx.console.print(queues_text(ctx.settings()))
            if paused := store.tenant_paused(info.tenant):
                ctx.err_console.print(f"[yellow]warning:[/] tenant {info.tenant} is paused ({escape(paused)}); its "
                                      "customers end `failed` until its key is fixed")
            try:
                info = wait_for_run(store, run_id, console=ctx.console)
            except KeyboardInterrupt:
                ctx.err_console.print(f"stopped watching; the run goes on (loyale-sync status {run_id})")
                raise typer.Exit(130) from None
        ctx.console.print(outcome_table(info))
        problems = sum(info.counts.get(o.value, 0) for o in PROBLEMS)
        if problems:
            ctx.console.print(f"{problems} customers need a look: loyale-sync report {run_id}")


def report(
    run_id: RunArg,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    as_csv: Annotated[bool, typer.Option(
        "--csv", help="CSV on stdout: one row per non-success customer (customer_id,outcome,reason,...).")] = False,
) -> None:
    """What a run did: counts per outcome, duration, Klaviyo requests spent, and every customer that did
    not succeed, with its outcome and reason. Customer records and keys are never shown."""
    if as_json and as_csv:
        raise ctx.fail("choose one of --json and --csv")
    with state() as (_, store):
        info = run_or_fail(store, run_id)
        spent = store.requests(run_id)
        rows = problem_rows(store, run_id)
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=["customer_id", "outcome", "reason", "profile_id",
                                                       "recorded_at"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    if as_json:
        document = {
            "run": info.id, "tenant": info.tenant, "kind": info.kind, "state": info.state,
            "started_at": iso(info.started_at), "finished_at": iso(info.finished_at),
            "duration_s": round(info.duration_s, 3), "expected": info.expected, "completed": info.completed,
            "counts": dict(ordered_counts(info.counts)), "deferrals": info.deferrals, "meta": info.meta,
            "requests": {"total": sum(spent.values()), "by_endpoint": requests_by_endpoint(spent)},
            "events": info.events,
            "problems": rows,
        }
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return
    ctx.console.print(outcome_table(info))
    details = [f"started {when(info.started_at)}", f"waits for the rate limiter: {info.deferrals}"]
    details += [escape(f"{k}: {v}") for k, v in sorted(info.meta.items())]
    ctx.console.print("; ".join(details))
    ctx.console.print(requests_table(spent))
    if info.events:
        ctx.console.print(events_table(info.events))
    if not rows:
        ctx.console.print("every customer succeeded")
        return
    ctx.console.print(problems_table(rows, REPORT_TABLE_ROWS))
    if len(rows) > REPORT_TABLE_ROWS:
        ctx.console.print(f"first {REPORT_TABLE_ROWS} of {len(rows)} shown; all of them: "
                          f"loyale-sync report {run_id} --csv")


def customer(
    customer_id: Annotated[str, typer.Argument(help="The Loyale customer id.")],
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id (default: the only tenant).")]
    = None,
) -> None:
    """A customer's history: each run's outcome, reason, Klaviyo profile and time, newest first; then its
    loyalty events (sent, duplicate, dropped for consent or for want of a profile, rejected), newest first."""
    with state() as (all_tenants, store):
        chosen = ctx.pick_tenant(all_tenants, tenant)
        entries = store.history(chosen.id, customer_id)
        events = store.event_history(chosen.id, customer_id)
    if not entries and not events:
        raise ctx.fail(f"no history for customer {escape(repr(customer_id))} of {chosen.id}: never synced, synced "
                       "more than SYNC_RETENTION_DAYS ago, or a typo (ids are Loyale's)")
    if entries:
        ctx.console.print(history_table(customer_id, chosen.id, entries))
    if events:
        ctx.console.print(event_history_table(customer_id, chosen.id, events))


def failures(tenant: TenantOpt = None, run: SourceRunOpt = None) -> None:
    """The customers a retry can re-drive: `failed` (retries exhausted, or the tenant paused) and
    `rejected` (Klaviyo refused the data), with reasons. Customers a later sync has resolved are left out."""
    with state() as (all_tenants, store):
        found = open_failures(store, runs_to_scan(store, all_tenants, tenant, run))
    scope = f"run {run}" if run else f"the last {RECENT_RUNS} runs of " + (tenant or "every tenant")
    if not found:
        ctx.console.print(f"no failed or rejected customers in {scope}")
        return
    ctx.console.print(failures_table(found, scope))
    if any(f.outcome == Outcome.REJECTED.value for f in found):
        ctx.console.print("rejected customers fail again until their data is fixed in Loyale")
    ctx.console.print("re-drive them: loyale-sync retry-failures" + (f" --tenant {tenant}" if tenant else "")
                      + (f" --run {run}" if run else ""))


def retry_failures(
    tenant: TenantOpt = None,
    run: SourceRunOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until every customer has an outcome.")] = False,
) -> None:
    """Re-drive the customers `loyale-sync failures` lists, as a new `retry` run per tenant: each is read
    from Loyale again first, so the retry sends today's data (a customer gone from Loyale is suppressed).

    Fix the cause first: a paused tenant's key, or a rejected customer's data in Loyale.

    Each customer costs one Loyale read: when a whole scheme failed, `loyale-sync backfill` is cheaper."""
    from worker.app import app as celery_app

    with ctx.runtime() as rt, redis_errors(rt.settings):
        found = open_failures(rt.store, runs_to_scan(rt.store, rt.tenants, tenant, run))
        if not found:
            ctx.console.print("no failed or rejected customers to retry")
            return
        started: list[str] = []
        failed = False
        for tenant_id, group in groupby(found, key=lambda f: f.tenant):
            chosen = rt.tenants.get(tenant_id)
            if chosen is None:
                ctx.err_console.print(f"[bold red]{tenant_id}:[/] not configured (check SYNC_TENANTS_FILE); skipped")
                failed = True
                continue
            if paused := rt.store.tenant_paused(tenant_id):
                ctx.err_console.print(f"[bold red]{tenant_id}:[/] paused ({escape(paused)}); skipped, as every retry "
                                      "would end `failed` again: fix its Klaviyo key, resume the tenant with "
                                      "`loyale-sync verify`, then retry")
                failed = True
                continue
            run_id, error = redrive(rt, celery_app, chosen, list(group))
            started.append(run_id)
            if error:
                ctx.err_console.print(f"[bold red]{tenant_id}:[/] {escape(error)}")
                failed = True
        if wait:
            for run_id in started:
                ctx.console.print(outcome_table(wait_for_run(rt.store, run_id, console=ctx.console)))
        elif started:
            ctx.console.print("follow with: " + "; ".join(f"loyale-sync status {r}" for r in started))
    if failed:
        raise typer.Exit(1)
