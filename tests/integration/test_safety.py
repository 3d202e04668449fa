"""Preview before a merge, and undo after it: real Redis, a real worker, both fakes over HTTP."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

from tests.harness import sync_env, write_tenants_file
from tests.integration.scenario import build_scenario, mapped_fields
from tests.integration.test_backfill import backfill_with_worker, cli, run_id_from


def writes(klaviyo, account_id: str) -> list[str]:
    return [e["endpoint"] for e in klaviyo.request_log()
            if e["account_id"] == account_id and not e["endpoint"].startswith("GET ")]


def test_preview_shows_what_a_merge_would_do_and_writes_nothing(loyale, klaviyo, redis_url, store):
    klaviyo.set_knobs(rate_limit_scale=50, request_log_size=10_000)
    # A phone Klaviyo refuses for its region is known only once Klaviyo refused it (then remembered):
    # a preview cannot foresee the first refusal (README, "Safety"), so this comparison runs without.
    klaviyo.set_unsupported_phone_regions([])
    scenario = build_scenario(loyale, klaviyo, "pre", customers=120, merge_customers=False, seed=81)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_LIMITER_RATE_SCALE="50")
    before = {p["id"]: p["attributes"] for p in klaviyo.profiles(account_id=scenario.account_id)}

    whole = cli(env, "preview", "--all", "--merge-customers", "on", "--json")
    assert whole.returncode == 0, whole.stderr
    report = json.loads(whole.stdout)
    assert report["settings"]["merge_customers"] is True and report["settings"]["customers"] == 120
    lookups = [e for e in klaviyo.request_log()
               if e["account_id"] == scenario.account_id and e["endpoint"] == "GET /api/profiles"]
    assert writes(klaviyo, scenario.account_id) == []
    assert len(lookups) <= 4, "a whole-scheme preview uses batched lookups (2 per 100 customers)"
    # A seeded customer: Klaviyo's first name would be overwritten by Loyale's.
    seeded_id = next(cid for cid in scenario.seeded if cid not in scenario.conflict_ids
                     and next(c for c in report["customers"] if c["customer_id"] == cid)["outcome"] == "updated")
    rows = {r["field"]: r for r in next(c for c in report["customers"] if c["customer_id"] == seeded_id)["changes"]}
    assert rows["first_name"]["klaviyo"] == scenario.seeded[seeded_id]["first_name"]
    assert rows["first_name"]["action"] == "overwrite"
    assert rows["last_name"]["action"] == "fill"       # seeded without a last name

    # The same customers under fill_empty: the first name is kept, the empty last name filled.
    sample = cli(env, "preview", "--sample", "120", "--merge-customers", "off", "--existing-profiles", "fill_empty",
                 "--csv")
    assert sample.returncode == 0, sample.stderr
    table = list(csv.DictReader(io.StringIO(sample.stdout)))
    mine = {r["field"]: r["action"] for r in table if r["customer_id"] == seeded_id}
    assert mine["first_name"] == "keep" and mine["last_name"] == "fill"
    assert {p["id"]: p["attributes"] for p in klaviyo.profiles(account_id=scenario.account_id)} == before

    # The preview's counts are what a backfill with merge on then does.
    merged = {**scenario.tenant_config(), "merge_customers": True}
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: merged}), SYNC_LIMITER_RATE_SCALE="50")
    result = backfill_with_worker(env, scenario.tenant_id)
    assert result.returncode == 0, result.stderr
    outcomes = store.outcomes(run_id_from(result.stdout))
    emails = Counter(m.email for c in loyale.customers(scenario.scheme_id)
                     if (m := mapped_fields(c, scenario.level_names)) is not None and m.email)
    shared = {c["id"] for c in loyale.customers(scenario.scheme_id)
              if (m := mapped_fields(c, scenario.level_names)) is not None and emails[m.email] > 1}
    # Customers sharing an email (differing only in case) are decided in turn by the sync; elsewhere the
    # preview said exactly what the backfill then did.
    differ = {c["customer_id"]: (c["outcome"], outcomes.get(c["customer_id"])) for c in report["customers"]
              if c["customer_id"] not in shared and c["outcome"] != outcomes.get(c["customer_id"])}
    assert differ == {}


def test_undo_restores_overwritten_values_except_those_changed_since(loyale, klaviyo, redis_url, store):
    klaviyo.set_knobs(rate_limit_scale=50)
    scenario = build_scenario(loyale, klaviyo, "undo", customers=60, merge_customers=True, seed=82)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_LIMITER_RATE_SCALE="50")
    before = {p["id"]: p["attributes"] for p in klaviyo.profiles(account_id=scenario.account_id)}
    result = backfill_with_worker(env, scenario.tenant_id)
    assert result.returncode == 0, result.stderr
    run = run_id_from(result.stdout)
    journal = store.journal(run)
    overwritten = sorted({e["profile_id"] for e in journal})
    assert len(overwritten) >= 5 and all(e["old"] is not None for e in journal)
    after_merge = {p["id"]: p["attributes"] for p in klaviyo.profiles(account_id=scenario.account_id)}
    assert all(after_merge[pid]["first_name"] != before[pid]["first_name"] for pid in overwritten)

    # The brand edits one merged profile in Klaviyo after our run: that edit must survive the undo.
    edited = overwritten[0]
    with klaviyo.api_client(scenario.key) as api:
        answer = api.patch(f"/api/profiles/{edited}", json={"data": {"type": "profile", "id": edited,
                                                                     "attributes": {"first_name": "Brand edit"}}})
        assert answer.status_code == 200, answer.text

    dry = cli(env, "undo", run, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "nothing was written" in dry.stdout
    assert {p["id"]: p["attributes"] for p in klaviyo.profiles(account_id=scenario.account_id)}[overwritten[1]] \
        == after_merge[overwritten[1]]

    undone = cli(env, "undo", run)
    assert undone.returncode == 0, undone.stderr
    now = {p["id"]: p["attributes"] for p in klaviyo.profiles(account_id=scenario.account_id)}
    assert now[edited]["first_name"] == "Brand edit"
    for pid in overwritten[1:]:
        for entry in (e for e in journal if e["profile_id"] == pid):
            group, _, name = entry["field"].partition(".")
            value = now[pid].get(group, {}).get(name) if name else now[pid].get(group)
            assert value == entry["old"], (pid, entry["field"], value, entry["old"])
    undo_run = next(r for r in store.runs(scenario.tenant_id) if r.kind == "undo")
    assert undo_run.done and undo_run.counts == {"conflict": 1, "updated": len(overwritten) - 1}
    assert "first_name" in store.problems(undo_run.id)[
        next(e["customer_id"] for e in journal if e["profile_id"] == edited)]["reason"]

    # Undoing again finds everything already back (and the brand's edit still a conflict).
    again = cli(env, "undo", run)
    assert again.returncode == 0, again.stderr
    assert {p["id"]: p["attributes"] for p in klaviyo.profiles(account_id=scenario.account_id)} == now


def test_preview_lists_the_loyalty_events_a_backfill_would_send_and_sends_none(loyale, klaviyo, redis_url, store):
    """Given customers last synced holding a level Loyale no longer gives them, when `preview --all --json`
    runs, then it lists a `Loyale Level Lost` for each, `sent` only for a customer with consent and a
    Klaviyo profile, dropped for the others; and nothing is sent, recorded or remembered."""
    klaviyo.set_knobs(rate_limit_scale=50, request_log_size=10_000)
    scenario = build_scenario(loyale, klaviyo, "pev", customers=40, merge_customers=True, seed=83)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_LIMITER_RATE_SCALE="50")
    customers = loyale.customers(scenario.scheme_id)
    store.remember_levels(scenario.tenant_id, {c["id"]: ["Founders"] for c in customers})

    result = cli(env, "preview", "--all", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    outcome_of = {c["customer_id"]: c["outcome"] for c in report["customers"]}
    lost = {e["customer_id"]: e for e in report["events"] if e["event"] == "Loyale Level Lost"}
    # Not for a record the sync cannot read (invalid): its levels are not known to have changed.
    with_levels = {c["id"] for c in customers if isinstance(c.get("Levels"), list)
                   and outcome_of.get(c["id"]) not in (None, "invalid")}
    assert set(lost) == with_levels, {cid: outcome_of.get(cid) for cid in with_levels ^ set(lost)}
    consent = {c["id"] for c in customers if c.get("marketingSub") is True and not c.get("deleted")
               and not c.get("onHold")}
    for customer_id, event in lost.items():
        if customer_id not in consent:
            expected = "dropped_no_consent"
        elif outcome_of[customer_id] in ("updated", "unchanged", "skipped_existing", "unsuppressed"):
            expected = "sent"                       # a profile of the customer's own exists
        else:
            expected = "dropped_no_profile"         # created by the backfill, or someone else's (conflict)
        assert event["outcome"] == expected, (customer_id, outcome_of[customer_id], event)
    assert {e["outcome"] for e in lost.values()} >= {"sent", "dropped_no_profile"}
    assert writes(klaviyo, scenario.account_id) == []
    assert all(store.event_history(scenario.tenant_id, c["id"]) == [] for c in customers)
    assert set(map(tuple, store.synced_levels(scenario.tenant_id, [c["id"] for c in customers]).values())) == \
        {("Founders",)}
