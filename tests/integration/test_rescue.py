"""The rescue of stranded runs (producers/rescue.py) in this process, against real Redis and the fake
Loyale: which runs it touches, and where it sends their lost customers."""

from __future__ import annotations

import time

import httpx
from pydantic import SecretStr

from producers.loyale import LoyaleClient
from producers.rescue import rescue_stalled_runs
from tests.harness import sync_env, write_tenants_file
from tests.integration.scenario import build_scenario
from tests.integration.test_backfill import cli, run_id_from
from worker.app import create_app
from worker.settings import Settings


def test_a_stranded_per_customer_backfill_gets_its_lost_customers_back_on_its_own_queue(
        loyale, klaviyo, redis_url, store):
    scenario = build_scenario(loyale, klaviyo, "stranded", customers=40, merge_customers=True)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}))
    result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--per-customer")   # no worker running
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    store.redis.delete("sync.incremental")          # every message lost
    config = scenario.tenant_config()
    with httpx.Client() as http:
        loyale_client = LoyaleClient(http, tenant=scenario.tenant_id, base_url=config["loyale_base_url"],
                                     scheme_id=config["loyale_scheme_id"], admin_email=config["loyale_admin_email"],
                                     admin_password=SecretStr(config["loyale_admin_password"]))
        app = create_app(Settings(redis_url=redis_url))
        tenants = [scenario.tenant_id]

        def rescue(now: float) -> list:
            return rescue_stalled_runs(app, store, tenants, lambda _: loyale_client, stall_after_s=600, now=now)

        assert rescue(time.time()) == []                 # produced just now: not stalled yet
        [rescued] = rescue(time.time() + 601)
        assert rescued.run_id == run_id and rescued.enqueued == 40 == store.redis.llen("sync.incremental")
        assert store.redis.llen("sync.backfill") == 0
        assert rescue(time.time() + 601) == []           # queues not empty: nothing is lost any more
