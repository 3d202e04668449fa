"""The Loyale side of production realism, end to end: the fake Loyale over HTTP, a real Redis, real
Celery workers, the fake Klaviyo.

- 2.1: a Loyale without the level route (knob `missing_routes`) syncs customers without `Levels` and
  suppresses no one; only `GET /api/Customer/{id}` answering 404 means a customer is gone.
- 2.12: customers updated while an incremental pass pages (knobs `paging_drift_*`) are never skipped;
  a customer whose `schemes` no longer hold the tenant's scheme is suppressed, one with an empty list
  is not (an unconfirmed signal never suppresses).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from pydantic import SecretStr

from producers.incremental import SORTS, run_incremental
from producers.loyale import LoyaleClient
from producers.watermarks import Watermarks
from tests.harness import WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import private_key, reasons
from worker.app import create_app
from worker.messages import QUEUE_INCREMENTAL
from worker.settings import Settings
from worker.store import Store

OTHER_SCHEME = {"id": "11111111-2222-3333-4444-555555555555", "name": "Another brand"}


# --- helpers ----------------------------------------------------------------------------------------


def brand(loyale, klaviyo, customers: list[dict[str, Any]], seeds: list[dict[str, Any]], *,
          merge_customers: bool = True) -> dict[str, Any]:
    scheme = loyale.create_scheme(customers=0)
    ids = loyale.add_customers(scheme["scheme_id"], customers, emit=False)
    key = private_key()
    account_id = klaviyo.add_account(keys=[key])
    if seeds:
        klaviyo.seed_profiles(seeds, account_id=account_id)
    config = {"loyale_base_url": loyale.base_url, "loyale_scheme_id": scheme["scheme_id"],
              "loyale_admin_email": scheme["admin_email"], "loyale_admin_password": scheme["admin_password"],
              "klaviyo_base_url": klaviyo.base_url, "klaviyo_private_key": key,
              "merge_customers": merge_customers}
    return {"scheme": scheme, "ids": ids, "account_id": account_id, "config": config}


def hint_and_wait(redis_url: str, store: Store, env: dict[str, str], tenant: str, customer_ids: list[str],
                  run: str) -> dict[str, str]:
    """Send `sync.customer_hint` for each customer (as the webhook intake does) to a real worker."""
    worker = WorkerProcess(env, queues="sync.incremental", concurrency=1, name="hints").start().wait_ready()
    sender = Celery(broker=redis_url, set_as_current=False)
    try:
        for customer_id in customer_ids:
            sender.send_task("sync.customer_hint", kwargs={"tenant": tenant, "customer_id": customer_id, "run": run},
                             queue=QUEUE_INCREMENTAL)
        wait_for(lambda: all(store.outcomes_of(run, customer_ids)), 60, what="an outcome per hinted customer",
                 diagnose=lambda: worker.log()[-3000:])
    finally:
        sender.close()
        worker.stop()
    return store.outcomes(run)


def profile_of(klaviyo, account_id: str, email: str) -> dict[str, Any]:
    found = [p for p in klaviyo.profiles(account_id=account_id) if p["attributes"].get("email") == email]
    assert len(found) == 1, found
    return found[0]


# --- 2.1: a 404 means "gone" only for GET /api/Customer/{id} ------------------------------------------


def test_without_the_level_route_a_hinted_customer_syncs_without_levels_and_is_not_suppressed(
        loyale, klaviyo, redis_url, store):
    """Given a Loyale that answers 404 to /api/Level and a customer holding a level, whose Klaviyo profile
    (merge on) carries Levels ["Platinum"], when a webhook hint syncs the customer, then the customer is
    updated (today's code read the level 404 as "customer gone" and suppressed the profile), its other
    fields follow Loyale, and Klaviyo's Levels is left as it was."""
    loyale.set_knobs(missing_routes=["/api/Level"])
    world = brand(loyale, klaviyo, [{
        "id": "c-jane", "email": "jane@example.com", "firstName": "Jane", "marketingSub": True, "deleted": False,
        "onHold": False,
        "Levels": [{"levelId": "0d1c0000-0000-0000-0000-000000000001"}], "balance": {"pointsValue": 40},
    }], [{"email": "jane@example.com", "external_id": "c-jane", "first_name": "Old",
          "properties": {"Levels": ["Platinum"]}}])
    env = sync_env(redis_url, write_tenants_file({"lvl": world["config"]}))

    outcomes = hint_and_wait(redis_url, store, env, "lvl", world["ids"], "webhook-lvl-1")

    assert outcomes == {world["ids"][0]: "updated"}
    profile = profile_of(klaviyo, world["account_id"], "jane@example.com")
    assert profile["attributes"]["first_name"] == "Jane"
    assert profile["attributes"]["properties"]["Levels"] == ["Platinum"]
    assert profile["attributes"]["properties"]["LoyalePointBalance"] == 40
    assert reasons(profile) == []
    assert any(r["route"] == "/api/Level" and r["status"] == 404 for r in loyale.requests()["recent"])


def test_a_customer_gone_from_loyale_is_still_suppressed(loyale, klaviyo, redis_url, store):
    """The one 404 that means "gone": a hint for a customer id Loyale does not know suppresses its profile."""
    world = brand(loyale, klaviyo, [], [{"email": "gone@example.com", "external_id": "c-gone", "first_name": "G"}])
    env = sync_env(redis_url, write_tenants_file({"gone": world["config"]}))
    outcomes = hint_and_wait(redis_url, store, env, "gone", ["c-gone"], "webhook-gone-1")
    assert outcomes == {"c-gone": "suppressed"}
    klaviyo.advance_clock(3600)                    # Klaviyo applies suppressions late
    assert reasons(profile_of(klaviyo, world["account_id"], "gone@example.com")) == ["USER_SUPPRESSED"]


# --- 2.12: leaving the scheme -------------------------------------------------------------------------


def test_leaving_the_scheme_suppresses_only_when_schemes_proves_it(loyale, klaviyo, redis_url, store):
    """Given two opted-in customers with Klaviyo profiles, one also in another brand's scheme, when both
    leave ours (Loyale drops our scheme from `schemes`) and a hint syncs them, then the one whose list
    still holds the other scheme is suppressed (it left), and the one whose list is now empty is synced as
    before: an empty list proves nothing, so it never suppresses."""
    scheme = loyale.create_scheme(customers=0)
    ours = {"id": scheme["scheme_id"], "name": "Ours"}

    def customer(email: str, schemes: list[dict[str, Any]]) -> dict[str, Any]:
        return {"email": email, "firstName": "F", "marketingSub": True, "deleted": False, "onHold": False,
                "Levels": [], "schemes": schemes}

    ids = loyale.add_customers(scheme["scheme_id"], [customer("two@example.com", [ours, OTHER_SCHEME]),
                                                     customer("one@example.com", [ours])], emit=False)
    key = private_key()
    account_id = klaviyo.add_account(keys=[key])
    klaviyo.seed_profiles([{"email": "two@example.com", "first_name": "F"},
                           {"email": "one@example.com", "first_name": "F"}], account_id=account_id)
    for customer_id in ids:
        loyale.action(scheme["scheme_id"], customer_id, "leave")
    assert [loyale.customer(scheme["scheme_id"], i)["schemes"] for i in ids] == [[OTHER_SCHEME], []]
    config = {"loyale_base_url": loyale.base_url, "loyale_scheme_id": scheme["scheme_id"],
              "loyale_admin_email": scheme["admin_email"], "loyale_admin_password": scheme["admin_password"],
              "klaviyo_base_url": klaviyo.base_url, "klaviyo_private_key": key, "merge_customers": True}
    env = sync_env(redis_url, write_tenants_file({"left": config}))

    outcomes = hint_and_wait(redis_url, store, env, "left", ids, "webhook-left-1")

    assert outcomes[ids[0]] == "suppressed"
    klaviyo.advance_clock(3600)
    assert reasons(profile_of(klaviyo, account_id, "two@example.com")) == ["USER_SUPPRESSED"]
    assert outcomes[ids[1]] in ("updated", "unchanged")
    assert reasons(profile_of(klaviyo, account_id, "one@example.com")) == []


# --- 2.12: paging by key while customers move -----------------------------------------------------------


@pytest.fixture
def producer(loyale, redis_url):
    scheme = loyale.create_scheme(customers=0)
    http = httpx.Client(timeout=10)
    client_redis = redis.Redis.from_url(redis_url, decode_responses=True)
    client = LoyaleClient(http, tenant="t", base_url=loyale.base_url, scheme_id=scheme["scheme_id"],
                          admin_email=scheme["admin_email"], admin_password=SecretStr(scheme["admin_password"]))
    app = create_app(Settings(redis_url=redis_url))
    yield scheme["scheme_id"], client, Store(client_redis), app
    app.close()
    http.close()
    client_redis.close()


def customers(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"email": f"c{i}@example.com", "marketingSub": True, "deleted": False, "onHold": False, **fields}
            for i in range(n)]


def test_paging_drift_makes_page_number_paging_skip_customers(loyale, producer):
    """The fake's knob does what it says: read by page number over updatedDate while customers are updated
    between pages, some are never seen (this is how the old incremental pass read)."""
    scheme, client, _, _ = producer
    loyale.add_customers(scheme, customers(250), emit=False)
    loyale.set_knobs(paging_drift_per_page=2, paging_drift_max=4)
    since = datetime.now(UTC) - timedelta(hours=1)
    seen = {c["id"] for page in client.pages(filters=f"updatedDate>={since:%Y-%m-%dT%H:%M:%S.%fZ}", sorts=SORTS)
            for c in page.customers}
    moved = [c["id"] for c in loyale.customers(scheme) if c.get("updatedBy") == "staff-edit@loyale.test"]
    assert len(moved) == 4
    assert len(seen) < 250


@pytest.mark.parametrize("same_stamp", [False, True], ids=["distinct-stamps", "one-stamp-for-all"])
def test_an_incremental_pass_skips_no_one_while_customers_are_updated_under_it(loyale, producer, same_stamp):
    """Given 250 changed customers and Loyale updating some of them between the pages the pass reads
    (each then sorts to the end), when an incremental pass runs, then every customer is enqueued (the
    page-number pass skipped one per moved customer); the moved ones are read again with their new
    stamp. With one stamp for all 250 (a bulk import), the group is read whole and none is lost either."""
    scheme, client, store, app = producer
    stamp = {"updatedDate": "2026-03-01T12:00:00.000000Z"} if same_stamp else {}
    loyale.add_customers(scheme, customers(250, **stamp), emit=False)
    watermark = datetime(2026, 3, 1, 11, tzinfo=UTC) if same_stamp else datetime.now(UTC) - timedelta(hours=1)
    watermarks = Watermarks(store.redis)
    watermarks.set_watermark("t", watermark)
    loyale.set_knobs(paging_drift_per_page=3, paging_drift_max=9)

    result = run_incremental(app=app, store=store, watermarks=watermarks, loyale=client, tenant="t", overlap_s=1)

    everyone = {c["id"] for c in loyale.customers(scheme)}
    moved = {c["id"] for c in loyale.customers(scheme) if c.get("updatedBy") == "staff-edit@loyale.test"}
    assert len(moved) == 9
    assert set(store.missing(result.run_id)) == everyone          # every customer is on the queue
    assert result.read >= 250
