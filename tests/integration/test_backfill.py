"""End to end: real Redis, real Celery worker processes, both fakes over HTTP, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from pydantic import SecretStr

from producers.backfill import run_backfill
from producers.loyale import LoyaleClient
from tests.harness import REPO, RoundTrips, WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import build_scenario, check_final_state
from worker.app import create_app
from worker.broker import RedisBroker
from worker.messages import QUEUE_BACKFILL
from worker.settings import Settings

CUSTOMERS = int(os.environ.get("E2E_CUSTOMERS", "1000"))


def cli(env: dict[str, str], *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s)


def backfill_with_worker(env: dict[str, str], tenant: str) -> subprocess.CompletedProcess[str]:
    """`loyale-sync backfill --wait` with one batching worker running for its duration."""
    worker = WorkerProcess.backfill(env).start().wait_ready()
    try:
        return cli(env, "backfill", "--tenant", tenant, "--wait")
    finally:
        worker.stop()


def run_id_from(output: str) -> str:
    for word in output.split():
        if word.startswith("backfill-"):
            return word.rstrip(":")
    raise AssertionError(f"no run id in output:\n{output}")


@pytest.mark.parametrize("path", ["batched", "per-customer"])
def test_backfill_of_three_brands_ends_in_exactly_the_state_their_merge_modes_say(loyale, klaviyo, redis_url, store,
                                                                                 path):
    """Given three brands (merge on, merge off skip, merge off fill_empty) with 1,000 customers each, a
    third already in Klaviyo with conflicting data, when each runs `loyale-sync backfill --wait`, then
    every customer has exactly one outcome and Klaviyo holds exactly what the merge policy says, on the
    batched path (bulk requests) and on the per-customer path alike."""
    klaviyo.set_knobs(rate_limit_scale=50)
    scenarios = [
        build_scenario(loyale, klaviyo, "merge-on", customers=CUSTOMERS, merge_customers=True, seed=11),
        build_scenario(loyale, klaviyo, "merge-off", customers=CUSTOMERS, merge_customers=False, seed=12),
        build_scenario(loyale, klaviyo, "fill-empty", customers=CUSTOMERS, merge_customers=False,
                       existing_profiles="fill_empty", seed=13),
    ]
    tenants = write_tenants_file({s.tenant_id: s.tenant_config() for s in scenarios})
    env = sync_env(redis_url, tenants, SYNC_LIMITER_RATE_SCALE="50")  # our limiter knows the fake's scale
    flags = ["--per-customer"] if path == "per-customer" else []
    worker = (WorkerProcess(env) if flags else WorkerProcess.backfill(env)).start().wait_ready()
    try:
        for scenario in scenarios:
            result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait", *flags)
            assert result.returncode == 0, result.stderr + result.stdout
            run_id = run_id_from(result.stdout)
            info = store.run(run_id)
            assert info is not None and info.done and info.expected == len(loyale.customers(scenario.scheme_id))
            counts = check_final_state(scenario, loyale, klaviyo, store.outcomes(run_id))
            assert sum(info.counts.values()) == info.expected
            assert "skipped_no_consent" in counts and "invalid" in counts and "conflict" in counts
            assert "created" in result.stdout  # the outcome table
    finally:
        worker.stop()
    assert klaviyo.spec_violations() == []


def test_sigkilled_worker_mid_backfill_loses_and_duplicates_nothing(loyale, klaviyo, redis_url, store):
    """Given a backfill in progress, when the worker is SIGKILLed and a new one started, then the run
    still ends with every customer synced exactly once (no duplicate profile, none missing)."""
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.01)
    scenario = build_scenario(loyale, klaviyo, "killed", customers=CUSTOMERS, merge_customers=True, seed=21)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_VISIBILITY_TIMEOUT_S="10", SYNC_LIMITER_RATE_SCALE="50")
    first = WorkerProcess.backfill(env, name="first").start().wait_ready()
    result = cli(env, "backfill", "--tenant", scenario.tenant_id)
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    wait_for(lambda: (store.run(run_id).completed or 0) >= CUSTOMERS // 4, 120, what="a quarter of the run")
    first.kill()
    done_at_kill = store.run(run_id).completed
    assert done_at_kill < CUSTOMERS
    second = WorkerProcess.backfill(env, name="second").start().wait_ready()
    try:
        info = wait_for(lambda: (i := store.run(run_id)).done and i, 180, what="the run to finish")
    finally:
        second.stop()
    assert info.completed == info.expected
    check_final_state(scenario, loyale, klaviyo, store.outcomes(run_id))


def test_a_429_storm_delays_the_run_but_loses_nothing_and_retry_after_is_honoured(loyale, klaviyo, redis_url, store):
    """Given Klaviyo limits scaled far down (the fake answers many 429s), when a backfill runs, then every
    customer still ends in the expected state, and after each 429 no request of that account reaches
    Klaviyo before its Retry-After has passed (the whole tenant backs off)."""
    # Limits low enough that even a worker slowed down by a loaded machine exceeds them: 2 profile reads
    # per 0.05 s and 21 per 3 s (7 a second) against ~2.5 requests per customer. At a tenth of the
    # real limits, a worker on a busy 2-core machine stayed under them and the storm never came.
    klaviyo.set_knobs(rate_limit_scale=0.03, window_scale=0.05, request_log_size=50_000)
    scenario = build_scenario(loyale, klaviyo, "storm", customers=40, merge_customers=True, seed=31)
    # Our limiter believes the real limits (as when the brand's other integrations spend the quota),
    # so it lets far more through than the scaled-down fake accepts.
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_LIMITER_RATE_SCALE="10")
    worker = WorkerProcess(env, concurrency=2).start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait", "--per-customer")
    finally:
        worker.stop()
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    counts = check_final_state(scenario, loyale, klaviyo, store.outcomes(run_id))
    assert "failed" not in counts

    log = sorted((e for e in klaviyo.request_log() if e["account_id"] == scenario.account_id),
                 key=lambda e: e["received_ts"])
    throttled = [e for e in log if e["status"] == 429]
    assert len(throttled) >= 5, "the storm did not happen: scale the limits further down"
    # Our worker learns of a 429 when the answer arrives and tells the other processes through
    # Redis; a request already on its way in that instant is not a violation.
    propagation_s = 0.25
    early = [(t["endpoint"], round(e["received_ts"] - t["ts"], 3), t["retry_after"])
             for t in throttled for e in log
             if t["ts"] + propagation_s < e["received_ts"] < t["ts"] + float(t["retry_after"]) - 0.05]
    assert early == [], f"requests sent before Retry-After passed: {early[:5]}"


def test_the_producer_spends_a_few_redis_round_trips_per_page_not_one_per_customer(loyale, redis_url, store,
                                                                                    monkeypatch):
    """Given schemes of 100 and 300 customers (Loyale pages of 100), when the backfill producer enqueues each
    (after a first backfill that made the connections), held by the backpressure bound as in production,
    then the queue holds one message per customer and each of the two extra pages costs at most 5 Redis
    round trips (check the bound: 2; mark the page's customers in one MULTI; publish them and their
    task-sent events in one pipeline; note the page): never one per customer, as before chunks."""
    app = create_app(Settings(redis_url=redis_url))
    trips: dict[int, int] = {}
    for customers in (100, 100, 300):
        scheme = loyale.create_scheme(customers=customers, seed=11)
        with httpx.Client(timeout=10) as http:
            client = LoyaleClient(http, tenant="t", base_url=loyale.base_url, scheme_id=scheme["scheme_id"],
                                  admin_email=scheme["admin_email"],
                                  admin_password=SecretStr(scheme["admin_password"]))
            client.level_names()   # logs in and caches the levels before counting
            counter = RoundTrips(monkeypatch)
            produced = run_backfill(app=app, store=store, loyale=client, tenant="t", max_in_flight=10_000)
            trips[customers] = counter.count
            monkeypatch.undo()
        assert produced.enqueued == customers == RedisBroker(store.redis).depth(QUEUE_BACKFILL)
        store.redis.delete(QUEUE_BACKFILL)
    per_extra_page = (trips[300] - trips[100]) / 2
    assert per_extra_page <= 5, trips
    app.close()
