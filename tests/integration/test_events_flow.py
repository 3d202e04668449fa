"""Loyalty events end to end, with real processes: the fake Loyale posts webhooks (each delivered twice) to
`loyale-sync webhooks`, a Celery worker syncs the customers and sends their events to the fake Klaviyo.

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


def second(stamp: str) -> str:
    """Loyale's stamp as Klaviyo keeps an event's time: to the second, `+00:00`."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)
    return moment.replace(microsecond=0).isoformat()


def person(name: str, *, consent: bool) -> dict[str, Any]:
    return {"email": f"{name}@example.com", "firstName": name.title(), "marketingSub": consent, "deleted": False,
            "onHold": False, "Levels": [], "detailedLevels": [], "balance": {"pointsValue": 0, "monetaryValue": 0}}


def test_earning_and_reaching_a_level_reach_klaviyo_once_each_at_loyales_times(loyale, klaviyo, redis_url, store):
    scenario = build_scenario(loyale, klaviyo, "evt", customers=0, merge_customers=True)
    token = f"hook-{random.Random(5).getrandbits(64):x}"
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: {**scenario.tenant_config(),
                                                                       "webhook_token": token}}))
    worker = WorkerProcess(env, queues="sync.incremental,sync.producers", concurrency=2, name="events").start()
    hooks = WebhookProcess(env).start()
    try:
        worker.wait_ready()
        hooks.wait_ready()
        loyale.set_knobs(webhook_duplicate_rate=1.0)          # every webhook delivered twice
        subscribed = cli(env, "subscribe-webhooks", hooks.url)
        assert subscribed.returncode == 0, subscribed.stderr
        gold = next(i for i, name in scenario.level_names.items() if name == "Gold")
        jane, bob = loyale.add_customers(scenario.scheme_id, [person("jane", consent=True),
                                                              person("bob", consent=False)])
        joined_at = loyale.customer(scenario.scheme_id, jane)["updatedDate"]
        # Levels are told against the levels last synced: the first sync (of the join) comes first.
        wait_for(lambda: store.history(scenario.tenant_id, jane) and store.history(scenario.tenant_id, bob), 60,
                 what="the first sync of both customers", diagnose=lambda: worker.log()[-3000:])
        loyale.advance_clock(7)
        for cid in (jane, bob):
            loyale.set_balance(scenario.scheme_id, cid, points_delta=120, monetary_delta=1.2)
        earned_at = loyale.customer(scenario.scheme_id, jane)["lastTransactionDate"]
        loyale.advance_clock(7)
        for cid in (jane, bob):
            loyale.set_levels(scenario.scheme_id, cid, [gold])
        reached_at = loyale.customer(scenario.scheme_id, jane)["detailedLevels"][0]["createdDate"]

        def settled() -> bool:
            held = klaviyo.events(account_id=scenario.account_id)
            jane_seen = store.event_history(scenario.tenant_id, jane)
            bob_seen = store.event_history(scenario.tenant_id, bob)
            # Jane: 3 sent, and the second delivery of the join and of the transaction seen as duplicates;
            # Bob: his 3 facts dropped, and the same 2 second deliveries.
            return (len(held) >= 3 and sum(e["outcome"] == "duplicate" for e in jane_seen) >= 2
                    and sum(e["outcome"] == "dropped_no_consent" for e in bob_seen) >= 3
                    and sum(e["outcome"] == "duplicate" for e in bob_seen) >= 2)

        def diagnose() -> str:
            return (f"klaviyo events {klaviyo.events(account_id=scenario.account_id)}\n"
                    f"jane {store.event_history(scenario.tenant_id, jane)}\n"
                    f"bob {store.event_history(scenario.tenant_id, bob)}"
                    f"\ndeliveries {[(d['topic'], d['status']) for d in loyale.deliveries()]}\n"
                    f"worker: {worker.log()[-4000:]}\nwebhooks: {hooks.log()[-2000:]}")

        wait_for(settled, 120, what="the events to settle", diagnose=diagnose)
        held = klaviyo.events(account_id=scenario.account_id)
        [profile] = [p for p in klaviyo.profiles(account_id=scenario.account_id)
                     if p["attributes"]["email"] == "jane@example.com"]
        assert [(e["metric"], e["time"], e["profile_id"]) for e in held] == [
            (ev.JOINED_SCHEME, second(joined_at), profile["id"]),
            (ev.POINTS_EARNED, second(earned_at), profile["id"]),
            (ev.LEVEL_REACHED, second(reached_at), profile["id"])]
        assert held[1]["properties"]["Points"] == 120 and held[2]["properties"]["Level"] == "Gold"
        sent = [e for e in store.event_history(scenario.tenant_id, jane) if e["outcome"] == "sent"]
        assert sorted(e["event"] for e in sent) == sorted([ev.JOINED_SCHEME, ev.POINTS_EARNED, ev.LEVEL_REACHED])
        # Bob never opted in: every one of his facts was counted and dropped, and no event made him a profile.
        bob_seen = store.event_history(scenario.tenant_id, bob)
        assert {e["outcome"] for e in bob_seen} == {"dropped_no_consent", "duplicate"}
        assert sorted(e["event"] for e in bob_seen if e["outcome"] == "dropped_no_consent") == sorted(
            [ev.JOINED_SCHEME, ev.POINTS_EARNED, ev.LEVEL_REACHED])
        assert [p["attributes"]["email"] for p in klaviyo.profiles(account_id=scenario.account_id)] == \
            ["jane@example.com"]
        assert klaviyo.profiles_created_by_events(account_id=scenario.account_id) == []
        assert klaviyo.dropped_events(account_id=scenario.account_id) == []   # nothing for Klaviyo to dedupe
    finally:
        hooks.stop()
        worker.stop()
