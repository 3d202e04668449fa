"""`preview` (what a backfill would do, before it does it) and `undo` (put a run's overwrites back)."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.table import Table

from cli import context as ctx
from cli.context import TenantOpt
from cli.render import outcome_table, short
from producers.backfill import BACKFILL_FILTERS, BACKFILL_SORTS
from producers.loyale import LoyaleRouteMissing
from worker.errors import RetryableError, TenantFatalError
from worker.event_sync import EventResult, EventSender, Synced
from worker.merge import EXISTING_PROFILES, Policy
from worker.messages import snapshot_json
from worker.outcomes import Outcome
from worker.preview import Previewed, preview
from worker.runtime import Runtime, current_run
from worker.settings import TenantConfig
from worker.store import RunInfo
from worker.undo import group_journal, plan_undo

ON_OFF = {"on": True, "off": False}


def _preview_table(item: Previewed) -> Table:
    table = Table(title=f"{item.customer_id}: {item.plan.outcome.value} — {short(item.plan.reason, 90)}")
    for column in ("field", "Klaviyo now", "Loyale", "action"):
        table.add_column(column)
    for row in item.rows():
        table.add_row(row["field"], short(row["klaviyo"]), short(row["loyale"]), row["action"])
    return table


def preview_scheme(rt: Runtime, chosen: TenantConfig, policy: Policy, *, limit: int | None = None,
                   on_progress: Callable[[int], None] | None = None) -> list[Previewed]:
    """What a backfill would do for the first `limit` customers of the scheme (None: all of them), read
    the way a backfill reads them. Writes nothing; raises TenantFatalError / RetryableError."""
    loyale = ctx.loyale_client(rt.http, chosen)

    def payloads() -> Iterator[dict[str, Any]]:
        taken = 0
        for page in loyale.pages(filters=BACKFILL_FILTERS, sorts=BACKFILL_SORTS):
            for raw in page.customers:
                if limit is not None and taken >= limit:
                    return
                taken += 1
                yield snapshot_json(loyale.snapshot(raw))  # read back by preview as a message would be

    items: list[Previewed] = []
    for item in preview(rt.klaviyo(chosen.id), policy, payloads(), region=chosen.default_phone_region,
                        state=rt.store, tenant=chosen.id):
        items.append(item)
        if on_progress is not None:
            on_progress(len(items))
    return items


def preview_events(rt: Runtime, chosen: TenantConfig, items: list[Previewed]) -> list[tuple[str, EventResult]]:
    """The loyalty events a backfill of these customers would send (their level changes since the levels
    last synced), each with what would become of it, decided as the backfill decides. Sends nothing."""
    synced = [Synced(i.customer_id, i.customer, i.plan.outcome, i.plan.profile_id) for i in items]
    return [(r.event.customer_id, r) for r in EventSender(rt.deps(chosen.id), dry_run=True).settle("", synced)]


def _events_table(found: list[tuple[str, EventResult]]) -> Table:
    table = Table(title=f"loyalty events a backfill would send: {sum(r.outcome == 'sent' for _, r in found)} "
                        f"of {len(found)}")
    for column in ("customer", "event", "Loyale time", "would be", "reason"):
        table.add_column(column)
    for customer_id, r in found:
        table.add_row(customer_id, r.event.metric, r.event.time.isoformat(), r.outcome.value,
                      short(r.reason, 80) if r.reason != "would be sent" else "")
    return table


@dataclass(frozen=True)
class Undone:
    """What the undo did (or, in a dry run, would do) to one profile."""
    customer_id: str
    profile_id: str
    outcome: Outcome
    reason: str


@dataclass
class UndoResult:
    #: The undo's own run (None for a dry run), its counts per outcome and its report.
    run_id: str | None
    counts: Counter[str] = field(default_factory=Counter)
    info: RunInfo | None = None


def undo_run(rt: Runtime, run: str, *, dry_run: bool = False,
             on_profile: Callable[[Undone], None] | None = None,
             on_start: Callable[[int], None] | None = None) -> UndoResult:
    """Put back the values `run` overwrote, profile by profile, as a run of kind `undo` (`loyale-sync
    undo`). `on_start` gets the number of profiles, `on_profile` each profile's result. Raises
    typer.Exit (with a message on stderr) when the run is unknown or Klaviyo keeps failing."""
    entries = rt.store.journal(run)
    source = rt.store.run(run)
    # The journal outlives the run's report (SYNC_JOURNAL_RETENTION_DAYS) and names its tenant.
    tenant = source.tenant if source is not None else entries[0]["tenant"] if entries else None
    if tenant is None:
        raise ctx.fail(f"no run {run!r} in Redis (a typo, or older than the retention period)")
    if tenant not in rt.tenants:
        raise ctx.fail(f"run {run} belongs to tenant {tenant!r}, which is not configured")
    journal = group_journal(entries)
    if on_start is not None:
        on_start(len(journal))
    klaviyo = rt.klaviyo(tenant)
    result = UndoResult(None if dry_run else rt.store.create_run(tenant, "undo", source=run))
    undo = result.run_id
    if undo:
        rt.store.mark_enqueued(undo, [e[0]["customer_id"] for e in journal.values()])
    token = current_run.set(undo)
    try:
        for profile_id, profile_entries in journal.items():
            found = klaviyo.find_one("id", profile_id)
            plan = plan_undo(profile_entries, found)
            if plan.missing:
                outcome, reason = Outcome.REJECTED, "the profile is no longer in Klaviyo"
            elif plan.conflicts:
                outcome = Outcome.CONFLICT
                reason = (f"changed in Klaviyo since the run, kept: {', '.join(sorted(plan.conflicts))}"
                          + (f"; restored: {', '.join(sorted(plan.restore))}" if plan.restore else ""))
            elif plan.restore:
                outcome, reason = Outcome.UPDATED, f"restored: {', '.join(sorted(plan.restore))}"
            else:
                outcome, reason = Outcome.UNCHANGED, "already holds the old values"
            if plan.restore and not dry_run:
                klaviyo.update_profile(profile_id, plan.attributes)
            result.counts[outcome.value] += 1
            if undo:
                rt.store.record_outcome(run_id=undo, tenant=tenant, customer_id=plan.customer_id,
                                        outcome=outcome, reason=reason, profile_id=profile_id)
            if on_profile is not None:
                on_profile(Undone(plan.customer_id, profile_id, outcome, reason))
    except (TenantFatalError, RetryableError) as exc:
        raise ctx.fail(f"{exc}; run `loyale-sync undo {run}` again: values already restored are "
                       "recognised and not written twice") from None
    finally:
        current_run.reset(token)
    if undo:
        rt.store.finish_producing(undo, len(journal))
        result.info = rt.store.run(undo)
    return result


def register(app: typer.Typer) -> None:
    @app.command("preview")
    def preview_command(
        tenant: TenantOpt = None,
        sample: Annotated[int, typer.Option(help="Preview the first N customers of the scheme.")] = 20,
        all_customers: Annotated[bool, typer.Option("--all", help="Preview every customer (batched lookups).")
                                 ] = False,
        merge_customers: Annotated[str | None, typer.Option(
            help="on|off: preview under this Merge Customers setting instead of the tenant's.")] = None,
        existing_profiles: Annotated[str | None, typer.Option(
            help="skip|fill_empty: with merge off, what happens to existing profiles.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
        as_csv: Annotated[bool, typer.Option("--csv", help="One CSV row per field change on stdout.")] = False,
    ) -> None:
        """Show what a backfill would do, field by field, under the chosen settings. Writes nothing."""
        if merge_customers is not None and merge_customers not in ON_OFF:
            raise ctx.fail("--merge-customers is on or off")
        if existing_profiles is not None and existing_profiles not in EXISTING_PROFILES:
            raise ctx.fail("--existing-profiles is skip or fill_empty")
        if sample < 1 and not all_customers:
            raise ctx.fail("--sample must be at least 1 (or use --all)")
        with ctx.runtime() as rt:
            chosen = ctx.pick_tenant(rt.tenants, tenant)
            policy = Policy(ON_OFF[merge_customers] if merge_customers else chosen.merge_customers,
                            EXISTING_PROFILES[existing_profiles] if existing_profiles else chosen.existing_profiles)
            try:
                items = preview_scheme(rt, chosen, policy, limit=None if all_customers else sample)
            except (TenantFatalError, LoyaleRouteMissing, RetryableError) as exc:
                raise ctx.fail(f"{exc}; nothing was written") from None
            events = preview_events(rt, chosen, items)
        counts = Counter(item.plan.outcome.value for item in items)
        settings = {"tenant": chosen.id, "merge_customers": policy.merge_customers,
                    "existing_profiles": policy.existing_profiles, "customers": len(items)}
        if as_json:
            sys.stdout.write(json.dumps({
                "settings": settings, "counts": dict(counts),
                "customers": [{"customer_id": i.customer_id, "outcome": i.plan.outcome.value, "reason": i.plan.reason,
                               "warnings": i.warnings, "changes": i.rows()} for i in items],
                "events": [{"customer_id": cid, "event": r.event.metric, "time": r.event.time.isoformat(),
                            "unique_id": r.event.unique_id, "properties": r.event.properties,
                            "outcome": r.outcome.value, "reason": r.reason} for cid, r in events],
            }, default=str, ensure_ascii=False) + "\n")
            return
        if as_csv:
            out = csv.writer(sys.stdout)
            out.writerow(["customer_id", "outcome", "field", "klaviyo", "loyale", "action", "reason"])
            for i in items:
                for row in i.rows() or [{"field": "", "klaviyo": "", "loyale": "", "action": ""}]:
                    out.writerow([i.customer_id, i.plan.outcome.value, row["field"], row["klaviyo"], row["loyale"],
                                  row["action"], i.plan.reason])
            return
        for item in items[:sample]:
            if item.rows():
                ctx.console.print(_preview_table(item))
        table = Table(title=f"preview of {len(items)} customers of {chosen.id}: merge customers "
                            f"{'on' if policy.merge_customers else 'off'}"
                            + ("" if policy.merge_customers else f", existing profiles: {policy.existing_profiles}"))
        table.add_column("outcome")
        table.add_column("customers", justify="right")
        for outcome in Outcome:
            if counts.get(outcome.value):
                table.add_row(outcome.value, str(counts[outcome.value]))
        ctx.console.print(table)
        if events:
            ctx.console.print(_events_table(events))
        overwrites = sum(1 for i in items for r in i.rows() if r["action"] == "overwrite")
        ctx.console.print(f"{overwrites} Klaviyo values would be overwritten; nothing was written")

    @app.command()
    def undo(
        run: Annotated[str, typer.Argument(help="The run whose overwrites to put back.")],
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be restored; write nothing.")
                           ] = False,
    ) -> None:
        """Restore the Klaviyo values a run overwrote (from its journal), except where a value changed in
        Klaviyo after our write: those are reported as conflicts and left alone. The undo is a run too."""
        def show(item: Undone) -> None:
            if dry_run:
                ctx.console.print(f"{item.customer_id} ({item.profile_id}): would be {item.outcome.value} — "
                                  f"{item.reason}")

        with ctx.runtime() as rt:
            result = undo_run(rt, run, dry_run=dry_run, on_profile=show)
            if dry_run:
                ctx.console.print(f"dry run: {dict(result.counts)}; nothing was written")
                return
            ctx.console.print(f"undo run [bold]{result.run_id}[/] of {run}")
            if result.info is not None:
                ctx.console.print(outcome_table(result.info))
