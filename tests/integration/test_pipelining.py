"""Pipelined backfills: a backfill worker keeps many bulk import jobs in flight for one account (its
batches run on threads, the jobs are polled by one watcher), and a customer's outcome is recorded only
once Klaviyo confirmed its job."""

from __future__ import annotations

import pytest

from fakes.processes import procfile_backfill_worker
from tests.harness import WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import build_scenario, check_final_state
from tests.integration.test_backfill import cli, run_id_from

pytestmark = pytest.mark.integration

BATCH = 25
JOB_STATUS = "GET /api/profile-bulk-import-jobs/{job_id}"


def test_a_backfill_keeps_a_bulk_job_in_flight_per_thread_and_records_no_write_before_klaviyo_confirms_it(
        loyale, klaviyo, redis_url, store):
    """Given Klaviyo's bulk jobs held (a frozen fake clock and jobs of 60 s), when a backfill of more
    customers than the worker's threads take in one round runs on a backfill worker started as the
    Procfile starts it (threads), then one account has a job in flight per thread at once, the jobs are
    polled while they run, and no customer is reported created or updated; once the jobs complete, every
    customer ends as the merge policy says."""
    pool, threads = procfile_backfill_worker()
    customers = threads * BATCH + 2 * BATCH
    klaviyo.set_knobs(rate_limit_scale=50, request_log_size=50_000)
    scenario = build_scenario(loyale, klaviyo, "pipelined", customers=customers, merge_customers=True, seed=41,
                              existing_share=1000)
    klaviyo.freeze_clock()
    klaviyo.set_job_timing(job_seconds=60)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_LIMITER_RATE_SCALE="50", SYNC_BATCH_SIZE=str(BATCH), SYNC_BATCH_FLUSH_INTERVAL_S="0.2")
    worker = WorkerProcess.backfill(env, concurrency=threads, pool=pool).start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id)
        assert result.returncode == 0, result.stderr
        run_id = run_id_from(result.stdout)

        def held_jobs() -> list[dict]:
            return [j for j in klaviyo.bulk_jobs(scenario.account_id) if j["completed"] is None]

        wait_for(lambda: len(held_jobs()) >= threads, 120, what=f"{threads} bulk jobs in flight")
        held = {j["id"] for j in held_jobs()}
        # Every held job polled at least twice since: the batches have seen them still running.
        def polls_of_held() -> dict[str, int]:
            counts = dict.fromkeys(held, 0)
            for entry in klaviyo.request_log():
                job_id = entry.get("path", "").rsplit("/", 1)[-1]
                if entry["endpoint"] == JOB_STATUS and job_id in counts:
                    counts[job_id] += 1
            return counts

        wait_for(lambda: min(polls_of_held().values()) >= 2, 60, what="the held jobs to be polled")
        assert len(held_jobs()) == threads   # one job per thread: the next batch waits for a free thread
        counts = store.run(run_id).counts
        assert counts.get("created", 0) + counts.get("updated", 0) == 0, counts
        assert len(klaviyo.profiles(account_id=scenario.account_id)) == len(scenario.seeded)   # nothing applied

        klaviyo.set_job_timing(job_seconds=0)   # later jobs finish on their next poll
        klaviyo.advance_clock(61)
        info = wait_for(lambda: (i := store.run(run_id)).done and i, 180, what="the run to finish")
    finally:
        worker.stop()
    assert info.completed == info.expected == customers
    check_final_state(scenario, loyale, klaviyo, store.outcomes(run_id))
    assert klaviyo.spec_violations() == []
