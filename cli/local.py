"""`loyale-sync fakes` and `loyale-sync demo`: the product on one machine, without real accounts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import tempfile
import time
from typing import Any

import uvicorn

from cli.context import console, fail
from cli.render import outcome_table, short, wait_for_run
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
from worker.app import create_app
from worker.runtime import Runtime
from worker.settings import Settings

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


def seed_existing_profiles(loyale: FakeLoyaleControl, klaviyo: FakeKlaviyoControl, scheme_id: str,
                           every: int = 3) -> list[dict[str, Any]]:
    """Put every `every`-th customer into Klaviyo already, with data that conflicts with Loyale's."""
    seeds = []
    for index, customer in enumerate(loyale.customers(scheme_id)):
        email = (customer.get("email") or "").strip().lower()
        if index % every or "@" not in email:
            continue
        seeds.append({"email": email, "first_name": f"Klaviyo-{index}", "properties": {
            "FavouriteColour": "blue", "LoyalePointBalance": 0}, "_customer": customer["id"]})
    unique = list({s["email"]: s for s in seeds}.values())
    klaviyo.seed_profiles([{k: v for k, v in s.items() if not k.startswith("_")} for s in unique])
    return unique


def run_demo(customers: int, merge_customers: bool, existing_profiles: str, keep_running: bool) -> None:
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="loyale-sync-demo-")
    key = "pk_" + secrets.token_hex(17)
    processes: list[Any] = []
    try:
        console.print("[bold]1.[/] starting a private Redis, fake Loyale and fake Klaviyo…")
        try:
            redis_server = RedisServer().start()
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        processes.append(redis_server)
        loyale_proc = ServerProcess("fakes.loyale", args=["--customers", str(customers), "--seed", "1"],
                                    quiet=True).start()
        processes.append(loyale_proc)
        klaviyo_proc = ServerProcess("fakes.klaviyo", args=["--key", key], quiet=True).start()
        processes.append(klaviyo_proc)
        loyale, klaviyo = FakeLoyaleControl(loyale_proc.url), FakeKlaviyoControl(klaviyo_proc.url)
        scheme = loyale.schemes()[0]
        seeded = seed_existing_profiles(loyale, klaviyo, scheme["scheme_id"])
        console.print(f"   Loyale has {customers} customers; {len(seeded)} of them are already in Klaviyo "
                      "with different data")

        tenants_file = write_tenants_file({DEMO_TENANT: {
            "loyale_base_url": loyale.base_url, "loyale_scheme_id": scheme["scheme_id"],
            "loyale_admin_email": scheme["admin_email"], "loyale_admin_password": scheme["admin_password"],
            "klaviyo_base_url": klaviyo.base_url, "klaviyo_private_key": key,
            "merge_customers": merge_customers, "existing_profiles": existing_profiles,
        }}, directory=workdir)
        env = sync_env(redis_server.url, tenants_file)
        console.print(f"[bold]2.[/] starting a Celery worker (merge customers: {'on' if merge_customers else 'off'}"
                      + ("" if merge_customers else f", existing profiles: {existing_profiles}") + ")…")
        worker = WorkerProcess.backfill(env, name="demo").start()
        processes.append(worker)
        worker.wait_ready()

        settings = Settings(redis_url=redis_server.url, tenants_file=tenants_file)
        rt = Runtime.build(settings)
        from producers.loyale import LoyaleClient

        tenant = rt.tenants[DEMO_TENANT]
        loyale_client = LoyaleClient(rt.http, tenant=tenant.id, base_url=tenant.loyale_base_url,
                                     scheme_id=tenant.loyale_scheme_id, admin_email=tenant.loyale_admin_email,
                                     admin_password=tenant.loyale_admin_password)
        console.print("[bold]3.[/] backfill: one task per customer…")
        produced = run_backfill(app=create_app(settings), store=rt.store, loyale=loyale_client, tenant=tenant.id)
        info = wait_for_run(rt.store, produced.run_id, console=console)
        console.print(outcome_table(info))

        if seeded:
            first = seeded[0]
            after = next(p for p in klaviyo.profiles() if p["attributes"].get("email") == first["email"])
            console.print(f"[bold]4.[/] an existing Klaviyo profile ({first['email']}), before → after:")
            props = after["attributes"].get("properties") or {}
            name = short(after["attributes"].get("first_name"))
            console.print(f"   first_name          {first['first_name']} → {name}")
            console.print(f"   LoyalePointBalance  0 → {short(props.get('LoyalePointBalance'))}")
            colour = short(props.get("FavouriteColour"))
            console.print(f"   FavouriteColour     blue → {colour} (not ours: never touched)")
        problems = rt.store.problems(produced.run_id)
        if problems:
            console.print(f"[bold]5.[/] {len(problems)} customers need a look, e.g.:")
            for cid, entry in list(problems.items())[:5]:
                console.print(f"   {cid}: {entry['outcome']} — {short(entry['reason'], 100)}", markup=False)
        console.print(f"done in {time.monotonic() - started:.1f}s. Try the other merge modes: "
                      "loyale-sync demo --merge-customers / --existing-profiles fill_empty")
        if keep_running:
            console.print("\nStill running; in another shell:")
            for name in ("SYNC_REDIS_URL", "SYNC_TENANTS_FILE"):
                console.print(f"  export {name}={env[name]}", markup=False, highlight=False)
            console.print("  loyale-sync sync-one <customer id> --dry-run\nCtrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        rt.close()
    finally:
        for process in reversed(processes):
            process.stop()
        if processes and isinstance(processes[0], RedisServer):
            processes[0].cleanup()
