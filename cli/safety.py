"""`preview` (what a backfill would do, before it does it) and `undo` (put a run's overwrites back)."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.table import Table

from cli import context as ctx
from cli.render import outcome_table, short
from producers.backfill import BACKFILL_FILTERS, BACKFILL_SORTS
from producers.loyale import LoyaleRouteMissing
from worker.errors import RetryableError, TenantFatalError
from worker.merge import Policy
from worker.outcomes import Outcome
from worker.preview import Previewed, preview
from worker.runtime import current_run
from worker.undo import group_journal, plan_undo

TenantOpt = Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id (default: the only tenant).")]
ON_OFF = {"on": True, "off": False}


def _preview_table(item: Previewed) -> Table:
    table = Table(title=f"{item.customer_id}: {item.plan.outcome.value} — {short(item.plan.reason, 90)}")
    for column in ("field", "Klaviyo now", "Loyale", "action"):
        table.add_column(column)
    for row in item.rows():
        table.add_row(row["field"], short(row["klaviyo"]), short(row["loyale"]), row["action"])
    return table


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
        if existing_profiles is not None and existing_profiles not in ("skip", "fill_empty"):
            raise ctx.fail("--existing-profiles is skip or fill_empty")
        if sample < 1 and not all_customers:
            raise ctx.fail("--sample must be at least 1 (or use --all)")
        with ctx.runtime() as rt:
            chosen = ctx.pick_tenant(rt.tenants, tenant)
            policy = Policy(ON_OFF[merge_customers] if merge_customers else chosen.merge_customers,
                            existing_profiles or chosen.existing_profiles)
            loyale = ctx.loyale_client(rt.http, chosen)

            def payloads() -> Iterator[dict[str, Any]]:
                taken = 0
                for page in loyale.pages(filters=BACKFILL_FILTERS, sorts=BACKFILL_SORTS):
                    for raw in page.customers:
                        if not all_customers and taken >= sample:
                            return
                        taken += 1
                        yield loyale.snapshot(raw)

            try:
                items = list(preview(rt.klaviyo(chosen.id), policy, payloads(), region=chosen.default_phone_region))
            except (TenantFatalError, LoyaleRouteMissing, RetryableError) as exc:
                raise ctx.fail(f"{exc}; nothing was written") from None
        counts = Counter(item.plan.outcome.value for item in items)
        settings = {"tenant": chosen.id, "merge_customers": policy.merge_customers,
                    "existing_profiles": policy.existing_profiles, "customers": len(items)}
        if as_json:
            sys.stdout.write(json.dumps({
                "settings": settings, "counts": dict(counts),
                "customers": [{"customer_id": i.customer_id, "outcome": i.plan.outcome.value, "reason": i.plan.reason,
                               "warnings": i.warnings, "changes": i.rows()} for i in items],
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
        with ctx.runtime() as rt:
            entries = rt.store.journal(run)
            source = rt.store.run(run)
            # The journal outlives the run's report (SYNC_JOURNAL_RETENTION_DAYS) and names its tenant.
            tenant = source.tenant if source is not None else entries[0]["tenant"] if entries else None
            if tenant is None:
                raise ctx.fail(f"no run {run!r} in Redis (a typo, or older than the retention period)")
            if tenant not in rt.tenants:
                raise ctx.fail(f"run {run} belongs to tenant {tenant!r}, which is not configured")
            journal = group_journal(entries)
            klaviyo = rt.klaviyo(tenant)
            undo_run = None if dry_run else rt.store.create_run(tenant, "undo", source=run)
            if undo_run:
                rt.store.mark_enqueued(undo_run, [e[0]["customer_id"] for e in journal.values()])
            token = current_run.set(undo_run)
            counts: Counter[str] = Counter()
            try:
                for profile_id, entries in journal.items():
                    found = klaviyo.find_one("id", profile_id)
                    plan = plan_undo(entries, found)
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
                    counts[outcome.value] += 1
                    if dry_run:
                        ctx.console.print(f"{plan.customer_id} ({profile_id}): would be {outcome.value} — {reason}")
                    elif undo_run:
                        rt.store.record_outcome(run_id=undo_run, tenant=tenant, customer_id=plan.customer_id,
                                                outcome=outcome, reason=reason, profile_id=profile_id)
            except (TenantFatalError, RetryableError) as exc:
                raise ctx.fail(f"{exc}; run `loyale-sync undo {run}` again: values already restored are "
                               "recognised and not written twice") from None
            finally:
                current_run.reset(token)
            if dry_run:
                ctx.console.print(f"dry run: {dict(counts)}; nothing was written")
                return
            rt.store.finish_producing(undo_run, len(journal))
            info = rt.store.run(undo_run)
            ctx.console.print(f"undo run [bold]{undo_run}[/] of {run}")
            if info is not None:
                ctx.console.print(outcome_table(info))
