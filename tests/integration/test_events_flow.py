"""Loyalty events end to end, with real processes: the fake Loyale posts webhooks (each delivered twice) to
`loyale-sync webhooks`, a Celery worker syncs the customers and sends their events to the fake Klaviyo,
and `loyale-sync incremental` catches up an event whose webhook was lost.

Klaviyo ends up holding each event once, at Loyale's time, in Loyale's order, on the customer's own
profile; a customer without consent gets no event and no profile, however many facts Loyale posts."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from fakes.processes import WebhookProcess
from tests.harness import WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import build_scenario
from tests.integration.test_backfill import cli
from worker import events as ev

#: Seconds of Loyale's clock between two facts: Klaviyo keeps an event's time to the second.
STEP_S = 7


def second(stamp: str) -> str:
    """Loyale's stamp as Klaviyo keeps an event's time: to the second, `+00:00`."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)
    return moment.replace(microsecond=0).isoformat()


def person(name: str, *, consent: bool) -> dict[str, Any]:
    return {"email": f"{name}@example.com", "firstName": name.title(), "marketingSub": consent, "deleted": False,
            "onHold": False, "Levels": [], "detailedLevels": [], "balance": {"pointsValue": 0, "monetaryValue": 0}}


def count(entries: list[dict[str, Any]], outcome: str) -> int:
    return sum(e["outcome"] == outcome for e in entries)


def test_a_customers_points_level_and_coupon_reach_klaviyo_once_each_in_loyales_order_and_times(
        loyale, klaviyo, redis_url, store):
    """Given Jane (opted in) and Bob (not), each joining, earning points, reaching a level, being given a
    coupon and using it, with every webhook delivered twice and the coupon use's webhook lost, when the
    worker syncs them and an incremental pass runs, then Klaviyo holds Jane's five events once each, at
    Loyale's times, on her profile; Bob's were counted and dropped and no event made him a profile."""
    scenario = build_scenario(loyale, klaviyo, "evt", customers=0, merge_customers=True)
    token = f"hook-{random.Random(5).getrandbits(64):x}"
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: {**scenario.tenant_config(),
                                                                       "webhook_token": token}}),
                   SYNC_INCREMENTAL_OVERLAP_S="600")
    worker = WorkerProcess(env, queues="sync.incremental,sync.producers", concurrency=2, name="events").start()
    hooks = WebhookProcess(env).start()
    tenant = scenario.tenant_id

    def diagnose() -> str:
        return (f"klaviyo events {klaviyo.events(account_id=scenario.account_id)}\n"
                f"jane {store.event_history(tenant, jane)}\nbob {store.event_history(tenant, bob)}\n"
                f"worker: {worker.log()[-4000:]}\nwebhooks: {hooks.log()[-1000:]}")

    try:
        worker.wait_ready()
        hooks.wait_ready()
        loyale.set_knobs(webhook_duplicate_rate=1.0, webhook_max_retries=0)   # twice each; a failed post is lost
        subscribed = cli(env, "subscribe-webhooks", hooks.url)
        assert subscribed.returncode == 0, subscribed.stderr
        gold = next(i for i, name in scenario.level_names.items() if name == "Gold")
        jane, bob = loyale.add_customers(scenario.scheme_id, [person("jane", consent=True),
                                                              person("bob", consent=False)])
        joined_at = loyale.customer(scenario.scheme_id, jane)["updatedDate"]
        # Levels are told against the levels last synced: the first sync (of the join) comes first.
        wait_for(lambda: store.history(tenant, jane) and store.history(tenant, bob), 60,
                 what="the first sync of both customers", diagnose=diagnose)
        loyale.advance_clock(STEP_S)
        earned = {cid: loyale.earn(scenario.scheme_id, cid, 120, value=24.5, outlet="Valletta",
                                   external_ref=f"ORDER-{cid[:4]}") for cid in (jane, bob)}
        loyale.advance_clock(STEP_S)
        for cid in (jane, bob):
            loyale.set_levels(scenario.scheme_id, cid, [gold])
        reached_at = loyale.customer(scenario.scheme_id, jane)["detailedLevels"][0]["createdDate"]
        loyale.advance_clock(STEP_S)
        coupons = {cid: loyale.issue_coupon(scenario.scheme_id, cid, name="10% off") for cid in (jane, bob)}
        wait_for(lambda: len(klaviyo.events(account_id=scenario.account_id)) == 4
                 and count(store.event_history(tenant, bob), "dropped_no_consent") == 4, 120,
                 what="the events of the webhooks delivered", diagnose=diagnose)

        hooks.stop()                       # the coupon use's webhook is lost: Loyale retries it no more
        loyale.advance_clock(STEP_S)
        used = {cid: loyale.use_coupon(scenario.scheme_id, coupons[cid]["id"]) for cid in (jane, bob)}
        assert all(not d["ok"] for d in loyale.wait_for_deliveries() if d["topic"] == 7)
        caught = cli(env, "incremental", "--tenant", tenant)
        assert caught.returncode == 0, caught.stdout + caught.stderr
        assert "2 events not sent yet for 2 customers" in caught.stdout, caught.stdout   # the two coupon uses
        wait_for(lambda: len(klaviyo.events(account_id=scenario.account_id)) == 5
                 and count(store.event_history(tenant, bob), "dropped_no_consent") == 5, 120,
                 what="the caught-up coupon use", diagnose=diagnose)

        [profile] = klaviyo.profiles(account_id=scenario.account_id)
        assert profile["attributes"]["email"] == "jane@example.com"
        held = klaviyo.events(account_id=scenario.account_id)
        assert [(e["metric"], e["time"], e["profile_id"]) for e in held] == [
            (ev.JOINED_SCHEME, second(joined_at), profile["id"]),
            (ev.POINTS_EARNED, second(earned[jane]["transactionDate"]), profile["id"]),
            (ev.LEVEL_REACHED, second(reached_at), profile["id"]),
            (ev.COUPON_ISSUED, second(coupons[jane]["createdDate"]), profile["id"]),
            (ev.COUPON_USED, second(used[jane]["updatedDate"]), profile["id"])]
        points, level, issued, coupon_used = (e["properties"] for e in held[1:])
        assert (points["Points"], points["Points Balance"], points["Outlet"], points["Reference"]) == \
            (120, 120, "Valletta", f"ORDER-{jane[:4]}")
        assert held[1]["value"] == earned[jane]["monetaryValue"]
        assert level["Level"] == "Gold" and issued["Coupon Name"] == coupon_used["Coupon Name"] == "10% off"
        assert issued["Coupon Code"] == coupons[jane]["barCode"] and coupon_used["Uses Left"] == 0
        assert klaviyo.dropped_events(account_id=scenario.account_id) == []    # we never sent one twice
        jane_seen = store.event_history(tenant, jane)
        assert count(jane_seen, "sent") == 5 and count(jane_seen, "duplicate") >= 3   # the second deliveries
        # Bob never opted in: each of his facts was counted and dropped, and no event made him a profile.
        bob_seen = store.event_history(tenant, bob)
        assert {e["outcome"] for e in bob_seen} == {"dropped_no_consent", "duplicate"}
        assert sorted(e["event"] for e in bob_seen if e["outcome"] == "dropped_no_consent") == sorted(
            [ev.JOINED_SCHEME, ev.POINTS_EARNED, ev.LEVEL_REACHED, ev.COUPON_ISSUED, ev.COUPON_USED])
        assert klaviyo.profiles_created_by_events(account_id=scenario.account_id) == []
        events_runs = [r for r in store.runs(tenant, limit=100) if r.kind == "events"]
        assert len(events_runs) == 1 and events_runs[0].events.get("sent") == 1
    finally:
        hooks.stop()
        worker.stop()
