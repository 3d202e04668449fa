"""The sync against a Klaviyo as slow and eventually consistent as the real one (issue "Production
realism", section 2): each test is one promise that broke against the realistic fake.

Both paths run in this process (the batch as `BatchSync`, the per-customer path as `sync_customer`)
against real Redis and the fake Klaviyo over loopback. Lags are set long (minutes) where a test needs
them to last, so that nothing depends on how fast this machine is; jobs take about a second.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.builders import loyale_payload
from tests.integration.scenario import private_key, reasons
from worker.batch import Again, BatchSettings, BatchSync, Done, Item, Planned, Work
from worker.klaviyo import ImportError_, KlaviyoClient, filter_value
from worker.mapping import MappedProfile
from worker.merge import FieldChange, Plan
from worker.models import parse_customer
from worker.outcomes import Outcome
from worker.pipeline import Ready
from worker.runtime import Runtime
from worker.settings import Settings, TenantConfig
from worker.suppressions import recheck_suppressions
from worker.sync import sync_customer

LONG_S = 600.0   # a lag that outlasts any test


@pytest.fixture
def world(klaviyo, redis_url):
    key = private_key()
    account = klaviyo.add_account(keys=[{"key": key}])
    klaviyo.set_knobs(rate_limits_enabled=False, request_log_size=2000)
    built: list[Runtime] = []

    def make(batch_settings: BatchSettings | None = None, **tenant_settings):
        tenant = TenantConfig(id="t", loyale_scheme_id="s", loyale_admin_email="a@b.c", loyale_admin_password="p",
                              klaviyo_base_url=klaviyo.base_url, klaviyo_private_key=key, **tenant_settings)
        rt = Runtime.build(Settings(redis_url=redis_url, limiter_rate_scale=100), tenants={"t": tenant})
        built.append(rt)
        throttled: list[tuple[str, float]] = []

        def back_off(tenant_id: str, wait_s: float) -> None:
            throttled.append((tenant_id, wait_s))
            rt.limiter.back_off(tenant_id, wait_s)

        sync = BatchSync(rt.deps("t"), batch_settings or BatchSettings(poll_first_s=0.05, poll_max_s=0.2),
                         back_off=back_off)
        sync.throttled = throttled
        return rt, sync

    yield make, account


def customers(n: int, **overrides) -> list[Item]:
    return [Item(task_id=f"task-{i}", tenant="t", run="run-1", customer=loyale_payload(
        **{"id": f"c-{i}", "email": f"person{i}@example.com", "mobileNumber": f"7912{i:04d}", **overrides}))
        for i in range(n)]


def outcomes(results) -> dict[str, str]:
    return {r.item.customer_id: r.outcome.value for r in results if isinstance(r, Done)}


def of(klaviyo, account, **attrs) -> list[dict]:
    return [p for p in klaviyo.profiles(account_id=account)
            if all(p["attributes"].get(k) == v for k, v in attrs.items())]


# --- 2.2 import errors matched by original_payload; a row is reported only when confirmed ------------

def test_an_import_error_pointing_only_at_data_is_matched_to_its_customer_by_original_payload(world, klaviyo):
    """The spec's import error points at `/data`; the row is known only from `original_payload`.
    Customer c-1's row is refused (its external id belongs to another profile): it must not be `created`."""
    make, account = world
    klaviyo.set_knobs(import_error_row_pointer=False)
    _, sync = make(merge_customers=True)
    klaviyo.seed_profiles([{"email": "person1@example.com"}, {"email": "elsewhere@example.com", "external_id": "c-1"}],
                          account_id=account)
    got = outcomes(sync.run(customers(5)))
    assert got.pop("c-1") == "conflict"
    assert set(got.values()) == {"created"}
    for i in (0, 2, 3, 4):
        assert len(of(klaviyo, account, email=f"person{i}@example.com", external_id=f"c-{i}")) == 1


def test_a_job_whose_counts_klaviyo_leaves_null_confirms_each_customer_on_the_per_customer_path(world, klaviyo):
    """Counts that do not add up (here: null to the end) confirm nothing: every row is checked one by one,
    and the refused one is found although neither the counts nor the pointer name it."""
    make, account = world
    klaviyo.set_knobs(job_counts_null=True, import_error_row_pointer=False)
    _, sync = make(merge_customers=True)
    klaviyo.seed_profiles([{"email": "person1@example.com"}, {"email": "elsewhere@example.com", "external_id": "c-1"}],
                          account_id=account)
    got = outcomes(sync.run(customers(4)))
    assert got == {"c-0": "created", "c-1": "conflict", "c-2": "created", "c-3": "created"}
    # confirmed by reading each back (the per-customer path looked every customer up)
    assert klaviyo.requests()["by_endpoint"]["GET /api/profiles"] >= 4


# --- 2.3 a cancelled or never-ending job is sent again for its rows ------------------------------------

@pytest.mark.parametrize("fate", ["cancelled", "stuck"])
def test_rows_a_job_did_not_apply_are_sent_again_and_never_reported_done(world, klaviyo, fate):
    make, account = world
    if fate == "cancelled":
        klaviyo.set_job_fates(cancel_rate=1.0, cancel_after_share=0.5)
    else:
        klaviyo.set_job_fates(stuck_rate=1.0, stuck_after_share=0.5)
    _, sync = make(BatchSettings(poll_first_s=0.05, poll_max_s=0.2, job_timeout_s=3.0, job_rounds=2),
                   merge_customers=True)
    work = customers(10)
    first = sync.run(work)
    stored = {p["attributes"]["external_id"] for p in klaviyo.profiles(account_id=account)}
    done = outcomes(first)
    assert all(cid in stored for cid, outcome in done.items() if outcome == "created")
    again = [r.item for r in first if isinstance(r, Again)]
    assert again and len(stored) < 10                      # some rows were never applied: not reported
    assert klaviyo.requests()["by_endpoint"]["POST /api/profile-bulk-import-jobs"] == 2   # sent again once

    klaviyo.set_job_fates()                                 # Klaviyo recovers
    _, sync = make(merge_customers=True)
    done.update(outcomes(sync.run(again)))
    assert len(done) == 10 and set(done.values()) <= {"created", "updated"}
    assert len(klaviyo.profiles(account_id=account)) == 10


# --- 2.4 a customer without an email is one profile, never one with only our id ----------------------

@pytest.mark.parametrize("path", ["batch", "per-customer"])
def test_a_customer_without_email_ends_as_one_profile_with_its_phone(world, klaviyo, path):
    make, account = world
    rt, sync = make(merge_customers=True)
    item = customers(1, email=None)[0]
    if path == "batch":
        got = outcomes(sync.run([item]))["c-0"]
    else:
        got = sync_customer(rt.deps("t"), "run-1", item.customer).outcome.value
    assert got == "created"
    profiles = klaviyo.profiles(account_id=account)
    assert len(profiles) == 1
    assert profiles[0]["attributes"]["phone_number"] == "+35679120000"


@pytest.mark.parametrize("path", ["batch", "per-customer"])
def test_no_profile_is_created_with_only_our_external_id(world, klaviyo, path):
    """No email, and the phone belongs to someone else: nothing can key the profile, so none is made."""
    make, account = world
    rt, sync = make(merge_customers=True)
    klaviyo.seed_profiles([{"email": "someone@example.com", "phone_number": "+35679120000"}], account_id=account)
    item = customers(1, email=None)[0]
    if path == "batch":
        got = outcomes(sync.run([item]))["c-0"]
    else:
        got = sync_customer(rt.deps("t"), "run-1", item.customer).outcome.value
    assert got == "rejected"
    assert [p["attributes"]["email"] for p in klaviyo.profiles(account_id=account)] == ["someone@example.com"]
    assert klaviyo.merges() == []


# --- 2.5 two people are never merged ---------------------------------------------------------------

def test_a_phone_held_by_another_profile_is_found_before_it_is_sent_and_nobody_is_merged(world, klaviyo):
    make, account = world
    rt, sync = make(merge_customers=True)
    klaviyo.seed_profiles([{"email": "someone@example.com", "phone_number": "+35679120001"}], account_id=account)
    got = outcomes(sync.run(customers(3)))
    assert got == {"c-0": "created", "c-1": "created", "c-2": "created"}
    assert klaviyo.merges() == []
    assert of(klaviyo, account, email="someone@example.com")[0]["attributes"]["phone_number"] == "+35679120001"
    assert "phone_number" not in of(klaviyo, account, email="person1@example.com")[0]["attributes"] or \
        of(klaviyo, account, email="person1@example.com")[0]["attributes"]["phone_number"] is None
    assert "phone not sent" in rt.store.history("t", "c-1")[0]["reason"]


def test_two_batches_at_once_never_send_one_phone_for_two_customers(world, klaviyo):
    """Reads lag: the second batch cannot see the phone the first just sent. The claim in Redis can."""
    make, account = world
    klaviyo.set_read_lag(LONG_S)
    _, first = make(merge_customers=True)
    _, second = make(merge_customers=True)
    a = Item(task_id="task-a", tenant="t", run="run-1", customer=loyale_payload(id="a", email="a@example.com"))
    b = Item(task_id="task-b", tenant="t", run="run-1", customer=loyale_payload(id="b", email="b@example.com"))
    assert outcomes(first.run([a])) == {"a": "created"}
    assert outcomes(second.run([b])) == {"b": "created"}
    assert klaviyo.merges() == []
    assert len(klaviyo.profiles(account_id=account)) == 2


def test_a_not_found_row_is_treated_like_a_duplicate_not_a_rejection(world, klaviyo):
    """Klaviyo answers a row carrying a profile `id` that was merged away with `not_found`: the customer
    goes to the per-customer path, which looks again, instead of being recorded `rejected`; any other
    refusal of the row stands as the customer's rejection."""
    make, _ = world
    rt, sync = make(merge_customers=True)
    plan = Plan(Outcome.UPDATED, "1 field(s) written", profile_id="01GONE", write="update",
                changes=(FieldChange("first_name", "Old", "Jane", "overwrite"),))
    merged_away, invalid = (Planned(Work(item), Ready(parse_customer(item.customer)[0], MappedProfile(fields={}), []),
                                    plan) for item in customers(2))
    payload = {"type": "profile", "id": "01GONE", "attributes": {"first_name": "Jane"}}
    assert not sync._refused_row(merged_away, ImportError_("not_found", "A profile with id 01GONE does not exist.",
                                                           "/data", payload))
    assert merged_away.work.solo and merged_away.work.result is None
    assert not sync._refused_row(invalid, ImportError_("invalid", "Invalid input.", "/data", payload))
    assert invalid.work.result is not None and invalid.work.result.outcome == Outcome.REJECTED


# --- 2.6 a phone Klaviyo refuses is dropped; the rest of the customer syncs -------------------------

@pytest.mark.parametrize("path", ["batch", "per-customer"])
def test_a_phone_of_an_unsupported_region_is_dropped_with_a_warning(world, klaviyo, path):
    make, account = world
    rt, sync = make(merge_customers=True)
    item = customers(2)[1]
    item.customer.update(areaCode="+39", mobileNumber="3123456789")
    if path == "batch":
        got = outcomes(sync.run([customers(1)[0], item]))
        assert got == {"c-0": "created", "c-1": "created"}
    else:
        assert sync_customer(rt.deps("t"), "run-1", item.customer).outcome.value == "created"
    profile = of(klaviyo, account, email="person1@example.com")[0]
    assert not profile["attributes"].get("phone_number")
    assert profile["attributes"]["first_name"] == "Jane"
    assert "phone not sent" in rt.store.history("t", "c-1")[0]["reason"]


# --- 2.7 locks outlive the slow jobs they protect ---------------------------------------------------

def test_a_customers_lock_is_held_for_as_long_as_its_bulk_job_runs(world, klaviyo, redis_url):
    """The job runs far longer than the lock's TTL: the lock is refreshed, so an incremental sync of the
    customer waits for it instead of writing under an older backfill snapshot still in flight."""
    make, account = world
    klaviyo.set_job_timing(job_seconds=LONG_S)
    # A TTL ten times the refresh interval (0.2 s): only a lock that is never refreshed lapses.
    rt, sync = make(BatchSettings(poll_first_s=0.05, poll_max_s=0.2, lock_ttl_s=2.0), merge_customers=True)
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(sync.run(customers(1))))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not klaviyo.requests()["by_endpoint"].get("POST /api/profile-bulk-import-jobs"):
            assert time.monotonic() < deadline, "the batch never submitted its job"
            time.sleep(0.05)
        for _ in range(4):                                  # > 3 TTLs in all: an unrefreshed lock expires
            time.sleep(1.6)
            assert not rt.store.lock_customer("t", "c-0", "incremental-sync"), "the lock lapsed mid-job"
    finally:
        klaviyo.advance_clock(LONG_S)
        runner.join(60)
    assert outcomes(results) == {"c-0": "created"}
    assert rt.store.lock_customer("t", "c-0", "incremental-sync")   # released once the job is done


# --- 2.8 merge off never changes a value, even while reads lag --------------------------------------

def test_merge_off_never_overwrites_a_profile_the_lookup_cannot_see_yet(world, klaviyo):
    """A profile this service wrote a moment ago (filters do not show it yet) is edited by the brand; a
    backfill with merge off must not overwrite the edit through the bulk upsert."""
    make, account = world
    klaviyo.set_read_lag(LONG_S)
    rt, sync = make(merge_customers=False)
    payload = customers(1)[0].customer
    assert sync_customer(rt.deps("t"), "run-0", payload).outcome.value == "created"
    profile_id = of(klaviyo, account, email="person0@example.com")[0]["id"]
    rt.deps("t").klaviyo.update_profile(profile_id, {"first_name": "Edited in Klaviyo"})
    changed = customers(1, firstName="Janet", updatedDate="2026-03-01T00:00:00Z")
    got = outcomes(sync.run(changed))
    assert got == {"c-0": "skipped_existing"}
    assert of(klaviyo, account, email="person0@example.com")[0]["attributes"]["first_name"] == "Edited in Klaviyo"


# --- 2.9 an email change updates the customer's profile, never a second one -------------------------

@pytest.mark.parametrize("path", ["batch", "per-customer"])
def test_an_email_change_updates_the_same_profile(world, klaviyo, path):
    make, account = world
    klaviyo.set_read_lag(LONG_S)
    rt, sync = make(merge_customers=True)
    assert outcomes(sync.run(customers(1))) == {"c-0": "created"} if path == "batch" else \
        sync_customer(rt.deps("t"), "run-0", customers(1)[0].customer).outcome.value == "created"
    if path == "batch":
        # A bulk import returns no profile ids: the batch finds the profile by our id once filters show it.
        klaviyo.advance_clock(LONG_S)
    moved = customers(1, email="moved@example.com", updatedDate="2026-03-01T00:00:00Z")[0]
    moved.run = "run-2"
    if path == "batch":
        got = outcomes(sync.run([moved]))["c-0"]
    else:
        got = sync_customer(rt.deps("t"), "run-2", moved.customer).outcome.value
    assert got == "updated"
    profiles = klaviyo.profiles(account_id=account)
    assert [p["attributes"]["email"] for p in profiles] == ["moved@example.com"]


# --- 2.10 consent under suppression lag -----------------------------------------------------------

def created_then_opted_out(world, klaviyo):
    """Customer c-0 (p@example.com) created, then opted out: its suppression is sent and, with the lag
    set to minutes, not applied yet."""
    make, _ = world
    klaviyo.set_suppression_lag(LONG_S)
    rt, _ = make(merge_customers=True)
    deps = rt.deps("t")
    assert sync_customer(deps, "r1", loyale_payload(id="c-0", email="p@example.com")).outcome.value == "created"
    out = loyale_payload(id="c-0", email="p@example.com", marketingSub=False, updatedDate="2026-02-01T00:00:00Z")
    assert sync_customer(deps, "r2", out).outcome.value == "suppressed"
    return rt, deps


def test_an_opt_out_then_opt_in_inside_the_lag_ends_marketable(world, klaviyo):
    account = world[1]
    rt, deps = created_then_opted_out(world, klaviyo)
    back = loyale_payload(id="c-0", email="p@example.com", updatedDate="2026-03-01T00:00:00Z")
    assert sync_customer(deps, "r3", back).outcome.value == "unsuppressed"   # the pending suppression is lifted
    klaviyo.advance_clock(LONG_S + 1)
    assert not _suppressed(klaviyo, account, "p@example.com")


def test_an_opt_in_then_opt_out_inside_the_lag_ends_suppressed(world, klaviyo):
    make, account = world
    rt, _ = make(merge_customers=True)
    deps = rt.deps("t")
    klaviyo.set_suppression_lag(0)
    assert sync_customer(deps, "r1", loyale_payload(id="c-0", email="p@example.com")).outcome.value == "created"
    out = loyale_payload(id="c-0", email="p@example.com", marketingSub=False, updatedDate="2026-02-01T00:00:00Z")
    assert sync_customer(deps, "r2", out).outcome.value == "suppressed"
    klaviyo.advance_clock(1)
    assert _suppressed(klaviyo, account, "p@example.com")
    klaviyo.set_suppression_lag(LONG_S)
    back = loyale_payload(id="c-0", email="p@example.com", updatedDate="2026-03-01T00:00:00Z")
    assert sync_customer(deps, "r3", back).outcome.value == "unsuppressed"
    again = loyale_payload(id="c-0", email="p@example.com", marketingSub=False, updatedDate="2026-04-01T00:00:00Z")
    # Klaviyo still shows the old suppression, but our unsuppress is on its way: suppress again
    assert sync_customer(deps, "r4", again).outcome.value == "suppressed"
    klaviyo.advance_clock(LONG_S + 1)
    assert _suppressed(klaviyo, account, "p@example.com")


def _suppressed(klaviyo, account, email: str) -> bool:
    return bool(reasons(of(klaviyo, account, email=email)[0]))


# --- 2.11 compact filter values -----------------------------------------------------------------

def test_filter_values_are_compact_json_as_klaviyos_sdk_sends_them(world, klaviyo):
    assert filter_value(["a@x.com", "b@x.com"]) == '["a@x.com","b@x.com"]'
    make, _ = world
    rt, _ = make()
    list(rt.deps("t").klaviyo.find_many("email", ["a@x.com", "b@x.com"]))
    sent = [r for r in klaviyo.request_log() if r.get("path", "").startswith("/api/profiles")]
    assert sent and 'any(email,["a@x.com","b@x.com"])' in str(sent[-1])


# --- 2.13 a 409 on create re-plans at once ---------------------------------------------------------

def test_a_409_on_create_re_plans_against_the_duplicate_profile_at_once(world, klaviyo):
    make, account = world
    klaviyo.set_read_lag(LONG_S)
    rt, _ = make(merge_customers=True)
    client: KlaviyoClient = rt.deps("t").klaviyo
    client.create_profile({"email": "person0@example.com", "first_name": "Old"})     # hidden from filters
    result = sync_customer(rt.deps("t"), "run-1", customers(1)[0].customer)
    assert result.outcome.value == "updated"
    assert [p["attributes"]["first_name"] for p in klaviyo.profiles(account_id=account)] == ["Jane"]
    counts = klaviyo.requests()["by_endpoint"]
    assert counts["POST /api/profiles"] == 2            # ours (the test's create, then the sync's 409)
    assert counts["PATCH /api/profiles/{id}"] == 1


# --- 2.14 a 429 while polling a job -------------------------------------------------------------

def test_a_429_while_polling_a_job_backs_the_tenant_off_and_the_job_is_not_lost(world, klaviyo):
    make, account = world
    # Polls: 1 per 3 s burst window, so the second poll of the job (0.01 s after the first) is throttled
    # however loaded the machine (with 1 per 0.02 s, a slow machine spaced its polls beyond the window).
    klaviyo.set_knobs(rate_limits_enabled=True, rate_limit_scale=0.1, window_scale=3.0)
    _, sync = make(BatchSettings(poll_first_s=0.01, poll_max_s=0.01), merge_customers=True)
    got = outcomes(sync.run(customers(3)))
    assert got == {"c-0": "created", "c-1": "created", "c-2": "created"}
    assert sync.throttled and all(tenant == "t" for tenant, _ in sync.throttled)
    assert klaviyo.requests()["by_endpoint"]["POST /api/profile-bulk-import-jobs"] == 1


# --- 2.16 owned properties follow Loyale when they become empty (merge on only) -----------------

@pytest.mark.parametrize("path", ["batch", "per-customer"])
@pytest.mark.parametrize("merge_customers", [True, False])
def test_levels_loyale_emptied_are_unset_with_merge_on_and_kept_with_merge_off(world, klaviyo, path, merge_customers):
    make, account = world
    rt, sync = make(merge_customers=merge_customers)
    klaviyo.seed_profiles([{"email": "person0@example.com", "external_id": "c-0",
                            "properties": {"Levels": ["Gold"], "Tags": ["vip"], "Theirs": "x"}}], account_id=account)
    item = customers(1, levelNames=[], tags=[])[0]
    if path == "batch":
        outcomes(sync.run([item]))
    else:
        sync_customer(rt.deps("t"), "run-1", item.customer)
    properties = of(klaviyo, account, email="person0@example.com")[0]["attributes"]["properties"]
    assert properties.get("Theirs") == "x"               # not ours: never cleared
    if merge_customers:
        assert "Levels" not in properties and "Tags" not in properties
    else:
        assert properties["Levels"] == ["Gold"] and properties["Tags"] == ["vip"]
    sent = str(klaviyo.request_log())
    assert '"Levels":null' not in sent.replace(" ", "") and "'Levels': None" not in sent


def test_pending_suppressions_are_rechecked_until_klaviyo_shows_them_and_resent_if_they_did_not_land(world, klaviyo):
    """Jobs for one email may land in either order: the re-check reads the profile once the job is done
    and sends Loyale's last wish again where Klaviyo does not show it."""
    account = world[1]
    rt, deps = created_then_opted_out(world, klaviyo)

    waiting = recheck_suppressions(rt.store, deps.klaviyo, "t", overdue_s=LONG_S * 10)
    assert (waiting.waiting, waiting.settled, waiting.resent) == (1, 0, 0)      # the job is still running

    klaviyo.advance_clock(LONG_S + 1)
    deps.klaviyo.unsuppress(["p@example.com"])          # an older opt-in's job landing after ours
    klaviyo.advance_clock(LONG_S + 1)
    assert not _suppressed(klaviyo, account, "p@example.com")
    resent = recheck_suppressions(rt.store, deps.klaviyo, "t", overdue_s=LONG_S * 10)
    assert resent.resent == 1
    klaviyo.advance_clock(LONG_S + 1)
    settled = recheck_suppressions(rt.store, deps.klaviyo, "t", overdue_s=LONG_S * 10)
    assert settled.settled == 1 and rt.store.pending_suppressions("t") == {}
    assert _suppressed(klaviyo, account, "p@example.com")


def test_the_beat_schedule_rechecks_pending_suppressions(redis_url):
    from producers.schedule import beat_schedule
    schedule = beat_schedule(Settings(redis_url=redis_url, suppression_recheck_interval_s=42), {})
    assert schedule["suppressions"]["task"] == "sync.recheck_suppressions"
    assert schedule["suppressions"]["schedule"] == 42
    import producers.tasks  # noqa: F401  (registers the task on the app)
    from worker.app import app
    assert "sync.recheck_suppressions" in app.tasks
