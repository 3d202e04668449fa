"""The fault suite: a backfill with a known expected final Klaviyo state, under each fault, ends in exactly
that state, with one outcome per customer and no duplicate profile. Real processes throughout.

The faults that concern the broker (workers killed, a message lost, a pool process killed, Klaviyo
failing so that batches requeue with countdowns, the broker restarted) run on both brokers
(`broker_url`): the state Redis as broker, and a private RabbitMQ with Redis as the state store."""

from __future__ import annotations

import base64
import json
import os

import psutil
import pytest
import redis
from kombu.connection import Connection

from fakes.processes import RABBITMQ_MISSING, BeatProcess, RabbitServer, RedisServer, rabbitmq_server_path
from tests.harness import WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import build_scenario, check_final_state, private_key
from tests.integration.test_backfill import backfill_with_worker, cli, run_id_from
from worker import keys
from worker.broker import AmqpBroker, open_broker
from worker.messages import QUEUES
from worker.store import Store

CUSTOMERS = int(os.environ.get("FAULT_CUSTOMERS", "1500"))


def completed(url: str, run_id: str) -> int:
    """The run's completed count, read with a fresh connection (Redis may have been restarted)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = Store(client).run(run_id)
        return info.completed if info else 0
    except redis.ConnectionError:
        return 0
    finally:
        client.close()


def finished(url: str, run_id: str):
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = Store(client).run(run_id)
        return info if info is not None and info.done else None
    except redis.ConnectionError:
        return None
    finally:
        client.close()


#: Beat's rescue of stranded runs (producers/rescue.py), scaled to the tests' 8 s visibility timeout.
RESCUE_ENV = {"SYNC_VISIBILITY_TIMEOUT_S": "8", "SYNC_STALL_AFTER_S": "15", "SYNC_RESCUE_INTERVAL_S": "1"}


def on_rabbitmq(broker_url: str) -> bool:
    return broker_url.startswith("amqp")


def rescue_env(broker_url: str) -> dict[str, str]:
    """Beat's rescue as in production, scaled down. On RabbitMQ nothing should ever need it: the stall
    it waits for is longer (60 s) than any quiet spell of a healthy run on a loaded machine, so a
    rescue there means a message was lost, and the tests say so."""
    return {**RESCUE_ENV, "SYNC_STALL_AFTER_S": "60"} if on_rabbitmq(broker_url) else RESCUE_ENV


def rescues(producers: WorkerProcess) -> list[str]:
    """The rescue's re-enqueues of lost messages, from the producers worker's log."""
    return [line for line in producers.log().splitlines() if '"run_rescued"' in line]


def assert_the_rescue_found_nothing_to_do(beat: BeatProcess, producers: WorkerProcess) -> None:
    """Beat sent the rescue again and again while the run went on (every second), and it never found a
    stranded run: no customer's message was lost."""
    assert beat.log().count("sync.rescue_stalled_runs") > 0, beat.log()[-2000:]
    assert rescues(producers) == []


def test_a_worker_sigkilled_mid_batch_again_and_again_loses_nothing(loyale, klaviyo, redis_url, broker_url, store):
    """Three SIGKILLs of a busy batching worker. Celery's Redis transport can lose the one message a
    worker had popped but not yet recorded as unacknowledged (about half the runs lose one customer of
    1,500); beat's rescue re-enqueues it, so the run still ends exactly right with no operator. On
    RabbitMQ a killed worker's deliveries go back on the queue as its connection drops: every customer
    is synced and the rescue, running as in production, never has anything to do."""
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.01)
    scenario = build_scenario(loyale, klaviyo, "kills", customers=CUSTOMERS, merge_customers=True, seed=91)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=broker_url, SYNC_LIMITER_RATE_SCALE="50", SYNC_BATCH_SIZE="200",
                   **rescue_env(broker_url))
    producers = WorkerProcess(env, queues="sync.producers", concurrency=1, name="producers").start()
    beat = BeatProcess(env).start()
    worker = WorkerProcess.backfill(env, name="k0").start().wait_ready()
    result = cli(env, "backfill", "--tenant", scenario.tenant_id)
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    try:
        for round_, share in enumerate((0.15, 0.4, 0.7), start=1):
            wait_for(lambda s=share: store.run(run_id).completed >= CUSTOMERS * s, 180, what=f"{share:.0%} done")
            worker.kill()
            assert not store.run(run_id).done
            worker = WorkerProcess.backfill(env, name=f"k{round_}").start().wait_ready()
        info = wait_for(lambda: (i := store.run(run_id)).done and i, 180, what="the run to finish",
                        diagnose=lambda: broker_state(store, run_id, broker_url))
    finally:
        for process in (worker, beat, producers):
            process.stop()
    assert info.completed == info.expected == CUSTOMERS
    check_final_state(scenario, loyale, klaviyo, store.outcomes(run_id))
    if on_rabbitmq(broker_url):
        assert_the_rescue_found_nothing_to_do(beat, producers)
    else:
        print(f"{len(rescues(producers))} rescues of lost messages")


def lose_one(broker_url: str, store: Store, queue: str) -> str:
    """Take one message off the queue for good (what the Redis transport's SIGKILL race, or an operator's
    purge on RabbitMQ, does); the id of its customer."""
    if on_rabbitmq(broker_url):
        with Connection(broker_url) as connection:
            body = connection.default_channel.basic_get(queue, no_ack=True).body
    else:
        body = base64.b64decode(json.loads(store.redis.rpop(queue))["body"])
    return str(json.loads(body)[1]["customer"]["id"])


def test_a_message_the_broker_lost_is_rescued_without_an_operator(loyale, klaviyo, redis_url, broker_url, store):
    """A customer's message vanishes from the broker (what a SIGKILL between the transport's pop and
    its unacked record does on Redis; on RabbitMQ, a purge, or a message over RabbitMQ 4's delivery
    limit). Once the run has gone quiet with the queues empty, beat re-reads that customer from Loyale
    and enqueues it again; the run ends with every customer's outcome."""
    klaviyo.set_knobs(rate_limit_scale=50)
    scenario = build_scenario(loyale, klaviyo, "lost", customers=300, merge_customers=True, seed=95)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=broker_url, SYNC_LIMITER_RATE_SCALE="50", SYNC_BATCH_SIZE="200", **RESCUE_ENV)
    result = cli(env, "backfill", "--tenant", scenario.tenant_id)     # no worker yet: all 300 wait
    assert result.returncode == 0, result.stderr
    run_id = run_id_from(result.stdout)
    lost_id = lose_one(broker_url, store, "sync.backfill")
    processes = [WorkerProcess.backfill(env, name="lost").start(),
                 WorkerProcess(env, queues="sync.producers", concurrency=1, name="producers").start(),
                 BeatProcess(env).start()]
    try:
        info = wait_for(lambda: (i := store.run(run_id)).done and i, 120, what="the run to finish",
                        diagnose=lambda: broker_state(store, run_id, broker_url))
    finally:
        for process in processes:
            process.stop()
    assert info.completed == info.expected == 300
    assert lost_id in store.outcomes(run_id)
    assert rescues(processes[1])
    check_final_state(scenario, loyale, klaviyo, store.outcomes(run_id))


def test_a_batch_whose_pool_process_dies_goes_back_on_the_queue_at_once(loyale, klaviyo, redis_url, broker_url,
                                                                        store):
    """The worker's pool process is killed while it syncs a batch (the out-of-memory killer, say); the
    worker itself lives on. The batch's messages are put back at once, not left unacknowledged in the
    worker until the broker's visibility timeout (an hour here) gives them to someone else."""
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.15)
    scenario = build_scenario(loyale, klaviyo, "oom", customers=600, merge_customers=True, seed=94)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=broker_url, SYNC_VISIBILITY_TIMEOUT_S="3600", SYNC_LIMITER_RATE_SCALE="50",
                   SYNC_BATCH_SIZE="200")
    worker = WorkerProcess.backfill(env, concurrency=1, name="oom", pool="prefork").start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id)
        assert result.returncode == 0, result.stderr
        run_id = run_id_from(result.stdout)
        lock_pattern = keys.customer_lock(scenario.tenant_id, "*")
        # mid-batch: part of the run done and a batch holding its customers' locks right now
        wait_for(lambda: store.run(run_id).completed >= 100 and any(store.redis.scan_iter(lock_pattern)), 120,
                 what="a batch in progress")
        [pool_process] = psutil.Process(worker.proc.pid).children()
        pool_process.kill()
        info = wait_for(lambda: (i := store.run(run_id)).done and i, 120, what="the run to finish")
    finally:
        worker.stop()
    assert info.completed == info.expected == 600
    check_final_state(scenario, loyale, klaviyo, store.outcomes(run_id))


def broker_state(store: Store, run_id: str, broker_url: str | None = None) -> dict:
    """Where a stuck run's customers are: for the failure message."""
    r = store.redis
    missing = set(r.smembers(keys.run_enqueued(run_id))) - set(store.outcomes(run_id))
    lists = {k: r.llen(k) for k in r.keys("*") if r.type(k) == "list" and not k.startswith("lks:ledger")}
    state = {"run": store.run(run_id), "missing": len(missing), "lists": lists, "unacked": r.hlen("unacked"),
             "locks": len(r.keys("lks:lock:*"))}
    if broker_url is not None and on_rabbitmq(broker_url):
        broker = open_broker(broker_url)
        state["rabbitmq ready"] = broker.depths(QUEUES)
        broker.close()
    return state


@pytest.mark.parametrize("persistent", [True, False], ids=["append-only", "no-persistence"])
def test_redis_restarted_mid_run(loyale, klaviyo, persistent):
    """With persistence the run resumes with no operator; without it, `loyale-sync resume RUN`
    re-enqueues every customer without an outcome. Either way the run ends in exactly the expected state.

    What a restart loses even with every write on disk (`appendfsync always`, a clean SIGTERM): Celery's
    Redis transport pops a message and records it as unacknowledged in a second step (celery/celery#7950).
    A worker whose connection is cut between the two (the server shutting down) has neither the message
    nor its unacked record: that customer would never get an outcome. Messages that were recorded as
    unacknowledged are restored after the visibility timeout; the lost ones are re-enqueued by beat's
    rescue of stranded runs, so beat and the producers worker run here as they do in production, beat
    restarted when it exits on losing Redis as docker-compose.yml's restart policy does."""
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.01)
    scenario = build_scenario(loyale, klaviyo, "restart", customers=CUSTOMERS, merge_customers=True, seed=92)
    server = RedisServer(appendonly=persistent).start()
    env = sync_env(server.url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_LIMITER_RATE_SCALE="50", SYNC_BATCH_SIZE="200", **RESCUE_ENV)
    worker = WorkerProcess.backfill(env, name="rr").start().wait_ready()
    producers = WorkerProcess(env, queues="sync.producers", concurrency=1, name="producers").start()
    beat = BeatProcess(env).start()

    def supervised_beat() -> BeatProcess:
        """Beat exits when it loses Redis; docker-compose.yml restarts it (`restart: unless-stopped`)."""
        nonlocal beat
        if beat.proc.poll() is not None:
            beat = BeatProcess(env, log_path=beat.log_path).start()
        return beat

    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id)
        assert result.returncode == 0, result.stderr
        run_id = run_id_from(result.stdout)
        wait_for(lambda: completed(server.url, run_id) >= CUSTOMERS * 0.3, 180, what="a third of the run")
        server.restart()
        if not persistent:
            # everything is gone: queue, run record, outcomes (a batch in flight during the restart may
            # have counted a few outcomes since, into a run with no record)
            fresh = Store(redis.Redis.from_url(server.url, decode_responses=True)).run(run_id)
            assert fresh is None or (not fresh.tenant and fresh.completed < CUSTOMERS * 0.3), fresh
            resumed = cli(env, "resume", run_id, "--tenant", scenario.tenant_id)
            assert resumed.returncode == 0, resumed.stderr
        # A lost message is rescued once the run has made no progress for SYNC_STALL_AFTER_S (15 s)
        # with the queues empty; 240 s is that many times over.
        info = wait_for(lambda: supervised_beat() and finished(server.url, run_id), 240, what="the run to finish",
                        diagnose=lambda: restart_diagnosis(server.url, run_id, beat, producers))
        assert info.completed == info.expected == CUSTOMERS
        client = redis.Redis.from_url(server.url, decode_responses=True)
        check_final_state(scenario, loyale, klaviyo, Store(client).outcomes(run_id), resynced=not persistent)
        client.close()
        rescued = [line for line in producers.log().splitlines() if '"run_rescued"' in line]
        print(f"{len(rescued)} rescues of lost messages: {rescued}")
    finally:
        for process in (worker, beat, producers):
            process.stop()
        server.cleanup()


def test_rabbitmq_restarted_mid_run_loses_nothing(loyale, klaviyo, redis_url, store):
    """RabbitMQ (the broker; Redis stays the state store) is stopped and started again mid-run. Its quorum
    queues are on disk: the waiting messages, the countdowns in its delay queues and the deliveries the
    workers held (unacknowledged, so given back) are all there after the restart; workers and the
    `Broker` the rescue asks reconnect. Every customer is synced, and the rescue never has anything to do."""
    if rabbitmq_server_path() is None:
        pytest.skip(RABBITMQ_MISSING)
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.01)
    scenario = build_scenario(loyale, klaviyo, "rmqrestart", customers=CUSTOMERS, merge_customers=True, seed=96)
    server = RabbitServer().start()
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=server.url, SYNC_LIMITER_RATE_SCALE="50", SYNC_BATCH_SIZE="200",
                   **rescue_env(server.url))
    worker = WorkerProcess.backfill(env, name="rmq").start().wait_ready()
    producers = WorkerProcess(env, queues="sync.producers", concurrency=1, name="producers").start()
    beat = BeatProcess(env).start()
    broker = AmqpBroker.from_url(server.url)
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id)
        assert result.returncode == 0, result.stderr
        run_id = run_id_from(result.stdout)
        wait_for(lambda: store.run(run_id).completed >= CUSTOMERS * 0.3, 180, what="a third of the run")
        broker.depths(QUEUES)
        server.restart()
        assert not store.run(run_id).done
        broker.depths(QUEUES)           # the same Broker answers after the restart (a fresh connection)
        info = wait_for(lambda: (beat.proc.poll() is None or beat.start()) and (i := store.run(run_id)).done and i,
                        240, what="the run to finish", diagnose=lambda: broker_state(store, run_id, server.url))
    finally:
        for process in (worker, beat, producers):
            process.stop()
        broker.close()
        server.cleanup()
    assert info.completed == info.expected == CUSTOMERS
    check_final_state(scenario, loyale, klaviyo, store.outcomes(run_id))
    assert_the_rescue_found_nothing_to_do(beat, producers)


def restart_diagnosis(url: str, run_id: str, beat: BeatProcess, producers: WorkerProcess) -> str:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        state = broker_state(Store(client), run_id)
    except redis.ConnectionError as exc:
        state = repr(exc)
    finally:
        client.close()
    return f"{state}\nbeat: {beat.log()[-1500:]}\nproducers: {producers.log()[-1500:]}"


def test_klaviyo_failing_dropping_stalling_and_throttling_without_retry_after(loyale, klaviyo, redis_url, broker_url,
                                                                             store):
    """25 % errors (500, 503, and 429 without Retry-After), dropped connections (some after the write was
    applied), 3-second stalls, and a limit far below what our limiter believes (its 429s too without
    Retry-After). Batches requeue customers with countdowns (on RabbitMQ through its delay queues)."""
    klaviyo.set_knobs(error_rate=0.25, error_statuses=[500, 503, 429], drop_rate=0.05, stall_rate=0.01, stall_s=3.0,
                      omit_retry_after=True, rate_limit_scale=0.5, window_scale=0.1, seed=93)
    scenario = build_scenario(loyale, klaviyo, "klfaults", customers=CUSTOMERS, merge_customers=True, seed=93)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=broker_url, SYNC_LIMITER_RATE_SCALE="20", SYNC_MAX_ATTEMPTS="30",
                   SYNC_HTTP_TIMEOUT_S="2", SYNC_BATCH_SIZE="300")
    result = backfill_with_worker(env, scenario.tenant_id)
    assert result.returncode == 0, result.stderr
    info = store.run(run_id_from(result.stdout))
    assert info.completed == info.expected == CUSTOMERS
    counts = check_final_state(scenario, loyale, klaviyo, store.outcomes(info.id))
    assert "failed" not in counts
    statuses = klaviyo.requests()["by_status"]
    assert int(statuses.get("500", 0)) + int(statuses.get("503", 0)) > 0, statuses
    assert int(statuses.get("429", 0)) > 0, statuses


def test_loyale_throttling_and_failing_while_paging_skips_and_doubles_nobody(loyale, klaviyo, redis_url, store):
    klaviyo.set_knobs(rate_limit_scale=50)
    scenario = build_scenario(loyale, klaviyo, "lyfaults", customers=CUSTOMERS, merge_customers=False, seed=94)
    loyale.set_knobs(throttle_rate=0.15, error_rate=0.15, seed=94)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_LIMITER_RATE_SCALE="50")
    try:
        result = backfill_with_worker(env, scenario.tenant_id)
    finally:
        loyale.set_knobs(throttle_rate=0.0, error_rate=0.0)
    assert result.returncode == 0, result.stderr
    assert f"enqueued {CUSTOMERS} customers" in result.stdout and "duplicates" not in result.stdout
    info = store.run(run_id_from(result.stdout))
    assert info.completed == info.expected == CUSTOMERS
    check_final_state(scenario, loyale, klaviyo, store.outcomes(info.id))
    assert int(loyale.requests()["by_status"].get("429", 0)) > 0


def test_a_key_revoked_mid_run_stops_the_tenant_once_and_retry_failures_completes_it(loyale, klaviyo, redis_url,
                                                                                       store):
    klaviyo.set_knobs(rate_limit_scale=50, latency_s=0.01, request_log_size=50_000)
    scenario = build_scenario(loyale, klaviyo, "revoked", customers=CUSTOMERS, merge_customers=True, seed=95)
    tenants_file = write_tenants_file({scenario.tenant_id: scenario.tenant_config()})
    env = sync_env(redis_url, tenants_file, SYNC_LIMITER_RATE_SCALE="50", SYNC_BATCH_SIZE="200")
    worker = WorkerProcess.backfill(env, name="before").start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id)
        run_id = run_id_from(result.stdout)
        wait_for(lambda: store.run(run_id).completed >= CUSTOMERS * 0.25, 180, what="a quarter of the run")
        klaviyo.revoke_key(scenario.key)
        info = wait_for(lambda: (i := store.run(run_id)).done and i, 180, what="the run to end")
    finally:
        worker.stop()
    assert 0 < info.counts.get("failed", 0) < CUSTOMERS
    assert store.tenant_paused(scenario.tenant_id) is not None
    assert worker.log().count('"event": "tenant_paused"') == 1, "one clear error, not one per customer"
    refused = [e for e in klaviyo.request_log() if e["status"] == 401]
    assert len(refused) <= 10, f"{len(refused)} requests sent with a revoked key"

    # The brand creates a new key; the operator puts it in the tenants file, checks it, and re-drives.
    fixed = {**scenario.tenant_config(), "klaviyo_private_key": private_key()}
    klaviyo.add_key(fixed["klaviyo_private_key"], account_id=scenario.account_id)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: fixed}), SYNC_LIMITER_RATE_SCALE="50")
    checked = cli(env, "verify", "--tenant", scenario.tenant_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert store.tenant_paused(scenario.tenant_id) is None
    worker = WorkerProcess(env, name="after").start().wait_ready()
    try:
        retried = cli(env, "retry-failures", "--tenant", scenario.tenant_id, "--run", run_id, "--wait")
    finally:
        worker.stop()
    assert retried.returncode == 0, retried.stdout + retried.stderr
    retry_run = next(r for r in store.runs(scenario.tenant_id) if r.kind == "retry")
    assert retry_run.done and "failed" not in retry_run.counts
    outcomes = {**store.outcomes(run_id), **store.outcomes(retry_run.id)}
    check_final_state(scenario, loyale, klaviyo, outcomes, resynced=True)
