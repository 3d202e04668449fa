"""Loyalty events after a customer's sync (`worker.event_sync.EventSender`) against the fake Klaviyo over
HTTP and the real state Redis: sent once to the profile this service synced, by its id; consent first;
bulk jobs for many and one by one for an event whose first send has no outcome; level changes against
the levels last synced; a key without `events:write` stops the events, not the tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.builders import loyale_payload
from tests.integration.scenario import private_key
from worker import events as ev
from worker.broker import open_broker
from worker.event_sync import EventSender, Synced
from worker.events import LoyaltyEvent
from worker.klaviyo import KlaviyoClient
from worker.metrics import SyncCollector, registry_for
from worker.models import LoyaleCustomer, parse_customer
from worker.outcomes import Outcome
from worker.settings import TenantConfig
from worker.state.events import EventOutcome
from worker.sync import SyncDeps

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
PROFILE_SCOPES = ["profiles:read", "profiles:write", "subscriptions:read", "subscriptions:write", "lists:read",
                  "lists:write", "accounts:read"]


@pytest.fixture(autouse=True)
def kind_klaviyo(klaviyo) -> None:
    klaviyo.kind()


def sender(klaviyo, store, key: str, **tenant: object) -> EventSender:
    config = TenantConfig(**{"id": "acme", "loyale_scheme_id": "s-1", "loyale_admin_email": "a@x.com",
                             "loyale_admin_password": "pw", "klaviyo_base_url": klaviyo.base_url,
                             "klaviyo_private_key": key, **tenant})
    client = KlaviyoClient(httpx.Client(timeout=10.0), tenant="acme", base_url=klaviyo.base_url,
                           private_key=SecretStr(key), revision="2026-07-15")
    return EventSender(SyncDeps(tenant=config, klaviyo=client, store=store))


def customer(customer_id: str = "c-1", **overrides: object) -> LoyaleCustomer:
    return parse_customer(loyale_payload(id=customer_id, email=f"{customer_id}@example.com", **overrides))[0]


def earned(n: int, customer_id: str = "c-1") -> LoyaltyEvent:
    return LoyaltyEvent(ev.POINTS_EARNED, customer_id, f"loyale-transaction-{customer_id}-{n}",
                        T0 + timedelta(seconds=n), {"Points": n})


@pytest.fixture
def account(klaviyo) -> tuple[str, str]:
    key = private_key()
    return key, klaviyo.add_account(keys=[key])


def posted(klaviyo, endpoint: str) -> int:
    return int(klaviyo.requests()["by_endpoint"].get(endpoint, 0))


def test_events_reach_the_synced_profile_by_its_id_once_in_loyales_times(klaviyo, store, account, redis_url):
    key, account_id = account
    [profile_id] = klaviyo.seed_profiles([{"email": "c-1@example.com"}], account_id=account_id)
    events = (earned(3), earned(1), earned(2))
    results = sender(klaviyo, store, key).settle("run-1", [Synced("c-1", customer(), Outcome.UPDATED, profile_id,
                                                                  events)])
    assert [r.outcome for r in results] == [EventOutcome.SENT] * 3
    held = klaviyo.events(account_id=account_id)
    assert [(e["metric"], e["profile_id"], e["unique_id"], e["time"]) for e in held] == [
        (ev.POINTS_EARNED, profile_id, f"loyale-transaction-c-1-{n}", (T0 + timedelta(seconds=n)).isoformat())
        for n in (1, 2, 3)]
    # Again (a webhook delivered twice, a retried task): recorded as duplicates, nothing sent.
    sent_before = posted(klaviyo, "POST /api/events")
    again = sender(klaviyo, store, key).settle("run-2", [Synced("c-1", customer(), Outcome.UNCHANGED, profile_id,
                                                                events)])
    assert [r.outcome for r in again] == [EventOutcome.DUPLICATE] * 3
    assert posted(klaviyo, "POST /api/events") == sent_before and len(klaviyo.events(account_id=account_id)) == 3
    assert [e["outcome"] for e in store.event_history("acme", "c-1")] == ["duplicate"] * 3 + ["sent"] * 3
    assert klaviyo.profiles_created_by_events(account_id=account_id) == []
    # Prometheus: per tenant, event name and outcome, over every run.
    broker = open_broker(redis_url)
    try:
        text = generate_latest(registry_for(SyncCollector(store, broker, ["acme"], [], watermark=lambda t: None)))
    finally:
        broker.close()
    served = {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text.decode())
              for s in family.samples if s.name == "loyale_sync_events_total"}
    assert served == {(("event", ev.POINTS_EARNED), ("outcome", "duplicate"), ("tenant", "acme")): 3,
                      (("event", ev.POINTS_EARNED), ("outcome", "sent"), ("tenant", "acme")): 3}


def test_no_event_without_consent_or_a_profile_of_ours_and_none_ever_creates_a_profile(klaviyo, store, account):
    key, account_id = account
    [profile_id] = klaviyo.seed_profiles([{"email": "c-2@example.com"}], account_id=account_id)
    batch = [
        Synced("c-1", customer("c-1"), Outcome.CREATED, None, (earned(1, "c-1"),)),               # no id known
        Synced("c-2", customer("c-2", marketingSub=False), Outcome.SUPPRESSED, profile_id, (earned(1, "c-2"),)),
        Synced("c-3", customer("c-3", marketingSub=False), Outcome.SKIPPED_NO_CONSENT, None, (earned(1, "c-3"),)),
        Synced("c-4", customer("c-4"), Outcome.CONFLICT, profile_id, (earned(1, "c-4"),)),        # someone else's
        Synced("c-5", customer("c-5", onHold=True), Outcome.UNCHANGED, profile_id, (earned(1, "c-5"),)),
    ]
    results = sender(klaviyo, store, key).settle("run-1", batch)
    assert [(r.event.customer_id, r.outcome) for r in results] == [
        ("c-1", EventOutcome.DROPPED_NO_PROFILE), ("c-2", EventOutcome.DROPPED_NO_CONSENT),
        ("c-3", EventOutcome.DROPPED_NO_CONSENT), ("c-4", EventOutcome.DROPPED_NO_PROFILE),
        ("c-5", EventOutcome.DROPPED_NO_CONSENT)]
    assert posted(klaviyo, "POST /api/events") == 0 and klaviyo.events(account_id=account_id) == []
    assert klaviyo.profiles_created_by_events(account_id=account_id) == []
    assert len(klaviyo.profiles(account_id=account_id)) == 1


def test_many_events_go_in_bulk_jobs_and_one_sent_before_without_an_outcome_goes_on_its_own(klaviyo, store, account):
    key, account_id = account
    [profile_id] = klaviyo.seed_profiles([{"email": "c-1@example.com"}], account_id=account_id)
    events = tuple(earned(n) for n in range(30))
    # The worker died after sending event 0 (Klaviyo has it) and before recording its outcome.
    first = sender(klaviyo, store, key)
    first.deps.klaviyo.create_event(events[0], profile_id)
    store.mark_attempted("acme", {"c-1": [events[0].unique_id]})
    results = first.settle("run-1", [Synced("c-1", customer(), Outcome.UPDATED, profile_id, events)])
    assert [r.outcome for r in results] == [EventOutcome.SENT] * 30
    assert posted(klaviyo, "POST /api/event-bulk-create-jobs") == 1      # 29 never sent before: one job
    assert posted(klaviyo, "POST /api/events") == 2                      # event 0: ours above, then again alone
    held = klaviyo.events(account_id=account_id)
    assert sorted(e["unique_id"] for e in held) == sorted(e.unique_id for e in events)   # each once
    assert [d["reason"] for d in klaviyo.dropped_events(account_id=account_id)] == ["duplicate"]
    assert store.attempted_events("acme", "c-1") == set()


def test_levels_reached_and_lost_against_the_levels_last_synced(klaviyo, store, account):
    key, account_id = account
    [profile_id] = klaviyo.seed_profiles([{"email": "c-1@example.com"}], account_id=account_id)
    gold_at = "2026-03-02T09:00:00Z"

    def sync(levels: list[str], updated: str) -> list[tuple[str, str, EventOutcome]]:
        snapshot = customer(levelNames=levels, updatedDate=updated, levelSince={"Gold": gold_at})
        results = sender(klaviyo, store, key).settle("run", [Synced("c-1", snapshot, Outcome.UPDATED, profile_id)])
        return [(r.event.metric, r.event.properties["Level"], r.outcome) for r in results]

    assert sync(["Silver"], "2026-03-01T10:00:00Z") == []            # first sync: no change to tell
    assert sync(["Gold"], "2026-03-02T10:00:00Z") == [(ev.LEVEL_REACHED, "Gold", EventOutcome.SENT),
                                                      (ev.LEVEL_LOST, "Silver", EventOutcome.SENT)]
    assert sync(["Gold"], "2026-03-03T10:00:00Z") == []
    held = {e["metric"]: e["time"] for e in klaviyo.events(account_id=account_id)}
    assert held == {ev.LEVEL_REACHED: "2026-03-02T09:00:00+00:00", ev.LEVEL_LOST: "2026-03-02T10:00:00+00:00"}


def test_levels_are_remembered_for_a_customer_without_consent_and_for_a_tenant_without_events(klaviyo, store, account):
    key, _ = account
    opted_out = customer(levelNames=["Gold"], marketingSub=False)
    sender(klaviyo, store, key).settle("run", [Synced("c-1", opted_out, Outcome.SUPPRESSED, None)])
    sender(klaviyo, store, key, events=False).settle("run", [Synced("c-2", customer("c-2", levelNames=["Gold"]),
                                                                    Outcome.UPDATED, "01KX")])
    assert store.synced_levels("acme", ["c-1", "c-2", "c-3"]) == {"c-1": ["Gold"], "c-2": ["Gold"], "c-3": None}
    assert posted(klaviyo, "POST /api/events") == 0


def test_a_key_without_events_write_stops_the_events_not_the_tenant(klaviyo, store):
    key = private_key()
    account_id = klaviyo.add_account(keys=[{"key": key, "scopes": PROFILE_SCOPES}])
    [profile_id] = klaviyo.seed_profiles([{"email": "c-1@example.com"}], account_id=account_id)
    results = sender(klaviyo, store, key).settle("run", [Synced("c-1", customer(), Outcome.UPDATED, profile_id,
                                                                (earned(1), earned(2)))])
    assert [r.outcome for r in results] == [EventOutcome.REJECTED] * 2
    assert "events:write" in results[0].reason and "events:write" in (store.events_blocked("acme") or "")
    assert store.tenant_paused("acme") is None
    asked = posted(klaviyo, "POST /api/events")
    later = sender(klaviyo, store, key).settle("run", [Synced("c-1", customer(), Outcome.UPDATED, profile_id,
                                                              (earned(3),))])
    assert [r.outcome for r in later] == [EventOutcome.REJECTED] and posted(klaviyo, "POST /api/events") == asked
