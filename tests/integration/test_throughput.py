"""The fleet-wide limit, deferral, backpressure and fairness, with real worker processes."""

from __future__ import annotations

import threading
import time

import redis

from fakes.processes import RedisServer
from tests.harness import WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import build_scenario
from tests.integration.test_backfill import cli, run_id_from
from worker.store import Store

PROFILES = "GET /api/profiles"


def store_for(url: str) -> Store:
    return Store(redis.Redis.from_url(url, decode_responses=True))


def test_four_worker_processes_share_one_limit_without_429s_at_over_90_percent(loyale, klaviyo, redis_url):
    """Given Klaviyo's limits scaled down (75 lookups per 12 s window) and 4 worker processes syncing
    customer by customer, the fleet gets no 429 and uses at least 90 % of the allowed rate."""
    scale = dict(rate_limit_scale=0.1, window_scale=0.2)   # GET /api/profiles: 7 per 0.2 s, 75 per 12 s
    klaviyo.set_knobs(**scale, request_log_size=10_000)
    scenario = build_scenario(loyale, klaviyo, "quota", customers=200, merge_customers=True, seed=51)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_LIMITER_RATE_SCALE="0.1", SYNC_LIMITER_WINDOW_SCALE="0.2")
    workers = [WorkerProcess(env, concurrency=1, name=f"q{i}").start() for i in range(4)]
    try:
        for w in workers:
            w.wait_ready()
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait", "--per-customer")
    finally:
        for w in workers:
            w.stop()
    assert result.returncode == 0, result.stderr
    log = [e for e in klaviyo.request_log() if e["account_id"] == scenario.account_id and e["endpoint"] == PROFILES]
    throttled = [(e["received_ts"], e["retry_after"]) for e in log if e["status"] == 429]
    # Zero on a quiet machine; a loaded one can deliver a granted request late enough to land in the
    # next fixed window (1.5 % seen with a benchmark running beside the tests). Without the shared
    # limiter, four workers get hundreds of 429s here.
    assert len(throttled) <= 0.03 * len(log), throttled
    times = sorted(e["received_ts"] for e in log)
    window_s, per_window = 12.0, 75
    # Skip the first window (it starts full) and measure whole windows after it.
    steady = [t for t in times if t >= times[0] + window_s]
    whole = int((steady[-1] - steady[0]) // window_s)
    assert whole >= 2, "run too short to measure"
    achieved = sum(1 for t in steady if t < steady[0] + whole * window_s) / whole
    print(f"achieved {achieved:.1f} lookups per {window_s}s window of {per_window}")
    assert achieved >= 0.9 * per_window, f"{achieved:.1f} lookups per window, allowed {per_window}"
    info = store_for(redis_url).run(run_id_from(result.stdout))
    assert info.deferrals > 0 and "failed" not in info.counts
    # A sync takes its two lookups' places together, so a deferral never wastes a lookup (taking them
    # one by one cost about 4.3 per customer here). A 429 does: the throttled request and the retry's
    # lookups. The 10 spare are for a loaded machine's odd retry.
    wasted_by_429s = 3 * len(throttled)
    assert len(log) <= 2 * info.completed + wasted_by_429s + 10, (
        f"{len(log)} lookups for {info.completed} customers, {len(throttled)} throttled")


def test_waiting_for_the_limit_is_a_deferral_not_a_spent_attempt(loyale, klaviyo, redis_url):
    """With one attempt allowed per customer and a limit far below the work, every customer still
    syncs: waits are countdowns that do not count as attempts (and Klaviyo sees no 429)."""
    scenario = build_scenario(loyale, klaviyo, "defer", customers=120, merge_customers=True, seed=52)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_MAX_ATTEMPTS="1", SYNC_LIMITER_RATE_SCALE="0.1", SYNC_LIMITER_WINDOW_SCALE="0.05")
    worker = WorkerProcess(env, concurrency=2).start().wait_ready()
    started = time.monotonic()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait", "--per-customer")
    finally:
        worker.stop()
    info = store_for(redis_url).run(run_id_from(result.stdout))
    assert "failed" not in info.counts and info.completed == info.expected
    assert info.deferrals >= 50
    assert klaviyo.requests()["by_status"].get("429", 0) == 0
    # 2 processes, each deferral a countdown: had they slept, 2 sleepers would serialise the waits
    assert time.monotonic() - started < 120


def test_the_backfill_producer_keeps_at_most_its_bound_on_the_queue(loyale, klaviyo, redis_url):
    scenario = build_scenario(loyale, klaviyo, "bounded", customers=1500, merge_customers=True, seed=53)
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.02)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_MAX_QUEUED_PER_TENANT="200", SYNC_BATCH_SIZE="100", SYNC_LIMITER_RATE_SCALE="50")
    store = store_for(redis_url)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for run in store.runs(scenario.tenant_id, limit=1):
                samples.append(store.enqueued_count(run.id) - run.completed)
            time.sleep(0.05)

    worker = WorkerProcess.backfill(env).start().wait_ready()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait")
    finally:
        stop.set()
        sampler.join()
        worker.stop()
    assert result.returncode == 0, result.stderr
    # the producer checks before each page of 100: at most bound + one page in flight
    assert samples and max(samples) <= 200 + 100
    assert store.run(run_id_from(result.stdout)).completed == store.run(run_id_from(result.stdout)).expected


def test_two_tenants_backfilling_at_once_share_the_workers_fairly(loyale, klaviyo, redis_url):
    """Brand A starts a 3,000-customer backfill, brand B a 600-customer one while A runs: from the moment
    B's customers are on the queue until B is done, B gets a fair share of the work (it is not stuck
    behind A's queue), and neither account sees a 429."""
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.01)
    a = build_scenario(loyale, klaviyo, "brand-a", customers=3000, merge_customers=True, seed=54)
    b = build_scenario(loyale, klaviyo, "brand-b", customers=600, merge_customers=True, seed=55)
    env = sync_env(redis_url, write_tenants_file({s.tenant_id: s.tenant_config() for s in (a, b)}),
                   SYNC_MAX_QUEUED_PER_TENANT="300", SYNC_BATCH_SIZE="100", SYNC_LIMITER_RATE_SCALE="50")
    store = store_for(redis_url)
    worker = WorkerProcess.backfill(env).start().wait_ready()
    samples: list[tuple[int, int, int]] = []   # (A completed, B enqueued, B completed)

    def latest(tenant: str):
        runs = store.runs(tenant, limit=1)
        return runs[0] if runs else None

    threads = [threading.Thread(target=cli, args=(env, "backfill", "--tenant", s.tenant_id)) for s in (a, b)]
    try:
        threads[0].start()
        wait_for(lambda: (r := latest("brand-a")) and r.completed > 0, 60, what="brand A to start")
        threads[1].start()
        while not ((rb := latest("brand-b")) and rb.done):
            ra = latest("brand-a")
            samples.append((ra.completed, store.enqueued_count(rb.id) if rb else 0, rb.completed if rb else 0))
            time.sleep(0.1)
        samples.append((latest("brand-a").completed, 600, 600))
        for t in threads:
            t.join()
        wait_for(lambda: latest("brand-a").done, 300, what="brand A to finish")
    finally:
        worker.stop()
    a_at_b_start = next(sa for sa, b_enqueued, _ in samples if b_enqueued > 0)
    a_share = samples[-1][0] - a_at_b_start
    b_share = 600
    assert b_share / (a_share + b_share) >= 0.35, f"while both ran A did {a_share}, B {b_share}"
    assert klaviyo.requests()["by_status"].get("429", 0) == 0


def test_a_state_redis_outage_loses_nothing(loyale, klaviyo, redis_url):
    """Given the ledger/limiter Redis separate from the broker, when it is down for 3 seconds in the
    middle of a run, tasks go back on the queue instead of being acknowledged, and the run completes
    with every customer's outcome recorded once."""
    state = RedisServer(appendonly=True).start()
    scenario = build_scenario(loyale, klaviyo, "blip", customers=400, merge_customers=True, seed=56)
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.01)
    env = sync_env(state.url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=redis_url, SYNC_LIMITER_RATE_SCALE="50")
    store = store_for(state.url)
    worker = WorkerProcess(env, concurrency=2).start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--per-customer")
        run_id = run_id_from(result.stdout)
        wait_for(lambda: store.run(run_id).completed >= 50, 60, what="the run to get going")
        state.stop()
        time.sleep(3)   # the outage itself, not a wait for a result
        state.start()
        info = wait_for(lambda: (i := store.run(run_id)).done and i, 240, what="the run to finish")
    finally:
        worker.stop()
        state.cleanup()
    assert info.completed == info.expected == 400 and "failed" not in info.counts


def test_a_backfill_through_real_workers_is_synced_in_few_large_batches(loyale, klaviyo, redis_url):
    """Batches grow with the backlog: 3,000 customers through two batching workers at Klaviyo's real
    limits cost about one lookup per hundred plus a few bulk jobs, not a job every flush interval."""
    klaviyo.set_knobs(request_log_size=20_000)
    scenario = build_scenario(loyale, klaviyo, "few-batches", customers=3000, merge_customers=True, seed=57)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BATCH_SIZE="5000", SYNC_BATCH_FLUSH_INTERVAL_S="0.5")
    workers = [WorkerProcess.backfill(env, concurrency=1, name=f"few{i}").start() for i in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait")
    finally:
        for w in workers:
            w.stop()
    assert result.returncode == 0, result.stderr
    info = store_for(redis_url).run(run_id_from(result.stdout))
    assert info.completed == info.expected == 3000
    log = [e for e in klaviyo.request_log() if e["account_id"] == scenario.account_id]
    jobs = sum(1 for e in log if e["endpoint"] == "POST /api/profile-bulk-import-jobs")
    print(f"{len(log)} requests ({len(log) / 3000:.4f} per customer), {jobs} bulk import jobs")
    # Flushing every half second whatever has arrived (celery-batches' own timer) costs several
    # times this: dozens of small jobs, each with its polls and a partly filled lookup.
    assert jobs <= 12, f"{jobs} bulk import jobs for 3,000 customers"
    assert len(log) <= 0.025 * 3000, f"{len(log)} requests for 3,000 customers"
