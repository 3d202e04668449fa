"""`sync_customer` in this process against real Redis and the fake Klaviyo over HTTP: the rules that
need more than one pass (suppression, order) and the write paths' error handling."""

from __future__ import annotations

import pytest

from tests.builders import loyale_payload
from tests.integration.scenario import private_key
from worker.errors import RetryableError
from worker.outcomes import Outcome
from worker.runtime import Runtime
from worker.settings import Settings, TenantConfig
from worker.sync import sync_customer


@pytest.fixture
def world(klaviyo, redis_url):
    key = private_key()
    account = klaviyo.add_account(keys=[{"key": key}])

    def runtime(**tenant_settings) -> Runtime:
        tenant = TenantConfig(id="t", loyale_scheme_id="s", loyale_admin_email="a@b.c", loyale_admin_password="p",
                              klaviyo_base_url=klaviyo.base_url, klaviyo_private_key=key, **tenant_settings)
        return Runtime.build(Settings(redis_url=redis_url), tenants={"t": tenant}, wait_inline_s=10)

    return runtime, account


def sync(rt: Runtime, run: str = "run-1", **overrides):
    return sync_customer(rt.deps("t"), run, loyale_payload(**overrides))


def profile_of(klaviyo, account, email="jane@example.com"):
    return next(p for p in klaviyo.profiles(account_id=account) if p["attributes"]["email"] == email)


def reasons(profile) -> list[str]:
    return [s["reason"] for s in profile["subscriptions"]["email"]["marketing"]["suppression"]]


def test_opt_out_suppresses_and_opt_in_lifts_only_our_suppression(world, klaviyo):
    runtime, account = world
    rt = runtime(merge_customers=True)
    assert sync(rt, "r1", updatedDate="2026-01-01T00:00:00Z").outcome == Outcome.CREATED
    result = sync(rt, "r2", marketingSub=False, updatedDate="2026-01-02T00:00:00Z")
    assert result.outcome == Outcome.SUPPRESSED
    klaviyo.advance_clock(3600)                    # Klaviyo applies suppressions late
    assert reasons(profile_of(klaviyo, account)) == ["USER_SUPPRESSED"]
    assert profile_of(klaviyo, account)["attributes"]["first_name"] == "Jane"   # never deleted, not cleared
    assert sync(rt, "r3", updatedDate="2026-01-03T00:00:00Z").outcome == Outcome.UNSUPPRESSED
    klaviyo.advance_clock(3600)
    assert reasons(profile_of(klaviyo, account)) == []


def test_a_suppression_we_did_not_set_is_never_lifted(world, klaviyo):
    runtime, account = world
    rt = runtime(merge_customers=True)
    klaviyo.seed_profiles([{"email": "jane@example.com", "external_id": "c-1",
                            "suppression": [{"reason": "USER_SUPPRESSED"}]},
                           {"email": "bounce@example.com", "suppression": [{"reason": "HARD_BOUNCE"}]}],
                          account_id=account)
    assert sync(rt).outcome == Outcome.UPDATED
    assert reasons(profile_of(klaviyo, account)) == ["USER_SUPPRESSED"]
    assert sync(rt, id="c-2", email="bounce@example.com").outcome == Outcome.UPDATED
    assert reasons(profile_of(klaviyo, account, "bounce@example.com")) == ["HARD_BOUNCE"]


def test_a_late_older_snapshot_is_stale_and_changes_nothing(world, klaviyo):
    runtime, account = world
    rt = runtime(merge_customers=True)
    sync(rt, "r1", firstName="New", updatedDate="2026-02-01T00:00:00Z")
    late = sync(rt, "r2", firstName="Old", updatedDate="2026-01-01T00:00:00Z")
    assert late.outcome == Outcome.STALE
    assert profile_of(klaviyo, account)["attributes"]["first_name"] == "New"
    assert rt.store.history("t", "c-1")[0]["outcome"] == "stale"


def test_an_older_snapshot_after_a_newer_one_in_the_same_run_is_stale(world, klaviyo):
    """Webhook syncs of one minute share a run, which records one outcome per customer: a second sync
    in it still moves the newest snapshot synced, so an older snapshot processed after it is stale."""
    runtime, account = world
    rt = runtime(merge_customers=True)
    sync(rt, "r1", firstName="Old", updatedDate="2026-01-01T00:00:00Z")
    sync(rt, "r1", firstName="Newest", updatedDate="2026-03-01T00:00:00Z")
    late = sync(rt, "r1", firstName="Middle", updatedDate="2026-02-01T00:00:00Z")
    assert late.outcome == Outcome.STALE
    assert profile_of(klaviyo, account)["attributes"]["first_name"] == "Newest"


def test_a_redelivered_message_records_one_outcome_and_writes_nothing_twice(world, klaviyo):
    runtime, account = world
    rt = runtime(merge_customers=True)
    first, again = sync(rt, "r1"), sync(rt, "r1")
    assert (first.outcome, first.recorded) == (Outcome.CREATED, True)
    # the second delivery finds the profile; it still reports what this run did, and records nothing
    assert (again.outcome, again.recorded) == (Outcome.CREATED, False)
    assert klaviyo.requests()["by_endpoint"]["POST /api/profiles"] == 1
    assert rt.store.run("r1").completed == 1
    assert rt.store.outcomes("r1") == {"c-1": "created"}
    assert len(klaviyo.profiles(account_id=account)) == 1


def test_a_redelivery_whose_lookup_lags_behind_the_first_attempts_update_is_retried_not_created(world, klaviyo):
    """The per-customer path under the same rule as the batch (`lookup_lags`): the first attempt found the
    brand's profile, wrote to it and died before recording; Klaviyo's filters do not show the written
    profile yet. The redelivery does not create (an upsert over the brand's values with merge off, and a
    false `created`): it is retried later, and writes nothing."""
    runtime, account = world
    rt = runtime(merge_customers=False, existing_profiles="fill_empty")
    [profile_id] = klaviyo.seed_profiles([{"email": "jane@example.com", "first_name": "Kept"}], account_id=account)
    rt.store.mark_pending("r1", {"c-1": Outcome.UPDATED.value})
    rt.deps("t").klaviyo.update_profile(profile_id, {"last_name": "Doe"})
    klaviyo.set_read_lag(3600)
    before = klaviyo.requests()["by_endpoint"]
    with pytest.raises(RetryableError, match="filters lag behind writes"):
        sync(rt, "r1")
    sent = {k: n - before.get(k, 0) for k, n in klaviyo.requests()["by_endpoint"].items() if n != before.get(k, 0)}
    assert set(sent) <= {"GET /api/profiles", "GET /api/accounts"}, sent     # lookups only, no write
    assert profile_of(klaviyo, account)["attributes"]["first_name"] == "Kept"
    assert rt.store.outcomes("r1") == {}


def test_merge_on_journals_the_old_value_before_overwriting(world, klaviyo):
    runtime, account = world
    rt = runtime(merge_customers=True)
    klaviyo.seed_profiles([{"email": "jane@example.com", "first_name": "Janet", "properties": {"Mine": 1}}],
                          account_id=account)
    assert sync(rt, "r1").outcome == Outcome.UPDATED
    journal = {e["field"]: (e["old"], e["new"]) for e in rt.store.journal("r1")}
    assert journal == {"first_name": ("Janet", "Jane")}
    assert profile_of(klaviyo, account)["attributes"]["properties"]["Mine"] == 1


def test_no_write_when_nothing_changed(world, klaviyo):
    runtime, _ = world
    rt = runtime(merge_customers=True)
    sync(rt, "r1")
    writes_before = klaviyo.requests()["by_endpoint"].get("PATCH /api/profiles/{id}", 0)
    assert sync(rt, "r2").outcome == Outcome.UNCHANGED
    assert klaviyo.requests()["by_endpoint"].get("PATCH /api/profiles/{id}", 0) == writes_before


def test_a_phone_owned_by_another_profile_is_left_out_and_the_rest_syncs(world, klaviyo):
    runtime, account = world
    rt = runtime(merge_customers=True)
    klaviyo.seed_profiles([{"email": "someone@example.com", "phone_number": "+35679123456"}], account_id=account)
    result = sync(rt)
    assert result.outcome == Outcome.CREATED
    assert any("phone not sent" in w for w in result.warnings)
    created = profile_of(klaviyo, account)
    assert created["attributes"]["phone_number"] is None and created["attributes"]["first_name"] == "Jane"


def test_klaviyo_refusing_the_data_is_a_rejection_with_its_detail_and_is_not_retried(world, klaviyo):
    runtime, _ = world
    rt = runtime(merge_customers=True)
    result = sync(rt, email="josé@example.com")
    assert result.outcome == Outcome.REJECTED
    assert "Invalid email address at /data/attributes/email" in result.reason
    assert klaviyo.requests()["by_endpoint"]["POST /api/profiles"] == 1
    assert rt.store.problems("run-1")["c-1"]["outcome"] == "rejected"


def test_klaviyo_is_never_sent_a_null(world, klaviyo):
    runtime, _ = world
    rt = runtime(merge_customers=True)
    klaviyo.set_knobs(request_log_size=1000)
    sync(rt, "r1", firstName=None, lastName="", town=None, dob=None, levelNames=[], tags=None)
    sync(rt, "r2", firstName="Jane", updatedDate="2026-03-01T00:00:00Z")
    bodies = [e["body"] for e in klaviyo.request_log() if e["body"] is not None]

    def nulls(node):
        if isinstance(node, dict):
            return any(v is None or nulls(v) for v in node.values())
        if isinstance(node, list):
            return any(nulls(v) for v in node)
        return False

    assert bodies and not any(nulls(b) for b in bodies)
