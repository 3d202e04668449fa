"""`loyale-sync fakes` and `loyale-sync demo`: the product on one machine, without real accounts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from rich.table import Table

from cli import context as cli_context
from cli.context import console, fail
from cli.preview_undo import preview_scheme, undo_run
from cli.render import short, wait_for_run
from fakes.klaviyo import AccountSpec, FakeKlaviyoConfig, KeySpec, Knobs
from fakes.klaviyo import create_app as klaviyo_app
from fakes.klaviyo.config import realistic_knobs
from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.loyale import FakeLoyaleConfig, SchemeConfig
from fakes.loyale import create_app as loyale_app
from fakes.loyale_control import FakeLoyaleControl
from fakes.processes import RedisServer, WorkerProcess, sync_env, write_tenants_file
from fakes.serving import ServerProcess
from producers.backfill import run_backfill
from worker.merge import ExistingProfiles, Policy
from worker.outcomes import Outcome
from worker.runtime import Runtime
from worker.store import RunInfo

if TYPE_CHECKING:
    from rich.progress import Progress

DEMO_TENANT = "demo"


def sample(customer: dict[str, Any]) -> str:
    keep = ("id", "email", "firstName", "lastName", "areaCode", "mobileNumber", "marketingSub", "updatedDate",
            "balance", "Levels", "tags")
    return json.dumps({k: customer.get(k) for k in keep}, ensure_ascii=False, indent=2)


def klaviyo_knobs(realistic: bool, time_scale: float | None, knobs: list[str]) -> Knobs:
    """The fake Klaviyo's startup knobs from `--realistic`, `--time-scale` and `--knob NAME=VALUE`s."""
    changes: dict[str, Any] = {}
    if realistic or time_scale is not None:
        changes.update(realistic_knobs(1.0 if time_scale is None else time_scale))
    for item in knobs:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--knob {item!r}: expected NAME=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        changes[name.strip()] = value
    return Knobs().updated(changes)


def serve_fakes(loyale_port: int, klaviyo_port: int, customers: int, klaviyo_key: str | None, seed: int,
                knobs: Knobs | None = None) -> None:
    """Both fakes in this process until Ctrl-C."""
    key = klaviyo_key or "pk_" + secrets.token_hex(17)
    scheme = SchemeConfig(customers=customers, seed=seed)
    lapp = loyale_app(FakeLoyaleConfig(schemes=[scheme]))
    kapp = klaviyo_app(FakeKlaviyoConfig(accounts=[AccountSpec(keys=[KeySpec(key=key)])], knobs=knobs or Knobs()))
    state = lapp.state.fake.scheme(scheme.scheme_id)
    loyale_url, klaviyo_url = f"http://127.0.0.1:{loyale_port}", f"http://127.0.0.1:{klaviyo_port}"
    console.print(f"[bold]fake Loyale[/]  {loyale_url}  ({customers} customers)")
    console.print(f"  scheme id       {scheme.scheme_id}")
    console.print(f"  admin email     {scheme.admin_email}")
    console.print(f"  admin password  {scheme.admin_password}")
    console.print(f"[bold]fake Klaviyo[/] {klaviyo_url}")
    console.print(f"  private key     {key}")
    changed = {k: v for k, v in kapp.state.fake.knobs.as_dict().items() if Knobs().as_dict()[k] != v}
    if changed:
        console.print("  knobs           " + ", ".join(f"{k}={v}" for k, v in changed.items()), markup=False,
                      highlight=False)
    if state is not None and state.customers:
        console.print("[bold]a sample customer[/] (GET /api/Customer/{id}):")
        console.print(sample(next(iter(state.customers.values()))), markup=False)
    console.print("\nPoint the sync at them with:")
    for name, value in (("TENANT_LOYALE_BASE_URL", loyale_url), ("TENANT_LOYALE_SCHEME_ID", scheme.scheme_id),
                        ("TENANT_LOYALE_ADMIN_EMAIL", scheme.admin_email),
                        ("TENANT_LOYALE_ADMIN_PASSWORD", scheme.admin_password),
                        ("TENANT_KLAVIYO_BASE_URL", klaviyo_url), ("TENANT_KLAVIYO_PRIVATE_KEY", key)):
        console.print(f"  export SYNC_{name}={value}", markup=False, highlight=False)
    console.print("Inspect with GET /_fake/profiles (Klaviyo) and /_fake/schemes (Loyale). Ctrl-C stops both.")

    async def both() -> None:
        servers = [uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
                   for app, port in ((lapp, loyale_port), (kapp, klaviyo_port))]
        await asyncio.gather(*(s.serve() for s in servers))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(both())


#: The demo's fake Klaviyo: realistic, with its durations scaled so that a bulk job takes about a second.
DEMO_TIME_SCALE = 0.03
#: The demo's scheme: a fixed id, so that with `--seed 1` every demo shows the same customers.
DEMO_SCHEME_ID = "0de70000-0000-4000-8000-000000000001"
#: Names a pre-existing Klaviyo profile carries instead of the customer's own.
KLAVIYO_NAMES = ("Alex", "Sam", "Robin", "Charlie", "Jo", "Kim")
#: Every how many customers the demo puts into Klaviyo before the first run.
SEEDED_EVERY = 8
#: How many profiles the demo shows before → after.
SHOWN_PROFILES = 3
#: Profile fields shown before → after: (column, path in the profile's attributes).
SHOWN_FIELDS = (("first name", "first_name"), ("phone", "phone_number"), ("points", "properties.LoyalePointBalance"),
                ("FavouriteColour", "properties.FavouriteColour"))


def seed_existing_profiles(customers: list[dict[str, Any]], klaviyo: FakeKlaviyoControl) -> dict[str, dict[str, Any]]:
    """Put every SEEDED_EVERY-th customer with a usable email into Klaviyo already, as a brand's Klaviyo holds
    them: another first name, a points balance of 0, no phone, and a property of the brand's own.
    Returns email -> the Loyale customer."""
    from fakes.klaviyo.profiles import is_valid_email

    seeded: dict[str, dict[str, Any]] = {}
    profiles = []
    for index, customer in enumerate(customers):
        email = (customer.get("email") or "").strip().lower()
        if index % SEEDED_EVERY or not is_valid_email(email) or email in seeded:
            continue
        names = [n for n in KLAVIYO_NAMES if n != customer.get("firstName")]
        seeded[email] = customer
        profiles.append({"email": email, "first_name": names[index % len(names)],
                         "last_name": customer.get("lastName"),
                         "properties": {"FavouriteColour": "blue", "LoyalePointBalance": 0}})
    klaviyo.seed_profiles(profiles)
    return seeded


def _value(profile: dict[str, Any] | None, path: str) -> Any:
    value: Any = (profile or {}).get("attributes") or {}
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _profiles_by_email(klaviyo: FakeKlaviyoControl) -> dict[str, dict[str, Any]]:
    return {p["attributes"]["email"].lower(): p for p in klaviyo.profiles() if p["attributes"].get("email")}


def _loyale_value(customer: dict[str, Any], column: str) -> Any:
    """What Loyale holds for a shown field, as Loyale holds it (the phone before normalisation)."""
    if column == "first name":
        return customer.get("firstName")
    if column == "phone":
        return " ".join(p for p in (customer.get("areaCode"), customer.get("mobileNumber")) if p) or None
    if column == "points":
        return (customer.get("balance") or {}).get("pointsValue")
    return None


def _progress(label: str) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(f"   {label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def _configure(workdir: str, redis_url: str, tenant: dict[str, Any]) -> dict[str, str]:
    """Write the demo's tenants file and point this process at it, as an operator's shell would be
    (the commands' own code then runs here unchanged); returns the environment for a worker."""
    import os

    from worker.settings import get_settings

    tenants_file = write_tenants_file({DEMO_TENANT: tenant}, directory=workdir)
    env = sync_env(redis_url, tenants_file)
    for name in ("SYNC_REDIS_URL", "SYNC_TENANTS_FILE"):
        os.environ[name] = env[name]
    get_settings.cache_clear()
    return env


def _start_worker(env: dict[str, str], processes: list[Any], workdir: str, label: str) -> WorkerProcess:
    number = sum(isinstance(p, WorkerProcess) for p in processes) + 1
    with console.status(f"   starting a Celery worker ({label})…"):
        worker = WorkerProcess.backfill(env, name="demo", log_path=Path(workdir) / f"worker-{number}.log").start()
        processes.append(worker)
        worker.wait_ready()
    return worker


def _backfill(rt: Runtime, label: str) -> RunInfo:
    from worker.app import app as celery_app  # built from this process's settings, now the demo's

    tenant = rt.tenants[DEMO_TENANT]
    loyale_client = cli_context.loyale_client(rt.http, tenant)
    with _progress(f"enqueue ({label})") as bar:
        task = bar.add_task("enqueue", total=None)
        produced = run_backfill(app=celery_app, store=rt.store, loyale=loyale_client, tenant=tenant.id,
                                max_in_flight=rt.settings.max_queued_per_tenant,
                                on_progress=lambda n, total: bar.update(task, completed=n, total=total))
    return wait_for_run(rt.store, produced.run_id, console=console)


def _preview(rt: Runtime, policy: Policy, total: int, label: str) -> Counter[str]:
    with _progress(f"preview ({label})") as bar:
        task = bar.add_task("preview", total=total)
        items = preview_scheme(rt, rt.tenants[DEMO_TENANT], policy,
                               on_progress=lambda n: bar.update(task, completed=n))
    return Counter(item.plan.outcome.value for item in items)


def side_by_side(columns: dict[str, dict[str, int]]) -> Table:
    table = Table(title="customers per outcome: the same scheme and Klaviyo account, merge off then on")
    table.add_column("outcome", no_wrap=True)
    for name in columns:
        table.add_column(name, justify="right")
    for outcome in Outcome:
        if any(counts.get(outcome.value) for counts in columns.values()):
            table.add_row(outcome.value, *(str(c.get(outcome.value, 0)) for c in columns.values()))
    table.add_row("[bold]total[/]", *(f"[bold]{sum(c.values())}[/]" for c in columns.values()))
    return table


def pick_profiles(seeded: dict[str, dict[str, Any]], after_off: dict[str, dict[str, Any]],
                  after_on: dict[str, dict[str, Any]]) -> list[str]:
    """Emails of seeded customers the two modes treated differently (merge off kept Klaviyo's first name,
    merge on wrote Loyale's): one whose phone merge on filled, one whose phone Klaviyo refused for its
    region, then any other, preferring customers with points (their balance shows the overwrite too)."""
    differ = [e for e, c in seeded.items() if _value(after_off.get(e), "first_name") != c.get("firstName")
              and _value(after_on.get(e), "first_name") == c.get("firstName")]
    differ.sort(key=lambda e: not _loyale_value(seeded[e], "points"))
    filled = [e for e in differ if _value(after_on.get(e), "phone_number")]
    refused = [e for e in differ if not _value(after_on.get(e), "phone_number")
               and (seeded[e].get("areaCode") or "").lstrip("+") == "39"]
    picks: list[str] = []
    for group in (filled, refused, differ):
        for email in group:
            if len(picks) < SHOWN_PROFILES and email not in picks:
                picks.append(email)
                if group is not differ:
                    break
    return picks


def profile_table(email: str, customer: dict[str, Any], states: dict[str, dict[str, Any] | None]) -> Table:
    table = Table(title=email)
    table.add_column("", no_wrap=True)
    for column, _ in SHOWN_FIELDS:
        table.add_column(column)
    table.add_row("Loyale", *(short(_loyale_value(customer, column), 20) for column, _ in SHOWN_FIELDS))
    for name, profile in states.items():
        table.add_row(name, *(short(_value(profile, path), 20) for _, path in SHOWN_FIELDS))
    return table


#: Seconds of Loyale's clock between the demo customer's loyalty facts: Klaviyo keeps an event's time to the
#: second, so each shows in its own second, in Loyale's order.
EVENT_STEP_S = 5


def loyalty_activity(loyale: FakeLoyaleControl, scheme: dict[str, Any], customer: dict[str, Any]) -> str:
    """The demo customer earns points, reaches a level they do not hold, is given a coupon and uses it
    (each in its own second of Loyale's clock); returns the level's name."""
    scheme_id, cid = scheme["scheme_id"], customer["id"]
    held = {lv.get("levelId") for lv in customer.get("Levels") or [] if isinstance(lv, dict)}
    level = next(lv for lv in reversed(scheme["levels"]) if lv["id"] not in held)   # the highest not held
    loyale.advance_clock(EVENT_STEP_S)
    loyale.earn(scheme_id, cid, 250, value=25.0, outlet="Valletta", external_ref="ORDER-1001")
    loyale.advance_clock(EVENT_STEP_S)
    loyale.set_levels(scheme_id, cid, [level["id"]])
    loyale.advance_clock(EVENT_STEP_S)
    coupon = loyale.issue_coupon(scheme_id, cid, name="10% off your next visit")
    loyale.advance_clock(EVENT_STEP_S)
    loyale.use_coupon(scheme_id, coupon["id"])
    return str(level["name"])


def events_table(email: str, held: list[dict[str, Any]]) -> Table:
    """The events Klaviyo holds for the demo customer's profile, in time order."""
    table = Table(title=f"loyalty events in Klaviyo for {email}")
    for column in ("event (metric)", "time (Loyale's, to the second)", "properties"):
        table.add_column(column)
    shown = ("Points", "Points Balance", "Outlet", "Reference", "Level", "Coupon Name", "Uses Left")
    for event in held:
        properties = ", ".join(f"{k}: {v}" for k, v in event["properties"].items() if k in shown)
        table.add_row(event["metric"], event["time"], short(properties, 70))
    return table


def _events(rt: Runtime, loyale: FakeLoyaleControl, klaviyo: FakeKlaviyoControl, scheme: dict[str, Any],
            email: str, env: dict[str, str], processes: list[Any], workdir: str) -> None:
    """Step 8: one customer's loyalty activity in Loyale, caught up by the events' pass (as `loyale-sync
    incremental` runs it), synced by a worker of the incremental queue and sent to Klaviyo as events."""
    from producers.event_catchup import run_event_catch_up
    from producers.watermarks import Watermarks
    from worker.app import app as celery_app

    customer = next(c for c in loyale.customers(scheme["scheme_id"]) if (c.get("email") or "").lower() == email)
    console.print(f"[bold]8.[/] loyalty events: {email} earns 250 points, reaches a level, is given a coupon and "
                  "uses it in Loyale; the events' catch-up pass reads them (`loyale-sync incremental` runs it after "
                  "each pass; webhooks bring them at once) and a worker sends them after the profile sync")
    level = loyalty_activity(loyale, scheme, customer)
    with console.status("   starting a worker for the incremental queue…"):
        worker = WorkerProcess(env, queues="sync.incremental,sync.producers", name="demo-events",
                               log_path=Path(workdir) / "worker-events.log").start()
        processes.append(worker)
        worker.wait_ready()
    caught = run_event_catch_up(app=celery_app, store=rt.store, watermarks=Watermarks(rt.redis),
                                loyale=cli_context.loyale_client(rt.http, rt.tenants[DEMO_TENANT]),
                                tenant=DEMO_TENANT, overlap_s=rt.settings.incremental_overlap_s)
    console.print(f"   catch-up: {caught.read} transactions and coupons read, {caught.events} events for "
                  f"{caught.customers} customer(s); the level ({level}) comes from the profile sync itself",
                  highlight=False)
    deadline = time.monotonic() + 120
    while len(settled := rt.store.event_history(DEMO_TENANT, customer["id"])) < 4:   # points, level, coupon x2
        if time.monotonic() > deadline:
            raise fail(f"the events were not sent within 120 s; the worker's log: {workdir}/worker-events.log")
        time.sleep(0.2)
    profile_id = next((e.get("profile_id") for e in settled if e.get("profile_id")), None)
    deadline = time.monotonic() + 30
    while len(held := klaviyo.events(profile_id=profile_id)) < len(settled) and time.monotonic() < deadline:
        time.sleep(0.2)   # Klaviyo processes an event a moment after accepting it
    console.print(events_table(email, held))
    outcomes = Counter(e["outcome"] for e in settled)
    console.print("   " + ", ".join(f"{n} {o}" for o, n in outcomes.most_common())
                  + f" (loyale-sync customer {customer['id']} shows each); no event names an email or a phone, "
                  "so none can create a profile for a customer who did not opt in", highlight=False)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_demo(customers: int, existing_profiles: ExistingProfiles, keep_running: bool,
             time_scale: float = DEMO_TIME_SCALE) -> None:
    started = time.monotonic()
    # Stopped by SIGTERM (a supervisor, a test's timeout) as by Ctrl-C: the finally below stops everything.
    signal.signal(signal.SIGTERM, _terminated)
    workdir = tempfile.mkdtemp(prefix="loyale-sync-demo-")
    key = "pk_" + secrets.token_hex(17)
    processes: list[Any] = []
    off_label = "off" if existing_profiles == "skip" else "off, fill_empty"
    try:
        console.print("[bold]1.[/] starting a private Redis, a fake Loyale and a fake Klaviyo…")
        try:
            redis_server = RedisServer().start()
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        processes.append(redis_server)
        loyale_proc = ServerProcess("fakes.loyale", args=[
            "--customers", str(customers), "--seed", "1", "--scheme-id", DEMO_SCHEME_ID],
                                    quiet=True).start()
        processes.append(loyale_proc)
        klaviyo_proc = ServerProcess("fakes.klaviyo", quiet=True, args=[
            "--key", key, "--realistic", "--time-scale", str(time_scale)]).start()
        processes.append(klaviyo_proc)
        loyale, klaviyo = FakeLoyaleControl(loyale_proc.url), FakeKlaviyoControl(klaviyo_proc.url)
        knobs = klaviyo.knobs()
        scheme = loyale.schemes()[0]
        all_customers = loyale.customers(scheme["scheme_id"])
        seeded = seed_existing_profiles(all_customers, klaviyo)
        console.print(f"   Loyale has {len(all_customers)} customers; {len(seeded)} of them are already in Klaviyo, "
                      "with another first name, 0 points, no phone and a FavouriteColour of the brand's own")
        if time_scale:
            console.print(f"   the fake Klaviyo is realistic at time scale {time_scale:g}: a bulk job takes "
                          f"{knobs['job_seconds']:g} s + {knobs['job_seconds_per_1000_rows']:g} s per 1,000 rows, "
                          f"lists lag writes by {knobs['read_lag_s']:g} s, suppressions by "
                          f"{knobs['suppression_lag_s']:g} s, phones of "
                          f"{', '.join(knobs['unsupported_phone_regions'])} are refused, and a bulk row joining two "
                          "profiles merges them", highlight=False)
        else:
            console.print("   the fake Klaviyo is kind (time scale 0): jobs end at once, nothing lags or is refused")
        before = _profiles_by_email(klaviyo)
        tenant = {"loyale_base_url": loyale.base_url, "loyale_scheme_id": scheme["scheme_id"],
                  "loyale_admin_email": scheme["admin_email"], "loyale_admin_password": scheme["admin_password"],
                  "klaviyo_base_url": klaviyo.base_url, "klaviyo_private_key": key,
                  "merge_customers": False, "existing_profiles": existing_profiles}
        env = _configure(workdir, redis_server.url, tenant)
        worker = _start_worker(env, processes, workdir, f"merge customers {off_label}")
        columns: dict[str, dict[str, int]] = {}

        with cli_context.runtime() as rt:
            console.print(f"[bold]2.[/] preview (loyale-sync preview --all): what a backfill with merge "
                          f"customers {off_label} would do; writes nothing")
            columns[f"preview {off_label}"] = _preview(rt, Policy(False, existing_profiles), len(all_customers),
                                                        off_label)
            console.print(f"[bold]3.[/] backfill with merge customers {off_label} (Klaviyo is the source of truth)")
            run_off = _backfill(rt, off_label)
            columns[f"backfill {off_label}"] = dict(run_off.counts)
            after_off = _profiles_by_email(klaviyo)
            console.print("[bold]4.[/] preview with merge customers on, against Klaviyo as it is now")
            columns["preview on"] = _preview(rt, Policy(True, existing_profiles), len(all_customers), "on")

        console.print("[bold]5.[/] the brand turns Merge Customers on (Loyale is the source of truth): the tenants "
                      "file changes and the worker restarts")
        with console.status("   stopping the worker…"):
            worker.stop()
            processes.remove(worker)
        env = _configure(workdir, redis_server.url, {**tenant, "merge_customers": True})
        worker = _start_worker(env, processes, workdir, "merge customers on")
        with cli_context.runtime() as rt:
            run_on = _backfill(rt, "on")
            columns["backfill on"] = dict(run_on.counts)
            after_on = _profiles_by_email(klaviyo)
            console.print(side_by_side(columns))
            console.print(f"   runs: {run_off.id} ({run_off.duration_s:.1f} s), {run_on.id} ({run_on.duration_s:.1f} s)"
                          "; the merge-on run starts where the merge-off run ended, so the customers it created "
                          "are now unchanged", highlight=False)

            picks = pick_profiles(seeded, after_off, after_on)

            console.print(f"[bold]6.[/] undo the merge-on run (loyale-sync undo {run_on.id}): put back what it "
                          "overwrote, unless it changed since")
            with _progress("undo") as bar:
                task = bar.add_task("undo", total=None)
                undone = undo_run(rt, run_on.id, on_start=lambda n: bar.update(task, total=n),
                                  on_profile=lambda _: bar.advance(task))
            counts = ", ".join(f"{n} {o}" for o, n in undone.counts.most_common()) or "nothing to restore"
            console.print(f"   undo run {undone.run_id} of {run_on.id}: {counts}"
                          + (f", {undone.info.duration_s:.1f} s" if undone.info is not None else ""), highlight=False)
            after_undo = _profiles_by_email(klaviyo)

        console.print(f"[bold]7.[/] {len(picks)} profiles that were in Klaviyo before, where the two modes differ:")
        for email in picks:
            console.print(profile_table(email, seeded[email], {
                "Klaviyo before": before.get(email), f"after merge {off_label}": after_off.get(email),
                "after merge on": after_on.get(email), "after undo": after_undo.get(email)}))
        console.print("   merge off leaves Klaviyo's non-empty values alone; merge on writes Loyale's and fills "
                      "empty fields (a phone Klaviyo refuses for its region is left out, the rest still syncs); "
                      "the undo puts back what was overwritten (a filled field had no value to put back); "
                      "FavouriteColour is not a Loyale field: never touched")
        console.print(f"   profiles Klaviyo merged during the demo: {len(klaviyo.merges())}", highlight=False)
        if picks:
            with cli_context.runtime() as rt:
                _events(rt, loyale, klaviyo, scheme, picks[0], env, processes, workdir)
        console.print(f"done in {time.monotonic() - started:.1f}s")
        if keep_running:
            console.print("\nStill running; in another shell:")
            for name in ("SYNC_REDIS_URL", "SYNC_TENANTS_FILE"):
                console.print(f"  export {name}={env[name]}", markup=False, highlight=False)
            console.print(f"  loyale-sync report {run_on.id}\n  loyale-sync sync-one <customer id> --dry-run\n"
                          f"(the worker's log is in {workdir}) "
                          "Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    finally:
        for process in reversed(processes):
            process.stop()
        if processes and isinstance(processes[0], RedisServer):
            processes[0].cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
