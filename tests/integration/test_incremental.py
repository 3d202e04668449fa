"""Continuous sync with real processes: Celery beat (redbeat), the webhook app, workers, and both fakes.

Loyale changes customers while beat runs incremental passes and Loyale posts webhooks; in the end
every Klaviyo profile is what the merge policy says for Loyale's final state."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime
from typing import Any

import redis

from fakes.processes import BeatProcess, WebhookProcess
from producers.watermarks import Watermarks
from tests.harness import WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import Scenario, _index, build_scenario, mapped_fields, reasons
from tests.integration.test_backfill import cli, run_id_from
from worker.broker import queue_lists
from worker.merge import same
from worker.messages import QUEUE_PRODUCERS, TASK_INCREMENTAL_PASS
from worker.models import KlaviyoProfile
from worker.store import Store

APPLIED = {"created", "updated", "suppressed", "unsuppressed", "unchanged"}


def new_customer(tenant: str, index: int, rng: random.Random) -> dict[str, Any]:
    return {"email": f"{tenant}-{index}@example.com", "firstName": f"First{index}", "lastName": f"Last{index}",
            "marketingSub": rng.random() < 0.8, "pointsBalance": float(rng.randint(0, 500)), "deleted": False,
            "onHold": False}


def problems_with(scenario: Scenario, loyale, klaviyo) -> list[str]:
    """What in Klaviyo differs from the merge policy (Merge Customers on) for Loyale's current state."""
    profiles = klaviyo.profiles(account_id=scenario.account_id)
    by_email, by_xid = _index(profiles)
    found = [f"duplicate profiles for {k}" for k, g in {**by_email, **by_xid}.items() if len(g) > 1]
    for c in loyale.customers(scenario.scheme_id):
        mapped = mapped_fields(c, scenario.level_names)
        assert mapped is not None and mapped.email, c["id"]
        opted_in = c.get("marketingSub") is True and not c.get("deleted") and not c.get("onHold")
        group = by_email.get(mapped.email) or by_xid.get(c["id"])
        if not opted_in:
            if group and "USER_SUPPRESSED" not in reasons(group[0]):
                found.append(f"{c['id']}: not opted in but its profile is not suppressed")
            continue
        if not group:
            found.append(f"{c['id']}: opted in but not in Klaviyo")
            continue
        profile = KlaviyoProfile(id=group[0]["id"], attributes=group[0]["attributes"])
        wrong = [k for k, v in mapped.fields.items() if not same(profile.value(k), v)]
        if wrong or reasons(group[0]):
            found.append(f"{c['id']}: fields {wrong} differ, suppression {reasons(group[0])}")
    return found


def test_a_stream_of_changes_for_two_tenants_ends_exactly_as_the_policy_says(loyale, klaviyo, redis_url):
    rng = random.Random(71)
    scenarios = [build_scenario(loyale, klaviyo, name, customers=0, merge_customers=True) for name in ("ina", "inb")]
    tokens = {s.tenant_id: f"hook-{s.tenant_id}-{rng.getrandbits(64):x}" for s in scenarios}
    tenants = {s.tenant_id: {**s.tenant_config(), "webhook_token": tokens[s.tenant_id]} for s in scenarios}
    env = sync_env(redis_url, write_tenants_file(tenants), SYNC_INCREMENTAL_INTERVAL_S="2",
                   SYNC_INCREMENTAL_OVERLAP_S="5")
    worker = WorkerProcess(env, queues="sync.incremental,sync.producers", concurrency=3, name="inc").start()
    hooks = WebhookProcess(env).start()
    beat = BeatProcess(env).start()
    try:
        worker.wait_ready()
        hooks.wait_ready()
        # Redeliveries, no retries of failed posts, and a Loyale that fails now and then.
        loyale.set_knobs(webhook_duplicate_rate=0.3, webhook_max_retries=0, error_rate=0.05)
        subscribed = cli(env, "subscribe-webhooks", hooks.url)
        assert subscribed.returncode == 0, subscribed.stderr
        live: dict[str, list[str]] = {}
        counter = 0
        for s in scenarios:
            first = [new_customer(s.tenant_id, i, rng) for i in range(12)]
            live[s.tenant_id] = loyale.add_customers(s.scheme_id, first)
            counter += 12
        # The stream: edits, opt-outs, opt-ins, balance changes, deletions and joins, paced over several passes.
        for step in range(90):
            if step == 45:
                hooks.stop()   # webhooks lost from here on: the passes alone must catch every change
            s = scenarios[step % 2]
            ids = live[s.tenant_id]
            cid = rng.choice(ids)
            kind = rng.choice(["edit", "edit", "opt_out", "opt_in", "balance", "balance", "delete", "join"])
            if kind == "edit":
                loyale.update_customer(s.scheme_id, cid, firstName=f"Name{step}")
            elif kind == "opt_out":
                loyale.update_customer(s.scheme_id, cid, marketingSub=False)
            elif kind == "opt_in":
                loyale.update_customer(s.scheme_id, cid, marketingSub=True)
            elif kind == "balance":
                loyale.set_balance(s.scheme_id, cid, points_delta=rng.randint(1, 50))
            elif kind == "delete" and len(ids) > 6:
                loyale.action(s.scheme_id, cid, "delete")
                ids.remove(cid)
            else:
                counter += 1
                ids.extend(loyale.add_customers(s.scheme_id, [new_customer(s.tenant_id, counter, rng)]))
            time.sleep(0.1)   # pacing the stream so that it spans several passes
        # Converged: Klaviyo matches Loyale's final state for both tenants (passes and webhooks catch up).
        deadline = time.monotonic() + 90
        while (left := [p for s in scenarios for p in problems_with(s, loyale, klaviyo)]) \
                and time.monotonic() < deadline:
            time.sleep(1)
        assert left == [], f"{len(left)} problems, first: {left[:5]}\nbeat: {beat.log()[-1500:]}\n" \
                           f"worker: {worker.log()[-3000:]}\nwebhooks: {hooks.log()[-1000:]}"
        state = redis.Redis.from_url(redis_url, decode_responses=True)
        store, watermarks = Store(state), Watermarks(state)
        for s in scenarios:
            passes = [r for r in store.runs(s.tenant_id, limit=1000) if r.kind == "incremental"]
            assert len(passes) >= 5, "beat did not run the passes"
            assert watermarks.watermark(s.tenant_id) is not None
            for c in loyale.customers(s.scheme_id):
                history = store.history(s.tenant_id, c["id"])
                assert history, f"{c['id']}: never synced"
                stamps = [datetime.fromisoformat(e["updated_date"]) for e in history
                          if e["outcome"] in APPLIED and e.get("updated_date")]
                # the ledger lists the newest first: applied snapshots never go back in time
                assert stamps == sorted(stamps, reverse=True), f"{c['id']}: applied out of order"
        assert any(d["ok"] for d in loyale.deliveries()), "no webhook was delivered"
    finally:
        for process in (beat, hooks, worker):
            process.stop()


def test_a_single_change_lands_within_the_pass_interval_while_another_tenant_backfills(loyale, klaviyo, redis_url):
    klaviyo.set_knobs(rate_limit_scale=50)
    big = build_scenario(loyale, klaviyo, "big", customers=3000, merge_customers=True, seed=72)
    small = build_scenario(loyale, klaviyo, "small", customers=0, merge_customers=True)
    interval_s = 2.0
    env = sync_env(redis_url, write_tenants_file({s.tenant_id: s.tenant_config() for s in (big, small)}),
                   SYNC_INCREMENTAL_INTERVAL_S=str(interval_s), SYNC_INCREMENTAL_OVERLAP_S="5",
                   SYNC_LIMITER_RATE_SCALE="50")
    backfiller = WorkerProcess.backfill(env, name="bulk").start()
    incremental = WorkerProcess(env, queues="sync.incremental,sync.producers", concurrency=2, name="inc").start()
    beat = BeatProcess(env).start()
    store = Store(redis.Redis.from_url(redis_url, decode_responses=True))
    try:
        backfiller.wait_ready()
        incremental.wait_ready()
        [cid] = loyale.add_customers(small.scheme_id, [new_customer("small", 1, random.Random(1))
                                                       | {"marketingSub": True}], emit=False)

        def first_name() -> str | None:
            found = [p for p in klaviyo.profiles(account_id=small.account_id)
                     if p["attributes"].get("external_id") == cid]
            return found[0]["attributes"].get("first_name") if found else None

        started = cli(env, "backfill", "--tenant", big.tenant_id)
        assert started.returncode == 0, started.stderr
        run = run_id_from(started.stdout)
        wait_for(lambda: first_name() == "First1", 60, what="the new customer in Klaviyo",
                 diagnose=lambda: incremental.log()[-2000:])

        loyale.update_customer(small.scheme_id, cid, firstName="Changed")
        changed_at = time.time()
        wait_for(lambda: first_name() == "Changed", 60, what="the change in Klaviyo",
                 diagnose=lambda: incremental.log()[-2000:])
        landed = store.history(small.tenant_id, cid)[0]   # newest first: the sync that wrote "Changed"
        backfill = store.run(run)
    finally:
        for process in (beat, incremental, backfiller):
            process.stop()
    # No durations: which pass carried the change, and what the backfill was doing then. The first
    # pass that starts after a change lists it (its watermark minus the overlap is before the change),
    # so the change must have been synced by that pass or an earlier one, however slow the machine,
    # and not after the backfill queue drained: incremental work has its own queue and workers.
    passes = sorted((r for r in store.runs(small.tenant_id, limit=1000) if r.kind == "incremental"),
                    key=lambda r: r.started_at)
    carrier = store.run(landed["run"])
    assert carrier is not None and carrier.kind == "incremental", landed
    first_after = next((r for r in passes if r.started_at > changed_at), None)
    print(f"change carried by pass {[r.id for r in passes].index(carrier.id) + 1} of {len(passes)}; "
          f"first pass after the change: {first_after and passes.index(first_after) + 1}; backfill {backfill}")
    assert first_after is None or carrier.started_at <= first_after.started_at, (carrier, first_after)
    assert backfill.finished_at is None or landed["at"] < backfill.finished_at, \
        "the backfill finished before the change landed: make it larger"


def test_two_beat_processes_enqueue_each_pass_once(loyale, klaviyo, redis_url):
    """A second `celery beat` (started by mistake, or for failover) waits for redbeat's lock instead of
    sending every pass again. No worker consumes the producers' queue, so every pass beat sent stays there
    to be counted: two active schedulers would send about twice as many as there were intervals."""
    scenario = build_scenario(loyale, klaviyo, "twobeats", customers=0, merge_customers=True)
    interval_s = 1.0
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_INCREMENTAL_INTERVAL_S=str(interval_s))
    broker = redis.Redis.from_url(redis_url, decode_responses=True)

    def sent() -> list[dict[str, Any]]:
        """The tenant's incremental passes waiting on the producers' queue (kombu's message headers)."""
        messages = [json.loads(m) for name in queue_lists(QUEUE_PRODUCERS) for m in broker.lrange(name, 0, -1)]
        return [m["headers"] for m in messages if m["headers"]["task"] == TASK_INCREMENTAL_PASS
                and scenario.tenant_id in m["headers"]["argsrepr"]]

    beats = [BeatProcess(env, name="beat1").start(), BeatProcess(env, name="beat2").start()]
    try:
        wait_for(lambda: len(sent()) > 0, 60, interval_s=0.1, what="beat's first pass")
        first_seen = time.monotonic()           # at most one poll after the first pass was sent
        deadline = first_seen + 60
        while len(passes := sent()) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        last_seen = time.monotonic()            # every pass counted was sent before this
        for beat in beats:
            beat.check_alive()
    finally:
        for beat in beats:
            beat.stop()
        broker.close()
    assert len(passes) >= 10, "beat did not send the passes"
    span_s = last_seen - first_seen
    assert len(passes) <= span_s / interval_s + 2, f"{len(passes)} passes sent in {span_s:.1f} s"
    assert len({p["id"] for p in passes}) == len(passes)
    assert any("Acquired lock" in beat.log() for beat in beats)
