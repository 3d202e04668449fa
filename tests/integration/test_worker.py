"""The Celery task's error handling with a real worker process: pause, give up, requeue."""

from __future__ import annotations

import redis

from tests.builders import loyale_payload
from tests.harness import WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import build_scenario
from tests.integration.test_backfill import cli, run_id_from
from worker.app import create_app
from worker.settings import Settings
from worker.store import Store


def store_for(redis_url: str) -> Store:
    return Store(redis.Redis.from_url(redis_url, decode_responses=True))


def test_a_revoked_key_pauses_the_tenant_with_one_clear_error_not_thousands(loyale, klaviyo, redis_url):
    """Given a brand whose Klaviyo key was revoked, when a backfill of 300 customers runs, then the tenant
    is paused after the first 401, one error names the tenant and the fix, every customer ends `failed`
    with that reason, and Klaviyo sees a handful of requests, not one per customer."""
    scenario = build_scenario(loyale, klaviyo, "revoked", customers=300, merge_customers=True, seed=41)
    klaviyo.revoke_key(scenario.key)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}))
    worker = WorkerProcess.backfill(env).start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait")
    finally:
        worker.stop()
    assert result.returncode == 0, result.stderr
    store = store_for(redis_url)
    info = store.run(run_id_from(result.stdout))
    # customers refused before any request (no email and no phone...) stay `invalid`
    assert set(info.counts) <= {"failed", "invalid"} and info.counts["failed"] >= 0.95 * info.expected
    assert "rejected the private API key" in (store.tenant_paused("revoked") or "")
    assert all("tenant paused" in p["reason"] for p in store.problems(info.id).values() if p["outcome"] == "failed")
    paused_lines = [line for line in worker.log().splitlines() if '"tenant_paused"' in line]
    assert len(paused_lines) == 1 and "revoked" in paused_lines[0] and scenario.key not in worker.log()
    assert klaviyo.requests()["total"] <= 4


def test_retries_back_off_then_give_up_as_failed_and_the_rest_of_the_run_goes_on(loyale, klaviyo, redis_url):
    """Given Klaviyo answering 503 to every request, each customer is retried up to SYNC_MAX_ATTEMPTS with
    backoff and then recorded `failed` with the last error; the run still ends."""
    scenario = build_scenario(loyale, klaviyo, "down", customers=20, merge_customers=True, seed=42)
    klaviyo.set_knobs(error_rate=1.0, error_statuses=[503])
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_MAX_ATTEMPTS="3", SYNC_RETRY_BASE_S="0.05", SYNC_RETRY_MAX_S="0.2")
    worker = WorkerProcess(env, concurrency=2).start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait", "--per-customer")
    finally:
        worker.stop()
    store = store_for(redis_url)
    info = store.run(run_id_from(result.stdout))
    valid = info.expected - info.counts.get("invalid", 0)
    assert info.counts.get("failed") == valid
    assert all("gave up after 3 attempts: Klaviyo answered 503" in p["reason"]
               for p in store.problems(info.id).values() if p["outcome"] == "failed")
    # each valid customer's first Klaviyo call was tried exactly 3 times (every answer was a 503)
    assert klaviyo.requests()["by_endpoint"]["GET /api/profiles"] == 3 * valid


def test_messages_enqueued_by_the_previous_version_are_still_synced(loyale, klaviyo, redis_url):
    """A deploy mid-run strands nothing: messages in the previous version's JSON (a `customer` dict in
    Loyale's camelCase keys plus `levelNames`..., optional `attempt`/`throttles`/`collisions`) are read by
    both tasks and end with their outcome."""
    scenario = build_scenario(loyale, klaviyo, "oldmsgs", customers=1, merge_customers=True, seed=44)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}))
    store = store_for(redis_url)
    run = store.create_run(scenario.tenant_id, "backfill")
    old = {f"old-{n}": loyale_payload(id=f"old-{n}", email=f"old-{n}@example.com", mobileNumber=f"7900000{n}",
                                      marketingSub=True) for n in range(3)}
    store.mark_enqueued(run, list(old))
    store.finish_producing(run, len(old))
    app = create_app(Settings(redis_url=redis_url))
    app.send_task("sync.customer", kwargs={"tenant": scenario.tenant_id, "run": run, "customer": old["old-0"]},
                  queue="sync.incremental")
    app.send_task("sync.customer", queue="sync.incremental", kwargs={
        "tenant": scenario.tenant_id, "run": run, "customer": old["old-1"], "attempt": 2, "throttles": 1})
    app.send_task("sync.backfill_customer", queue="sync.backfill", kwargs={
        "tenant": scenario.tenant_id, "run": run, "customer": old["old-2"], "attempt": 2, "throttles": 1,
        "collisions": 1})
    workers = [WorkerProcess(env, name="old-inc").start(), WorkerProcess.backfill(env, name="old-bf").start()]
    try:
        wait_for(lambda: None not in store.outcomes_of(run, list(old)), timeout_s=90,
                 what="every old-format message synced")
    finally:
        for worker in workers:
            worker.stop()
    assert store.outcomes_of(run, list(old)) == ["created"] * 3
