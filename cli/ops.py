"""Operators' run reports and the re-drive of failures: `runs`, `status`, `report`, `customer`, `failures`
and `retry-failures`.

Everything here reads the run records and the per-customer ledger that the workers keep in Redis;
only `retry-failures` reads Loyale and enqueues. Reports show ids, outcomes and reasons, never a key
or a customer's record.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Annotated, Any
from urllib.parse import urlsplit

import redis
import typer
from celery import Celery
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli import context as ctx
from cli.render import outcome_table, short, wait_for_run
from producers.backfill import wait_for_room
from producers.loyale import CustomerNotFound, LoyaleClient, LoyaleRouteMissing, gone_snapshot
from worker.broker import open_broker
from worker.errors import RetryableError, TenantFatalError
from worker.messages import QUEUE_BACKFILL, QUEUE_INCREMENTAL, CustomerMessage, Snapshot, enqueue
from worker.outcomes import PROBLEMS, REDRIVABLE, Outcome
from worker.runtime import Runtime, make_redis
from worker.settings import Settings, TenantConfig
from worker.store import RunInfo, Store

#: How far back `failures` and `retry-failures` look, per tenant, when no --run is given.
RECENT_RUNS = 20
#: The terminal table of `report` stops here; --csv and --json always carry every customer.
REPORT_TABLE_ROWS = 500
#: Reasons are what the operator reads: ids and times do not wrap, reasons do, but not to a sliver.
REASON_WIDTH = 30
RANK = {outcome.value: index for index, outcome in enumerate(Outcome)}

TenantOpt = Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id (default: every tenant).")]
RunArg = Annotated[str, typer.Argument(help="The run id, as printed when the run started (see `loyale-sync runs`).")]
SourceRunOpt = Annotated[str | None, typer.Option(
    "--run", help=f"Only this run (default: the last {RECENT_RUNS} runs of each tenant).")]


# --- reading Redis -------------------------------------------------------------------------------


def _where(url: str) -> str:
    """Host and port of a Redis URL, without the password it may carry."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


@contextmanager
def redis_errors(config: Settings) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise ctx.fail(f"Redis at {_where(config.redis_url)} failed ({type(exc).__name__}: {exc}); check "
                       "SYNC_REDIS_URL and that Redis is running") from None


@contextmanager
def state() -> Iterator[tuple[dict[str, TenantConfig], Store]]:
    """The tenants and the store, for commands that only read Redis (no HTTP clients, no rate limits)."""
    config = ctx.settings()
    all_tenants = ctx.tenants(config)
    client = make_redis(config.redis_url)
    try:
        with redis_errors(config):
            yield all_tenants, Store(client, config.retention_days)
    finally:
        client.close()


def queues_text(config: Settings) -> str:
    """What waits on the broker's sync queues (`SYNC_BROKER_URL`, perhaps not the state Redis), in one line."""
    broker = open_broker(config.broker)
    try:
        depths = broker.depths([QUEUE_BACKFILL, QUEUE_INCREMENTAL])
    except redis.RedisError as exc:
        return f"[yellow]queues unknown:[/] the broker at {_where(config.broker)} failed ({type(exc).__name__})"
    finally:
        broker.close()
    return "waiting on the broker: " + ", ".join(f"{queue} {depth}" for queue, depth in depths.items())


def run_or_fail(store: Store, run_id: str) -> RunInfo:
    info = store.run(run_id)
    if info is None:
        raise ctx.fail(f"no run {escape(repr(run_id))} in Redis (a typo, or older than SYNC_RETENTION_DAYS); "
                       "`loyale-sync runs` lists the recent ones")
    return info


# --- formatting ------------------------------------------------------------------------------------


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


def problem_rows(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Every non-success customer of the run: ids, outcome and reason only (the ledger keeps no record)."""
    rows = [{"customer_id": cid, "outcome": entry.get("outcome", ""), "reason": entry.get("reason", ""),
             "profile_id": entry.get("profile_id"), "recorded_at": iso(entry.get("at"))}
            for cid, entry in store.problems(run_id).items()]
    return sorted(rows, key=lambda r: (RANK.get(r["outcome"], len(RANK)), r["customer_id"]))


# --- failures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    tenant: str
    customer_id: str
    outcome: str
    reason: str
    run: str
    at: float | None


def runs_to_scan(store: Store, all_tenants: dict[str, TenantConfig], tenant: str | None,
                 run_id: str | None) -> list[RunInfo]:
    if run_id is None:
        return [info for chosen in ctx.selected(all_tenants, tenant) for info in store.runs(chosen.id, RECENT_RUNS)]
    info = run_or_fail(store, run_id)
    if tenant is not None and info.tenant != tenant:
        raise ctx.fail(f"run {run_id} belongs to tenant {info.tenant!r}, not {tenant!r}")
    return [info]


def open_failures(store: Store, runs: list[RunInfo]) -> list[Failure]:
    """The `failed` and `rejected` customers of these runs that no later sync has resolved.

    A customer counts once, as the newest entry of its ledger says: if that is a success (a later run,
    a webhook, a retry), it is no longer a failure, whichever run it failed in.
    """
    candidates: dict[tuple[str, str], Failure] = {}
    for info in sorted(runs, key=lambda r: r.started_at, reverse=True):
        for cid, entry in store.problems(info.id).items():
            if entry.get("outcome") in REDRIVABLE and (info.tenant, cid) not in candidates:
                candidates[(info.tenant, cid)] = Failure(info.tenant, cid, entry["outcome"], entry.get("reason", ""),
                                                         info.id, entry.get("at"))
    found: list[Failure] = []
    by_tenant = sorted(candidates.values(), key=lambda f: f.tenant)
    for tenant, group in groupby(by_tenant, key=lambda f: f.tenant):
        failures = list(group)
        latest = store.latest_entries(tenant, [f.customer_id for f in failures])
        for failure in failures:
            now = latest.get(failure.customer_id)
            if now is None:  # the ledger expired or was trimmed: the run's record is all we know
                found.append(failure)
            elif now.get("outcome") in REDRIVABLE:
                found.append(Failure(tenant, failure.customer_id, now["outcome"], now.get("reason", ""),
                                     now.get("run") or failure.run, now.get("at")))
    return sorted(found, key=lambda f: (f.tenant, f.outcome, f.customer_id))


def fresh_snapshot(loyale: LoyaleClient, customer_id: str) -> Snapshot:
    """The customer as Loyale holds it now (as `sync.customer_hint` reads it): a retry sends today's data."""
    try:
        return loyale.snapshot(loyale.customer(customer_id))
    except CustomerNotFound:
        return gone_snapshot(customer_id)


# --- commands ----------------------------------------------------------------------------------------


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
            table = Table(title=f"runs of {chosen.id} (newest first)")
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
            ctx.console.print(table)
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
            "problems": rows,
        }
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return
    ctx.console.print(outcome_table(info))
    details = [f"started {when(info.started_at)}", f"waits for the rate limiter: {info.deferrals}"]
    details += [escape(f"{k}: {v}") for k, v in sorted(info.meta.items())]
    ctx.console.print("; ".join(details))
    spent_table = Table(title=f"Klaviyo requests: {sum(spent.values())}")
    spent_table.add_column("endpoint")
    spent_table.add_column("status", justify="right")
    spent_table.add_column("requests", justify="right")
    for endpoint, statuses in requests_by_endpoint(spent).items():
        for code, count in statuses.items():
            spent_table.add_row(endpoint, code, str(count))
    ctx.console.print(spent_table)
    if not rows:
        ctx.console.print("every customer succeeded")
        return
    table = Table(title=f"customers that did not succeed: {len(rows)}")
    table.add_column("customer", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("reason", min_width=REASON_WIDTH)
    table.add_column("Klaviyo profile", no_wrap=True)
    for row in rows[:REPORT_TABLE_ROWS]:
        table.add_row(escape(row["customer_id"]), row["outcome"], escape(short(row["reason"], 200)),
                      escape(row["profile_id"] or "—"))
    ctx.console.print(table)
    if len(rows) > REPORT_TABLE_ROWS:
        ctx.console.print(f"first {REPORT_TABLE_ROWS} of {len(rows)} shown; all of them: "
                          f"loyale-sync report {run_id} --csv")


def customer(
    customer_id: Annotated[str, typer.Argument(help="The Loyale customer id.")],
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id (default: the only tenant).")]
    = None,
) -> None:
    """A customer's history: each run's outcome, reason, Klaviyo profile and time, newest first."""
    with state() as (all_tenants, store):
        chosen = ctx.pick_tenant(all_tenants, tenant)
        entries = store.history(chosen.id, customer_id)
    if not entries:
        raise ctx.fail(f"no history for customer {escape(repr(customer_id))} of {chosen.id}: never synced, synced "
                       "more than SYNC_RETENTION_DAYS ago, or a typo (ids are Loyale's)")
    table = Table(title=f"customer {escape(customer_id)} of {chosen.id} (newest first)")
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
    ctx.console.print(table)


def failures(tenant: TenantOpt = None, run: SourceRunOpt = None) -> None:
    """The customers a retry can re-drive: `failed` (retries exhausted, or the tenant paused) and
    `rejected` (Klaviyo refused the data), with reasons. Customers a later sync has resolved are left out."""
    with state() as (all_tenants, store):
        found = open_failures(store, runs_to_scan(store, all_tenants, tenant, run))
    scope = f"run {run}" if run else f"the last {RECENT_RUNS} runs of " + (tenant or "every tenant")
    if not found:
        ctx.console.print(f"no failed or rejected customers in {scope}")
        return
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
    ctx.console.print(table)
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
