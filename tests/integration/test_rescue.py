"""The rescue of stranded runs (producers/rescue.py) in this process, against real Redis and the fake
Loyale: which runs it touches, and where it sends their lost customers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from pydantic import SecretStr

from fakes.processes import RedisServer
from producers.loyale import LoyaleClient
from producers.rescue import Rescued, rescue_stalled_runs
from tests.harness import sync_env, write_tenants_file
from tests.integration.scenario import Scenario, build_scenario
from tests.integration.test_backfill import cli, run_id_from
from worker.app import create_app
from worker.broker import RedisBroker, open_broker
from worker.metrics import SyncCollector
from worker.settings import Settings
from worker.store import Store


def loyale_of(http: httpx.Client, scenario: Scenario) -> LoyaleClient:
    config = scenario.tenant_config()
    return LoyaleClient(http, tenant=scenario.tenant_id, base_url=config["loyale_base_url"],
                        scheme_id=config["loyale_scheme_id"], admin_email=config["loyale_admin_email"],
                        admin_password=SecretStr(config["loyale_admin_password"]))


def test_a_stranded_per_customer_backfill_gets_its_lost_customers_back_on_its_own_queue(
        loyale, klaviyo, redis_url, store):
    scenario = build_scenario(loyale, klaviyo, "stranded", customers=40, merge_customers=True)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}))
    result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--per-customer")   # no worker running
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    store.redis.delete("sync.incremental")          # every message lost
    with httpx.Client() as http:
        loyale_client = loyale_of(http, scenario)
        app = create_app(Settings(redis_url=redis_url))
        tenants = [scenario.tenant_id]
        broker = RedisBroker(store.redis)

        def rescue(now: float) -> list:
            return rescue_stalled_runs(app, store, broker, tenants, lambda _: loyale_client, stall_after_s=600,
                                       now=now)

        assert rescue(time.time()) == []                 # produced just now: not stalled yet
        [rescued] = rescue(time.time() + 601)
        assert rescued.run_id == run_id and rescued.enqueued == 40 == store.redis.llen("sync.incremental")
        assert store.redis.llen("sync.backfill") == 0
        assert rescue(time.time() + 601) == []           # queues not empty: nothing is lost any more


@pytest.fixture(params=["redis", "rabbitmq"])
def other_broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[[str], None]]]:
    """A broker on another server than the state Redis: a second redis-server, or the private RabbitMQ;
    with a way to lose every message of a queue."""
    if request.param == "rabbitmq":
        rabbit = request.getfixturevalue("rabbitmq_server")
        request.getfixturevalue("rabbitmq_url")          # emptied
        yield rabbit.url, lambda queue: rabbit.purge([queue])
        return
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    yield server.url, client.delete
    client.close()
    server.cleanup()


def test_with_the_broker_on_another_server_a_waiting_message_is_seen_there_and_not_rescued(
        loyale, klaviyo, redis_url, store: Store, other_broker):
    """SYNC_BROKER_URL names another server than the state Redis (another Redis, or RabbitMQ): the rescue,
    the metrics and `runs` ask the broker about its queues. A customer whose message waits there is not
    lost; once the queue is emptied (the message lost) and the run has gone quiet, it is rescued, onto
    the broker."""
    broker_url, lose_all = other_broker
    scenario = build_scenario(loyale, klaviyo, "elsewhere", customers=5, merge_customers=True)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=broker_url)
    result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--per-customer")   # no worker running
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    broker = open_broker(broker_url)
    assert broker.depth("sync.incremental") == 5 and store.redis.llen("sync.incremental") == 0

    listed = cli(env, "runs", "--tenant", scenario.tenant_id)
    assert listed.returncode == 0, listed.stderr
    assert "waiting on the broker: sync.backfill 0, sync.incremental 5" in listed.stdout
    collector = SyncCollector(store, broker, [scenario.tenant_id], ["sync.incremental", "sync.backfill"],
                              watermark=lambda _: None)   # no incremental pass here
    [depths] = [family for family in collector.collect() if family.name == "loyale_sync_queue_depth"]
    assert {s.labels["queue"]: s.value for s in depths.samples} == {"sync.incremental": 5, "sync.backfill": 0}

    app = create_app(Settings(redis_url=redis_url, broker_url=broker_url))
    with httpx.Client() as http:
        loyale_client = loyale_of(http, scenario)

        def rescue() -> list[Rescued]:
            return rescue_stalled_runs(app, store, broker, [scenario.tenant_id], lambda _: loyale_client,
                                       stall_after_s=600, now=time.time() + 601)

        assert rescue() == []                                 # waiting on the broker: not lost
        lose_all("sync.incremental")                          # now every message is lost
        [rescued] = rescue()
    assert rescued.run_id == run_id and rescued.enqueued == 5 == broker.depth("sync.incremental")
    assert store.redis.llen("sync.incremental") == 0
    broker.close()
    app.close()
