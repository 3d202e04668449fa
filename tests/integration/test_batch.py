"""The batched path (`worker.batch.BatchSync`) in this process against real Redis and the fake Klaviyo:
bulk requests, and every Klaviyo refusal mapped back to the right customer."""

from __future__ import annotations

import pytest

from tests.builders import loyale_payload
from tests.integration.scenario import private_key
from worker.batch import MAX_COLLISIONS, Again, BatchSettings, BatchSync, Done, Item
from worker.runtime import Runtime
from worker.settings import Settings, TenantConfig


@pytest.fixture
def world(klaviyo, redis_url):
    key = private_key()
    account = klaviyo.add_account(keys=[{"key": key}])
    klaviyo.set_knobs(rate_limits_enabled=False, request_log_size=200)

    def batch(**tenant_settings) -> tuple[Runtime, BatchSync]:
        tenant = TenantConfig(id="t", loyale_scheme_id="s", loyale_admin_email="a@b.c", loyale_admin_password="p",
                              klaviyo_base_url=klaviyo.base_url, klaviyo_private_key=key, **tenant_settings)
        rt = Runtime.build(Settings(redis_url=redis_url, limiter_rate_scale=100), tenants={"t": tenant})
        return rt, BatchSync(rt.deps("t"), BatchSettings(poll_first_s=0.01), back_off=rt.limiter.back_off)

    return batch, account


def items(n: int, **overrides) -> list[Item]:
    return [Item(task_id=f"task-{i}", tenant="t", run="run-1", customer=loyale_payload(
        id=f"c-{i}", email=f"person{i}@example.com", mobileNumber=f"7912{i:04d}", **overrides)) for i in range(n)]


def outcomes(results) -> dict[str, str]:
    return {r.item.customer_id: r.outcome.value for r in results if isinstance(r, Done)}


def test_one_bad_row_among_ten_thousand_is_taken_out_and_the_rest_resent(world, klaviyo):
    """Given 10,000 customers of which Klaviyo refuses one at submit (all-or-nothing 400 naming its row),
    the row is taken out, the other 9,999 are imported in the resent job, and only that customer is
    `rejected`, with Klaviyo's detail; the whole batch costs a handful of requests."""
    batch, account = world
    rt, sync = batch(merge_customers=True)
    work = items(10_000)
    work[4321].customer["email"] = "josé@example.com"   # we accept it; Klaviyo does not
    results = sync.run(work)
    got = outcomes(results)
    assert len(got) == 10_000
    assert got.pop("c-4321") == "rejected"
    assert set(got.values()) == {"created"}
    problem = rt.store.problems("run-1")["c-4321"]
    assert "Invalid email address" in problem["reason"] and "/data/attributes/profiles/data/4321" in problem["reason"]
    assert len(klaviyo.profiles(account_id=account)) == 9_999
    counts = klaviyo.requests()["by_endpoint"]
    assert counts["GET /api/profiles"] == 200                     # lookups of 100: emails, then phones
    assert counts["POST /api/profile-bulk-import-jobs"] == 2      # refused, resent
    assert sum(counts.values()) <= 200 + 2 + 12                   # plus the job polls


def test_a_row_klaviyo_fails_while_importing_is_that_customers_conflict_only(world, klaviyo):
    batch, account = world
    rt, sync = batch(merge_customers=True)
    klaviyo.seed_profiles([{"email": "person1@example.com"}, {"email": "elsewhere@example.com", "external_id": "c-1"}],
                          account_id=account)
    got = outcomes(sync.run(items(5)))
    # merge on: person1's profile found by email gets our external id, which another profile holds
    assert got == {"c-0": "created", "c-1": "conflict", "c-2": "created", "c-3": "created", "c-4": "created"}
    assert "external_id c-1" in rt.store.problems("run-1")["c-1"]["reason"]


def test_a_phone_held_by_another_profile_is_left_out_and_the_customer_still_syncs(world, klaviyo):
    batch, account = world
    rt, sync = batch(merge_customers=True)
    klaviyo.seed_profiles([{"email": "someone@example.com", "phone_number": "+35679120002"}], account_id=account)
    got = outcomes(sync.run(items(4)))
    assert set(got.values()) == {"created"}
    by_email = {p["attributes"]["email"]: p["attributes"] for p in klaviyo.profiles(account_id=account)}
    assert by_email["person2@example.com"]["phone_number"] is None
    assert by_email["someone@example.com"]["phone_number"] == "+35679120002"   # never taken over
    assert by_email["person3@example.com"]["phone_number"] == "+35679120003"
    assert "phone not sent" in rt.store.history("t", "c-2")[0]["reason"]


def test_customers_sharing_an_email_in_one_batch_do_not_take_over_each_others_profile(world, klaviyo):
    batch, account = world
    _, sync = batch(merge_customers=True)
    work = items(3)
    work[2].customer["email"] = "PERSON0@example.com"
    results = sync.run(work)
    assert outcomes(results) == {"c-0": "created", "c-1": "created"}
    [later] = [r for r in results if isinstance(r, Again)]     # sent on to a later batch, not synced alone
    assert (later.item.customer_id, later.item.collisions) == ("c-2", 1)
    assert "shares an email" in later.reason
    before = klaviyo.requests()["total"]
    assert outcomes(sync.run([later.item])) == {"c-2": "conflict"}
    owner = [p for p in klaviyo.profiles(account_id=account) if p["attributes"]["email"] == "person0@example.com"]
    assert [p["attributes"]["external_id"] for p in owner] == ["c-0"]
    assert klaviyo.requests()["total"] - before <= 4    # a lookup and a job with its polls, as any batch


def test_a_customer_colliding_again_is_synced_on_its_own_after_the_batch(world, klaviyo):
    batch, _ = world
    _, sync = batch(merge_customers=True)
    work = items(2)
    work[1].customer["email"] = "PERSON0@example.com"
    work[1].collisions = MAX_COLLISIONS
    assert outcomes(sync.run(work)) == {"c-0": "created", "c-1": "conflict"}


def test_customers_sharing_a_phone_in_one_batch_are_both_created_and_one_keeps_the_phone(world, klaviyo):
    batch, account = world
    rt, sync = batch(merge_customers=True)
    work = items(3)
    work[2].customer["mobileNumber"] = work[0].customer["mobileNumber"]
    assert outcomes(sync.run(work)) == {"c-0": "created", "c-1": "created", "c-2": "created"}
    phones = {p["attributes"]["email"]: p["attributes"]["phone_number"] for p in klaviyo.profiles(account_id=account)}
    assert sorted([phones["person0@example.com"], phones["person2@example.com"]], key=str) == [
        "+35679120000", None]
    warned = [c for c in ("c-0", "c-2") if "phone not sent" in rt.store.history("t", c)[0]["reason"]]
    assert len(warned) == 1


def test_a_customer_without_email_who_left_is_found_by_external_id_in_bulk_and_suppressed(world, klaviyo):
    batch, account = world
    rt, sync = batch(merge_customers=True)
    klaviyo.seed_profiles([{"email": "gone@example.com", "external_id": "c-1"}], account_id=account)
    work = items(3)
    work[1].customer.update(email=None, deleted=True)
    work[2].customer.update(email=None, marketingSub=False)     # not in Klaviyo: nothing to suppress
    got = outcomes(sync.run(work))
    assert got == {"c-0": "created", "c-1": "suppressed", "c-2": "skipped_no_consent"}
    counts = klaviyo.requests()["by_endpoint"]
    assert counts["GET /api/profiles"] == 3          # by email, by external id for both, c-0's phone
    assert "POST /api/profiles" not in counts and "PATCH /api/profiles/{id}" not in counts


@pytest.mark.parametrize("mode", [dict(merge_customers=False), dict(existing_profiles="fill_empty")])
def test_merge_off_looks_up_external_ids_so_an_existing_profile_is_never_touched(world, klaviyo, mode):
    batch, account = world
    _, sync = batch(**mode)
    klaviyo.seed_profiles([{"email": "old-address@example.com", "external_id": "c-0", "first_name": "Keep"}],
                          account_id=account)
    got = outcomes(sync.run(items(2)))
    assert got["c-0"] == ("skipped_existing" if mode == dict(merge_customers=False) else "updated")
    profile = next(p for p in klaviyo.profiles(account_id=account) if p["attributes"]["external_id"] == "c-0")
    assert profile["attributes"]["email"] == "old-address@example.com"
    assert profile["attributes"]["first_name"] == "Keep"
    assert klaviyo.requests()["by_endpoint"]["GET /api/profiles"] == 3   # emails, external ids, phones


def test_opt_outs_are_suppressed_in_requests_of_a_hundred(world, klaviyo):
    batch, account = world
    _, sync = batch(merge_customers=True)
    klaviyo.seed_profiles([{"email": f"person{i}@example.com"} for i in range(150)], account_id=account)
    got = outcomes(sync.run(items(150, marketingSub=False)))
    assert set(got.values()) == {"suppressed"}
    assert klaviyo.requests()["by_endpoint"]["POST /api/profile-suppression-bulk-create-jobs"] == 2


def test_a_backfills_level_changes_go_to_klaviyo_in_bulk_jobs_after_the_profiles(world, klaviyo):
    """Given customers synced with level Silver, when a later backfill finds them Gold, then each gets
    `Loyale Level Reached` Gold and `Loyale Level Lost` Silver on its own profile, sent in one event bulk
    job after the batch's profile writes; those who opted out meanwhile get none (counted, dropped)."""
    klaviyo.kind()
    batch, account = world
    rt, sync = batch(merge_customers=True)
    ids = dict(zip([f"person{i}@example.com" for i in range(30)],
                   klaviyo.seed_profiles([{"email": f"person{i}@example.com"} for i in range(30)], account_id=account),
                   strict=True))
    first = outcomes(sync.run(items(30, levelNames=["Silver"], updatedDate="2026-03-01T10:00:00Z")))
    assert set(first.values()) == {"updated"}
    assert klaviyo.events(account_id=account) == []                 # a first sync tells no level change
    later = [Item(task_id=f"later-{i}", tenant="t", run="run-2", customer=loyale_payload(
        id=f"c-{i}", email=f"person{i}@example.com", mobileNumber=f"7912{i:04d}", levelNames=["Gold"],
        updatedDate="2026-03-02T10:00:00Z", marketingSub=i >= 5)) for i in range(30)]
    _, sync = batch(merge_customers=True)
    second = outcomes(sync.run(later))
    assert [second[f"c-{i}"] for i in range(5)] == ["suppressed"] * 5
    held = klaviyo.events(account_id=account)
    assert sorted((e["profile_id"], e["metric"], e["properties"]["Level"]) for e in held) == sorted(
        (ids[f"person{i}@example.com"], metric, level) for i in range(5, 30)
        for metric, level in (("Loyale Level Reached", "Gold"), ("Loyale Level Lost", "Silver")))
    assert {e["time"] for e in held} == {"2026-03-02T10:00:00+00:00"}
    counts = klaviyo.requests()["by_endpoint"]
    assert counts["POST /api/event-bulk-create-jobs"] == 1 and "POST /api/events" not in counts
    assert rt.store.run("run-2").events == {"sent": 50, "dropped_no_consent": 10}


@pytest.mark.parametrize("earlier", ["updated", None], ids=["an-earlier-attempt-wrote", "first-attempt"])
def test_a_lookup_lagging_behind_an_earlier_attempts_write_sends_nothing(world, klaviyo, earlier):
    """An attempt of this run found the customer's existing profile, planned an update and wrote it, then
    died before recording (or a duplicate delivery of its message runs beside it: kombu gives unacked
    messages back when the broker connection drops). Klaviyo's filters lag behind that write, so the next
    attempt's lookup shows no profile. It must not act on that: a bulk row for a "new" profile is an upsert
    by email, which with merge off (fill empty) would overwrite the brand's own values, and `created` would
    be a false outcome. The customer goes back to the queue with the reason. Without an earlier attempt,
    the same lookup is trusted (what else could tell a new customer apart) and the customer is created."""
    batch, account = world
    rt, sync = batch(merge_customers=False, existing_profiles="fill_empty")
    [profile_id] = klaviyo.seed_profiles([{"email": "person0@example.com", "first_name": "Kept"}], account_id=account)
    if earlier:
        # What the earlier attempt left: its plan, and its write (the empty last name filled in).
        rt.store.mark_pending("run-1", {"c-0": earlier})
        rt.deps("t").klaviyo.update_profile(profile_id, {"last_name": "Doe"})
    klaviyo.set_read_lag(3600)      # the write does not show in any filter for the hour
    [result] = sync.run(items(1))
    after = {p["id"]: p["attributes"] for p in klaviyo.profiles(account_id=account)}
    if earlier:
        assert isinstance(result, Again) and "filters lag behind writes" in result.reason
        assert result.item.attempt == 2                       # a retry with backoff: a lag may last minutes
        assert after[profile_id]["first_name"] == "Kept"      # the brand's value, not Loyale's "Jane"
        assert rt.store.outcomes("run-1") == {}
    else:
        # The profile was never written through the API: the filter shows it, fill-empty keeps "Kept".
        assert isinstance(result, Done) and result.outcome == "updated"
        assert after[profile_id]["first_name"] == "Kept"


def test_a_region_klaviyo_refuses_for_the_account_is_left_out_of_later_batches(world, klaviyo):
    """The account takes no Italian phones: the first batch's bulk import is refused whole at submit for
    its Italian rows (the shape observed live), and every row goes again at once, the Italian ones without
    their phones, in one job. The region is remembered, so the next batch leaves its Italian phones out
    from the start: one bulk import request, and its Maltese phones still sent."""
    batch, account = world
    rt, sync = batch(merge_customers=True)
    klaviyo.set_knobs(unsupported_phone_regions=["IT"])
    imports = "POST /api/profile-bulk-import-jobs"

    def customers(first: int) -> list[Item]:
        return [Item(task_id=f"task-{i}", tenant="t", run="run-1", customer=loyale_payload(
            id=f"c-{i}", email=f"person{i}@example.com", areaCode="+39" if i % 2 else "+356",
            mobileNumber=f"347{i:07d}" if i % 2 else f"7912{i:04d}")) for i in range(first, first + 10)]

    assert set(outcomes(sync.run(customers(0))).values()) == {"created"}
    first_round = klaviyo.requests()["by_endpoint"][imports]
    # refused at submit for the Italian phones, then sent again at once: the Italian rows without their
    # phones go with the rest, in the same round (not a job duration later)
    assert first_round == 2
    _, later = batch(merge_customers=True)
    assert set(outcomes(later.run(customers(10))).values()) == {"created"}
    assert klaviyo.requests()["by_endpoint"][imports] - first_round == 1    # the region left out from the start
    by_email = {p["attributes"]["email"]: p["attributes"] for p in klaviyo.profiles(account_id=account)}
    assert by_email["person11@example.com"]["phone_number"] is None
    assert by_email["person12@example.com"]["phone_number"] == "+35679120012"
    assert "phone not sent" in rt.store.history("t", "c-11")[0]["reason"]
