"""The operators' commands end to end: `runs`, `status`, `report`, `customer`, `failures` and `retry-failures`
run as `loyale-sync` subprocesses against real Redis, a real worker process and both fakes over HTTP."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from tests.harness import WorkerProcess, sync_env, write_tenants_file
from tests.integration.scenario import Scenario, build_scenario, check_final_state
from tests.integration.test_backfill import cli, run_id_from

#: Loyale accepts this address; Klaviyo refuses it (400 invalid email), so the customer ends `rejected`.
REFUSED_EMAIL = "josé@example.com"


def refused_customer() -> dict[str, Any]:
    return {"email": REFUSED_EMAIL, "firstName": "José", "marketingSub": True, "deleted": False, "onHold": False}


#: Opted in with neither email nor phone: refused before sending (`invalid`).
UNREACHABLE = {"firstName": "Nobody", "marketingSub": True, "deleted": False, "onHold": False}


def env_for(redis_url: str, scenario: Scenario, **extra: str) -> dict[str, str]:
    # wide enough that rich never wraps a table cell the assertions look for
    return sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                    SYNC_LIMITER_RATE_SCALE="50", COLUMNS="300", **extra)


def retry_run_from(output: str) -> str:
    found = re.search(r"\bretry-\d{8}T\d{6}-[0-9a-f]{4}\b", output)
    assert found, f"no retry run id in output:\n{output}"
    return found.group(0)


def test_runs_status_report_and_customer_describe_a_finished_backfill(loyale, klaviyo, redis_url, store):
    """Given a finished backfill where Klaviyo refused one customer's email, the run shows in `runs` with its
    counts, `status` prints its outcome table (and fails clearly for an unknown run), `report` gives the counts,
    the requests spent and every non-success customer with its reason as tables, JSON or CSV without keys or
    customer data, and `customer` shows a customer's ledger (or says clearly that it has none)."""
    klaviyo.set_knobs(rate_limit_scale=50)
    klaviyo.set_unsupported_phone_regions([])   # one refusal only: the email below
    scenario = build_scenario(loyale, klaviyo, "reports", customers=40, merge_customers=True, seed=61)
    [refused, unreachable] = loyale.add_customers(scenario.scheme_id, [refused_customer(), UNREACHABLE])
    env = env_for(redis_url, scenario)
    worker = WorkerProcess(env).start().wait_ready()
    try:
        backfill = cli(env, "backfill", "--tenant", scenario.tenant_id, "--per-customer", "--wait")
    finally:
        worker.stop()
    assert backfill.returncode == 0, backfill.stderr + backfill.stdout
    run_id = run_id_from(backfill.stdout)
    info = store.run(run_id)
    assert info is not None and info.done and info.counts.get("rejected") == 1 and info.counts.get("created")

    listed = cli(env, "runs", "--tenant", scenario.tenant_id, "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if run_id in line)
    assert "backfill" in row and "done" in row and f"{info.completed} / {info.expected}" in row
    for outcome, count in info.counts.items():
        assert f"{outcome} {count}" in row

    status = cli(env, "status", run_id)
    assert status.returncode == 0, status.stderr
    assert re.search(rf"created\W+{info.counts['created']}\b", status.stdout)
    assert f"loyale-sync report {run_id}" in status.stdout
    unknown = cli(env, "status", "backfill-20000101T000000-dead")
    assert unknown.returncode != 0
    assert "no run 'backfill-20000101T000000-dead'" in unknown.stderr and "Traceback" not in unknown.stderr

    as_json = cli(env, "report", run_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["run"] == run_id and document["tenant"] == scenario.tenant_id and document["state"] == "done"
    assert document["counts"] == info.counts and document["duration_s"] >= 0
    assert document["requests"]["total"] == sum(store.requests(run_id).values()) > 0
    assert "GET /api/profiles" in document["requests"]["by_endpoint"]
    problems = {p["customer_id"]: p for p in document["problems"]}
    assert {cid: p["outcome"] for cid, p in problems.items()} == \
        {cid: e["outcome"] for cid, e in store.problems(run_id).items()}
    assert problems[refused]["outcome"] == "rejected" and "Invalid email address" in problems[refused]["reason"]
    assert all(p["reason"] for p in problems.values())
    assert problems[unreachable]["outcome"] == "invalid" and "no email" in problems[unreachable]["reason"]
    emails = [c["email"].strip().lower() for c in loyale.customers(scenario.scheme_id) if c.get("email")]
    for output in (as_json.stdout, listed.stdout, status.stdout):
        assert scenario.key not in output and scenario.admin_password not in output
        assert not [e for e in emails if e and e in output.lower()], "a customer's email was printed"

    as_csv = cli(env, "report", run_id, "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    reader = csv.DictReader(io.StringIO(as_csv.stdout))
    rows = list(reader)
    assert reader.fieldnames[:3] == ["customer_id", "outcome", "reason"]
    assert {r["customer_id"]: (r["outcome"], r["reason"]) for r in rows} == \
        {cid: (p["outcome"], p["reason"]) for cid, p in problems.items()}

    tables = cli(env, "report", run_id)
    assert tables.returncode == 0, tables.stderr
    assert "Klaviyo requests" in tables.stdout and refused in tables.stdout and "Invalid email address" in tables.stdout

    history = cli(env, "customer", refused, "--tenant", scenario.tenant_id)
    assert history.returncode == 0, history.stderr
    assert run_id in history.stdout and "rejected" in history.stdout and "Invalid email address" in history.stdout
    nobody = cli(env, "customer", "no-such-customer")
    assert nobody.returncode != 0 and "no history for customer 'no-such-customer'" in nobody.stderr


def test_failures_are_listed_and_retry_failures_redrives_them_with_fresh_loyale_data(loyale, klaviyo, redis_url,
                                                                                    store):
    """Given a backfill during a Klaviyo outage (every customer that reaches Klaviyo ends `failed`), `failures`
    lists them with their reason; `retry-failures` refuses a paused tenant, and once the outage is over re-drives
    them as a new `retry` run naming its source. The customer Klaviyo then rejects stays listed until its data
    is fixed in Loyale, and a second retry of that run sends the fixed data: every customer ends as the merge
    policy says, and `customer` shows the whole story with the Klaviyo profile it got."""
    klaviyo.set_knobs(rate_limit_scale=50, error_rate=1.0, error_statuses=[503])
    scenario = build_scenario(loyale, klaviyo, "retry", customers=30, merge_customers=True, seed=62)
    [refused] = loyale.add_customers(scenario.scheme_id, [refused_customer()])
    env = env_for(redis_url, scenario, SYNC_MAX_ATTEMPTS="2", SYNC_RETRY_BASE_S="0.05", SYNC_RETRY_MAX_S="0.2")
    worker = WorkerProcess(env).start().wait_ready()
    try:
        backfill = cli(env, "backfill", "--tenant", scenario.tenant_id, "--per-customer", "--wait")
        assert backfill.returncode == 0, backfill.stderr + backfill.stdout
        backfill_run = run_id_from(backfill.stdout)
        first_outcomes = store.outcomes(backfill_run)
        failed = {cid for cid, outcome in first_outcomes.items() if outcome == "failed"}
        assert refused in failed and len(failed) >= 20

        listed = cli(env, "failures", "--tenant", scenario.tenant_id)
        assert listed.returncode == 0, listed.stderr
        assert all(cid in listed.stdout for cid in failed) and "gave up after 2 attempts" in listed.stdout
        assert f"failed and rejected customers in the last 20 runs of {scenario.tenant_id}: {len(failed)}" \
            in listed.stdout

        store.pause_tenant(scenario.tenant_id, "Klaviyo rejected the private API key")
        paused = cli(env, "retry-failures", "--tenant", scenario.tenant_id)
        assert paused.returncode != 0 and "paused" in paused.stderr and "skipped" in paused.stderr
        assert [r.kind for r in store.runs(scenario.tenant_id)] == ["backfill"]
        store.resume_tenant(scenario.tenant_id)

        klaviyo.set_knobs(error_rate=0.0)
        first = cli(env, "retry-failures", "--tenant", scenario.tenant_id, "--wait")
        assert first.returncode == 0, first.stderr + first.stdout
        retry_run = retry_run_from(first.stdout)
        info = store.run(retry_run)
        assert info.kind == "retry" and info.meta["source"] == backfill_run
        assert info.done and info.expected == len(failed) and "rejected" in first.stdout  # the outcome table
        retried = store.outcomes(retry_run)
        assert set(retried) == failed and retried[refused] == "rejected" and "failed" not in retried.values()

        still = cli(env, "failures")
        assert still.returncode == 0, still.stderr
        assert refused in still.stdout and retry_run in still.stdout
        assert not [cid for cid in failed - {refused} if cid in still.stdout], "resolved customers still listed"

        loyale.update_customer(scenario.scheme_id, refused, email="jose@example.com")
        second = cli(env, "retry-failures", "--run", retry_run, "--wait")
        assert second.returncode == 0, second.stderr + second.stdout
        fixed_run = retry_run_from(second.stdout.replace(retry_run, ""))
        assert store.run(fixed_run).meta["source"] == retry_run
        assert store.outcomes(fixed_run) == {refused: "created"}
    finally:
        worker.stop()

    none_left = cli(env, "failures", "--tenant", scenario.tenant_id)
    assert none_left.returncode == 0 and "no failed or rejected customers" in none_left.stdout
    check_final_state(scenario, loyale, klaviyo, {**first_outcomes, **retried, **store.outcomes(fixed_run)})
    ledger = store.history(scenario.tenant_id, refused)
    assert [e["outcome"] for e in ledger] == ["created", "rejected", "failed"] and ledger[0]["profile_id"]
    history = cli(env, "customer", refused)  # the only tenant is the default
    assert history.returncode == 0, history.stderr
    assert all(r in history.stdout for r in (backfill_run, retry_run, fixed_run, ledger[0]["profile_id"]))
