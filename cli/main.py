"""`loyale-sync`: the operator's command line."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli import context as ctx
from cli.context import TenantOpt
from cli.render import outcome_table, plan_table, wait_for_run
from producers.backfill import run_backfill
from producers.loyale import CustomerNotFound, LoyaleRouteMissing
from worker.errors import RetryableError, TenantFatalError
from worker.logs import configure_logging
from worker.messages import QUEUE_BACKFILL, QUEUE_INCREMENTAL, snapshot_json
from worker.outcomes import Outcome
from worker.runtime import Runtime, current_run
from worker.settings import TenantConfig
from worker.sync import plan_customer, sync_customer

app = typer.Typer(
    help="Keep Klaviyo profiles in step with Loyale loyalty customers. Every command has --help.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)

@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show info logs.")] = False) -> None:
    """Logs go to stderr; commands print their results to stdout."""
    settings = ctx.settings()
    configure_logging(settings.log_json, "INFO" if verbose else "WARNING")


@app.command()
def backfill(
    tenant: TenantOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until every customer has an outcome.")] = False,
    per_customer: Annotated[bool, typer.Option(
        "--per-customer", help="Sync each customer with its own Klaviyo requests (the incremental queue) "
                               "instead of in batches; for small schemes and comparisons.")] = False,
) -> None:
    """Enqueue every customer of the tenant's Loyale scheme, one task each, as a new run."""
    with ctx.runtime() as rt:
        chosen = ctx.pick_tenant(rt.tenants, tenant)
        _produce(rt, chosen, rt.store.create_run(chosen.id, "backfill"), wait=wait, per_customer=per_customer)


@app.command()
def resume(
    run: Annotated[str, typer.Argument(help="The backfill run to complete.")],
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="The run's tenant, needed when Redis lost "
                                               "the run's record (default: read from the run).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until every customer has an outcome.")] = False,
    per_customer: Annotated[bool, typer.Option("--per-customer", help="As for backfill.")] = False,
) -> None:
    """Re-enqueue every customer of a backfill run that has no outcome yet (after Redis lost its queue,
    say). Customers already synced are not enqueued again; a customer enqueued twice is harmless."""
    with ctx.runtime() as rt:
        info = rt.store.run(run)
        if info is not None and not info.tenant:
            info = None     # only counters written after Redis lost the run's record
        if info is None and tenant is None:
            raise ctx.fail(f"Redis has no record of run {run!r} (a typo, or Redis lost it): name its tenant with "
                           "--tenant to resume it anyway")
        chosen = ctx.pick_tenant(rt.tenants, tenant or (info.tenant if info else None))
        if info is not None and info.tenant != chosen.id:
            raise ctx.fail(f"run {run} belongs to tenant {info.tenant}, not {chosen.id}")
        _produce(rt, chosen, run, wait=wait, per_customer=per_customer, resume=True)


def _produce(rt: Runtime, chosen: TenantConfig, run_id: str, *, wait: bool, per_customer: bool,
             resume: bool = False) -> None:
    from worker.app import app as celery_app

    loyale = ctx.loyale_client(rt.http, chosen)
    ctx.console.print(f"run [bold]{run_id}[/]: reading customers of {chosen.id} from Loyale…")
    bar = Progress(TextColumn("enqueued"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=ctx.console, transient=True)
    task = bar.add_task("enqueue", total=None)
    try:
        bar.start()
        produced = run_backfill(app=celery_app, store=rt.store, loyale=loyale, tenant=chosen.id, run_id=run_id,
                                queue=QUEUE_INCREMENTAL if per_customer else QUEUE_BACKFILL,
                                max_in_flight=rt.settings.max_queued_per_tenant, resume=resume,
                                on_progress=lambda n, total: bar.update(task, completed=n, total=total))
    except (TenantFatalError, LoyaleRouteMissing) as exc:
        raise ctx.fail(str(exc)) from None
    except RetryableError as exc:
        raise ctx.fail(f"Loyale kept failing while paging ({exc}); run `loyale-sync resume {run_id}` later: "
                       "it enqueues only the customers without an outcome") from None
    finally:
        bar.stop()
    ctx.console.print(f"enqueued {produced.enqueued} customers"
                      + (f" ({produced.duplicates} {'already synced' if resume else 'duplicates from paging'} "
                         "skipped)" if produced.duplicates else ""))
    if not wait:
        ctx.console.print(f"follow it with: loyale-sync status {run_id}")
        return
    info = wait_for_run(rt.store, run_id, console=ctx.console)
    ctx.console.print(outcome_table(info))


@app.command("sync-one")
def sync_one(
    customer_id: Annotated[str, typer.Argument(help="The Loyale customer id.")],
    tenant: TenantOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only: read both systems, write nothing.")] = False,
) -> None:
    """Sync one customer now, in this process, and show the plan, the field changes and the outcome."""
    with ctx.runtime() as rt:
        chosen = ctx.pick_tenant(rt.tenants, tenant)
        loyale = ctx.loyale_client(rt.http, chosen)
        try:
            payload = snapshot_json(loyale.snapshot(loyale.customer(customer_id)))
        except CustomerNotFound:
            raise ctx.fail(f"Loyale has no customer {customer_id!r} in scheme {chosen.loyale_scheme_id}") from None
        except (TenantFatalError, LoyaleRouteMissing, RetryableError) as exc:
            raise ctx.fail(str(exc)) from None
        deps = rt.deps(chosen.id)
        try:
            if dry_run:
                _, plan, warnings = plan_customer(deps, payload)
                ctx.console.print(plan_table(plan))
                for warning in warnings:
                    ctx.console.print(f"[yellow]warning:[/] {warning}")
                ctx.console.print(f"dry run: would end as [bold]{plan.outcome.value}[/]; nothing was written")
                return
            run_id = rt.store.create_run(chosen.id, "sync-one", customer=customer_id)
            rt.store.mark_enqueued(run_id, [customer_id])
            token = current_run.set(run_id)
            try:
                result = sync_customer(deps, run_id, payload)
            finally:
                current_run.reset(token)
            rt.store.finish_producing(run_id, 1)
        except (TenantFatalError, RetryableError) as exc:
            raise ctx.fail(f"{exc} (nothing recorded; try again)") from None
        if result.plan is not None:
            ctx.console.print(plan_table(result.plan))
        for warning in result.warnings:
            ctx.console.print(f"[yellow]warning:[/] {warning}")
        style = "red" if result.outcome in (Outcome.REJECTED, Outcome.CONFLICT, Outcome.INVALID) else "green"
        ctx.console.print(f"outcome: [bold {style}]{result.outcome.value}[/] — {result.reason}"
                          + (f" (Klaviyo profile {result.profile_id})" if result.profile_id else ""))


@app.command()
def fakes(
    loyale_port: Annotated[int, typer.Option(help="Port of the fake Loyale.")] = 8090,
    klaviyo_port: Annotated[int, typer.Option(help="Port of the fake Klaviyo.")] = 8091,
    customers: Annotated[int, typer.Option(help="Synthetic customers in the Loyale scheme.")] = 200,
    klaviyo_key: Annotated[str | None, typer.Option(help="Private key the fake Klaviyo accepts.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 1,
    realistic: Annotated[bool, typer.Option(
        "--realistic", help="Fake Klaviyo as unkind as the real one: bulk jobs take tens of seconds, lists lag "
        "writes, suppressions lag, Italian phones are refused, bulk rows linking two profiles merge them.")] = False,
    time_scale: Annotated[float | None, typer.Option(
        "--time-scale", min=0, help="Multiply the realistic durations (1 = Klaviyo's, 0.03 = about 1 s jobs; "
        "0 = kind). Implies --realistic.")] = None,
    knob: Annotated[list[str] | None, typer.Option(
        "--knob", metavar="NAME=VALUE", help="Set one fake Klaviyo knob (repeatable; applied after --realistic), "
        "e.g. --knob read_lag_s=2 --knob unsupported_phone_regions=IT,ES --knob job_cancel_rate=0.1. "
        "Values are JSON or plain text; names are listed by GET /_fake/knobs.")] = None,
) -> None:
    """Run the fake Loyale and fake Klaviyo on loopback with seeded data, and print how to use them."""
    from cli.local import klaviyo_knobs, serve_fakes

    try:
        knobs = klaviyo_knobs(realistic, time_scale, knob or [])
    except ValueError as exc:
        raise ctx.fail(str(exc)) from None
    serve_fakes(loyale_port, klaviyo_port, customers, klaviyo_key, seed, knobs)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Synthetic customers in the Loyale scheme.")] = 2000,
    existing_profiles: Annotated[str, typer.Option(
        help="The merge-off run: skip existing profiles, or fill_empty (set only their empty fields).")] = "skip",
    time_scale: Annotated[float, typer.Option(
        "--time-scale", min=0, help="Durations of the realistic fake Klaviyo (1 = Klaviyo's: tens of seconds per "
        "bulk job; 0.03 = about a second).")] = 0.03,
    keep_running: Annotated[bool, typer.Option(help="Leave Redis, the fakes and the worker up afterwards.")] = False,
) -> None:
    """The whole product on this machine, against a realistic fake Klaviyo: a private Redis, both fakes, a
    worker. The same scheme is previewed, backfilled with Merge Customers off, then on (outcomes side by
    side, profiles before -> after), and the merge-on run is undone. Everything is stopped at the end."""
    from cli.local import run_demo
    from worker.merge import EXISTING_PROFILES

    if existing_profiles not in EXISTING_PROFILES:
        raise ctx.fail("--existing-profiles is skip or fill_empty")
    run_demo(customers, EXISTING_PROFILES[existing_profiles], keep_running, time_scale)


@app.command()
def incremental(tenant: TenantOpt = None) -> None:
    """Run one incremental pass now: enqueue the customers changed since the last pass, then the loyalty
    events' catch-up (transactions and coupons since its watermark), for every tenant unless --tenant.
    Celery beat runs this every SYNC_INCREMENTAL_INTERVAL_S."""
    from producers.event_catchup import run_event_catch_up
    from producers.incremental import FilterIgnored, run_incremental
    from producers.watermarks import Watermarks
    from worker.app import app as celery_app

    failed = False
    with ctx.runtime() as rt:
        for chosen in ctx.selected(rt.tenants, tenant):
            try:
                result = run_incremental(app=celery_app, store=rt.store, watermarks=Watermarks(rt.redis),
                                         loyale=ctx.loyale_client(rt.http, chosen), tenant=chosen.id,
                                         overlap_s=rt.settings.incremental_overlap_s)
            except (FilterIgnored, TenantFatalError, LoyaleRouteMissing, RetryableError) as exc:
                ctx.err_console.print(f"[bold red]{chosen.id}:[/] {exc}")
                failed = True
                continue
            ctx.console.print(f"{chosen.id}: run {result.run_id}: {result.read} changed since "
                              f"{result.since.isoformat()}, {result.enqueued} enqueued; watermark "
                              f"{result.watermark.isoformat()}")
            if not chosen.events:
                continue
            try:
                caught = run_event_catch_up(app=celery_app, store=rt.store, watermarks=Watermarks(rt.redis),
                                            loyale=ctx.loyale_client(rt.http, chosen), tenant=chosen.id,
                                            overlap_s=rt.settings.incremental_overlap_s)
            except (FilterIgnored, TenantFatalError, RetryableError) as exc:
                ctx.err_console.print(f"[bold red]{chosen.id} (events):[/] {exc}")
                failed = True
                continue
            ctx.console.print(f"{chosen.id}: events: {caught.read} transactions and coupons since "
                              f"{caught.since.isoformat()}, {caught.events} events not sent yet for "
                              f"{caught.customers} customers" + (f" (run {caught.run_id})" if caught.run_id else ""))
    if failed:
        raise typer.Exit(1)


@app.command()
def webhooks(
    host: Annotated[str | None, typer.Option(help="Interface (default SYNC_WEBHOOKS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SYNC_WEBHOOKS_PORT).")] = None,
) -> None:
    """Serve the webhook intake: Loyale posts to /webhooks/loyale/<tenant's webhook_token>."""
    import uvicorn

    from producers.tasks import webhook_run_id
    from producers.webhooks import create_app
    from worker.app import app as celery_app
    from worker.messages import TASK_CUSTOMER_HINT, task_repr

    config = ctx.settings()
    all_tenants = ctx.tenants(config)
    if not any(t.webhook_token for t in all_tenants.values()):
        raise ctx.fail("no tenant has a webhook_token: set one per tenant (a long random secret) first")

    def enqueue(tenant_id: str, customer_id: str, events: list[dict[str, Any]]) -> None:
        run = webhook_run_id(tenant_id)
        kwargs = {"tenant": tenant_id, "customer_id": customer_id, "run": run, **({"events": events} if events else {})}
        celery_app.send_task(TASK_CUSTOMER_HINT, kwargs=kwargs, queue=QUEUE_INCREMENTAL,
                             kwargsrepr=task_repr(tenant_id, run, customer_id))

    uvicorn.run(create_app(all_tenants, enqueue), host=host or config.webhooks_host,
                port=port or config.webhooks_port, log_level="warning")


@app.command("subscribe-webhooks")
def subscribe_webhooks(
    url: Annotated[str, typer.Argument(help="Public base URL of `loyale-sync webhooks`, e.g. https://sync.example")],
    tenant: TenantOpt = None,
    email: Annotated[str | None, typer.Option(help="Where Loyale sends failure notices.")] = None,
) -> None:
    """Subscribe the tenant's Loyale scheme to the customer topics, pointing at the webhook intake."""
    from producers.loyale import WEBHOOK_TOPICS

    with ctx.runtime() as rt:
        for chosen in ctx.selected(rt.tenants, tenant):
            if chosen.webhook_token is None:
                ctx.err_console.print(f"{chosen.id}: no webhook_token configured, skipped")
                continue
            target = f"{url.rstrip('/')}/webhooks/loyale/{chosen.webhook_token.get_secret_value()}"
            client = ctx.loyale_client(rt.http, chosen)
            try:
                for topic in WEBHOOK_TOPICS:
                    client.subscribe(topic, f"{target}?topic={topic}", email or chosen.loyale_admin_email)
            except (TenantFatalError, LoyaleRouteMissing, RetryableError) as exc:
                raise ctx.fail(f"{chosen.id}: {exc}") from None
            ctx.console.print(f"{chosen.id}: subscribed to topics {', '.join(map(str, WEBHOOK_TOPICS))}")


from cli import preview_undo  # noqa: E402

preview_undo.register(app)

from cli import ops  # noqa: E402

ops.register(app)

from cli import verify  # noqa: E402

verify.register(app)

from cli import metrics  # noqa: E402

metrics.register(app)

from cli import flower  # noqa: E402

flower.register(app)
