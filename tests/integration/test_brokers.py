"""Each broker operation on both transports (the state Redis as broker, and a private RabbitMQ): what
`Broker` answers (queue depths, held messages, an unreachable broker), how the app declares and
publishes on RabbitMQ (durable quorum queues, publisher confirms), and per-customer syncs whose retries
carry countdowns shorter than a second (RabbitMQ's native delayed delivery counts whole seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import amqp
import pytest
from kombu.connection import Connection
from kombu.messaging import Consumer, Producer

from fakes.serving import free_port
from tests.harness import WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import build_scenario, check_final_state
from tests.integration.test_backfill import cli, run_id_from
from worker.app import create_app
from worker.broker import AmqpBroker, BrokerError, RedisBroker, open_broker
from worker.confirms import ConfirmedChannel, PublishNotConfirmed
from worker.messages import PUBLISH_CHUNK, QUEUE_BACKFILL, QUEUE_INCREMENTAL, QUEUES, CustomerMessage, enqueue_many
from worker.settings import Settings


def messages(run: str, count: int) -> list[CustomerMessage]:
    return [CustomerMessage(tenant="t", run=run, customer={"id": f"c{i}", "email": f"c{i}@example.com"})
            for i in range(count)]


def publish(broker_url: str, redis_url: str, counts: dict[str, int]) -> Any:
    app = create_app(Settings(redis_url=redis_url, broker_url=broker_url))
    for queue, count in counts.items():
        assert enqueue_many(app, messages(queue, count), queue) == count
    return app


@contextmanager
def holding(app: Any, queue: str, count: int) -> Iterator[list[Any]]:
    """A consumer that takes `count` messages off `queue` and acknowledges none, as a worker mid-batch
    does; its connection closes on leaving (a worker that died)."""
    held: list[Any] = []
    with app.connection_for_read() as connection:
        consumer = Consumer(connection.channel(), queues=[app.amqp.queues[queue]], accept=["json"],
                            prefetch_count=count, callbacks=[lambda _body, message: held.append(message)])
        with consumer:
            while len(held) < count:
                connection.drain_events(timeout=10)
            yield held


def test_depths_count_the_messages_waiting_on_each_queue(broker_url, redis_url):
    app = publish(broker_url, redis_url, {QUEUE_BACKFILL: 7, QUEUE_INCREMENTAL: 3})
    broker = open_broker(broker_url)
    try:
        assert broker.depths(QUEUES) == {QUEUE_INCREMENTAL: 3, QUEUE_BACKFILL: 7, "sync.producers": 0}
        assert broker.depth(QUEUE_BACKFILL) == 7
        assert not broker.empty([QUEUE_BACKFILL, QUEUE_INCREMENTAL]) and not broker.empty([QUEUE_INCREMENTAL])
        assert broker.empty(["sync.producers"]) and broker.depth("never.declared") == 0
    finally:
        broker.close()
        app.close()


def test_messages_a_consumer_holds_unacknowledged_are_not_waiting(broker_url, redis_url):
    """A worker's reserved messages are not on the queue: the rescue must not take them for a backlog,
    nor the metrics for waiting work. A consumer that closes gives them back. (One that is killed: on
    RabbitMQ at once, when its connection drops; on Redis after the visibility timeout. The fault
    suite kills workers.)"""
    app = publish(broker_url, redis_url, {QUEUE_BACKFILL: 10})
    broker = open_broker(broker_url)
    try:
        with holding(app, QUEUE_BACKFILL, 4):
            assert broker.depth(QUEUE_BACKFILL) == 6
        # RabbitMQ's queue takes them back as it learns of the closed channel, a moment later
        wait_for(lambda: broker.depth(QUEUE_BACKFILL) == 10, 30, what="the held messages back on the queue")
    finally:
        broker.close()
        app.close()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_broker_that_does_not_answer_raises_broker_error_naming_it(scheme):
    port = free_port()    # nothing listens there
    broker = open_broker(f"{scheme}://127.0.0.1:{port}/0" if scheme == "redis" else f"amqp://u:secret@127.0.0.1:{port}//",
                         timeout_s=1)
    with pytest.raises(BrokerError) as raised:
        broker.depths([QUEUE_BACKFILL])
    assert "secret" not in str(raised.value)
    assert (scheme == "amqp") == ("RabbitMQ" in str(raised.value))


def test_open_broker_chooses_the_implementation_by_the_urls_scheme():
    assert isinstance(open_broker("redis://127.0.0.1:1/0"), RedisBroker)
    assert isinstance(open_broker("amqp://guest:guest@127.0.0.1:1//"), AmqpBroker)


def test_on_rabbitmq_every_queue_the_app_declares_is_a_durable_quorum_queue(rabbitmq_server, rabbitmq_url, redis_url):
    app = publish(rabbitmq_url, redis_url, dict.fromkeys(QUEUES, 1))
    app.close()
    with rabbitmq_server.connect() as connection:
        for queue in QUEUES:
            # the same declaration again is accepted (RabbitMQ refuses one that differs in any property)
            connection.channel().queue_declare(queue, durable=True, auto_delete=False,
                                               arguments={"x-queue-type": "quorum"})
            with pytest.raises(amqp.exceptions.PreconditionFailed, match="x-queue-type"):
                connection.channel().queue_declare(queue, durable=True, auto_delete=False,
                                                   arguments={"x-queue-type": "classic"})


def test_on_rabbitmq_a_publish_the_broker_refuses_raises_instead_of_being_lost(rabbitmq_server, rabbitmq_url,
                                                                               redis_url):
    """Publisher confirms: `send_task` returns only once RabbitMQ has taken the message. A queue that
    refuses it (full, here; or a node without quorum) makes the publish fail, so a producer or a
    requeue never believes a message is on its way when it is not."""
    refusing_queue(rabbitmq_server)
    app = create_app(Settings(redis_url=redis_url, broker_url=rabbitmq_url))
    try:
        with pytest.raises(amqp.exceptions.MessageNacked), app.producer_or_acquire() as producer:
            producer.publish({"x": 1}, exchange="refusing", routing_key="refusing", retry=False)
    finally:
        app.close()


def refusing_queue(rabbitmq_server) -> None:
    """A full quorum queue (and its direct exchange) that refuses every message from now on. A quorum
    queue applies its limit late: it is filled one confirmed publish at a time until one is refused."""
    rabbitmq_server.purge(["refusing"])
    with rabbitmq_server.connect(confirm_publish=True) as connection:
        channel = connection.channel()
        channel.queue_declare("refusing", durable=True, auto_delete=False, arguments={
            "x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"})
        channel.exchange_declare("refusing", "direct", durable=True, auto_delete=False)
        channel.queue_bind("refusing", "refusing", "refusing")
        with pytest.raises(amqp.exceptions.MessageNacked):
            for _ in range(5):
                channel.basic_publish(amqp.Message("filler"), exchange="refusing", routing_key="refusing")


def test_on_rabbitmq_a_chunk_confirmed_at_once_still_fails_when_rabbitmq_refuses_one_message(rabbitmq_server,
                                                                                            rabbitmq_url):
    """`ConfirmedChannel` lets publishes go without waiting and waits once for RabbitMQ's confirms: a
    message RabbitMQ refuses (a nack) fails the wait, as a publish with a confirm each would."""
    refusing_queue(rabbitmq_server)
    rabbitmq_server.purge([QUEUE_INCREMENTAL])
    try:
        with Connection(rabbitmq_url) as connection:
            confirmed = ConfirmedChannel(connection.default_channel)
            producer = Producer(confirmed.channel)
            for i in range(5):     # the queue is full: each is refused
                producer.publish({"i": i}, exchange="refusing", routing_key="refusing")
            with pytest.raises(PublishNotConfirmed, match="refused"):
                confirmed.wait(30)
            for i in range(5):     # the same channel, a queue with room: confirmed
                producer.publish({"i": i}, exchange="", routing_key=QUEUE_INCREMENTAL)
            confirmed.wait(30)
            assert confirmed.pending == set()
        assert open_broker(rabbitmq_url).depth(QUEUE_INCREMENTAL) == 5
    finally:
        rabbitmq_server.purge(["refusing", QUEUE_INCREMENTAL])


def test_on_rabbitmq_enqueue_many_waits_for_confirms_once_a_chunk(rabbitmq_url, redis_url, monkeypatch):
    """With a confirm awaited after every publish (each a disk write on a quorum queue) the backfill
    producer enqueued 78 customers a second (bench real-limits); `enqueue_many` waits once a chunk."""
    waits: list[int] = []
    wait = ConfirmedChannel.wait

    def counted(self, timeout_s):
        waits.append(len(self.pending))
        return wait(self, timeout_s)

    monkeypatch.setattr(ConfirmedChannel, "wait", counted)
    count = 2 * PUBLISH_CHUNK + 7
    app = publish(rabbitmq_url, redis_url, {QUEUE_BACKFILL: count})
    app.close()
    assert len(waits) == 3 and sum(waits) <= 2 * count     # each message and its task-sent event, at most
    broker = open_broker(rabbitmq_url)
    assert broker.depth(QUEUE_BACKFILL) == count
    broker.close()


def test_per_customer_retries_with_countdowns_under_a_second_end_every_customer(loyale, klaviyo, redis_url,
                                                                                  broker_url, store):
    """Klaviyo fails a quarter of the requests; the per-customer task retries with 0.2 s backoff (and
    the limiter defers by fractions of a second). On RabbitMQ each countdown travels through Celery's
    delay queues, rounded up to a whole second; every customer still ends with its outcome."""
    klaviyo.set_knobs(error_rate=0.25, error_statuses=[500, 503], rate_limit_scale=50, seed=71)
    scenario = build_scenario(loyale, klaviyo, "retries", customers=30, merge_customers=True, seed=71)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=broker_url, SYNC_LIMITER_RATE_SCALE="50", SYNC_MAX_ATTEMPTS="30")
    worker = WorkerProcess(env, name="retries").start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--per-customer", "--wait")
    finally:
        worker.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    info = store.run(run_id_from(result.stdout))
    assert info.completed == info.expected == 30
    counts = check_final_state(scenario, loyale, klaviyo, store.outcomes(info.id))
    assert "failed" not in counts
    assert int(klaviyo.requests()["by_status"].get("500", 0)) > 0      # so retries were needed


def test_on_rabbitmq_a_backfill_worker_that_asks_to_hold_more_than_amqp_can_count_starts_and_syncs(
        loyale, klaviyo, redis_url, rabbitmq_server, rabbitmq_url, store):
    """AMQP's prefetch count has 16 bits: a backfill worker sized for big batches (here 40,000 a batch on
    2 threads: 120,000 messages) died as it started. It holds fewer instead, says so, and syncs. And a
    worker that consumes only sync.backfill, first on a broker where the other queues' exchanges do not
    exist, declares them, so Celery's delayed delivery is bound for every queue (it failed for those)."""
    with rabbitmq_server.connect() as connection:
        for queue in ("sync.incremental", "sync.producers"):
            connection.channel().exchange_delete(queue)
    klaviyo.set_knobs(rate_limit_scale=50)
    scenario = build_scenario(loyale, klaviyo, "prefetch", customers=20, merge_customers=True, seed=72)
    env = sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                   SYNC_BROKER_URL=rabbitmq_url, SYNC_LIMITER_RATE_SCALE="50", SYNC_BATCH_SIZE="40000")
    worker = WorkerProcess.backfill(env, name="prefetch")
    assert worker.concurrency * worker.prefetch_multiplier > 65_535
    worker.start().wait_ready()
    try:
        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--wait")
    finally:
        worker.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    info = store.run(run_id_from(result.stdout))
    assert info.completed == info.expected == 20
    check_final_state(scenario, loyale, klaviyo, store.outcomes(info.id))
    assert "prefetch_clamped" in worker.log()
    assert "Failed to bind queue" not in worker.log() and "Failed to setup delayed delivery" not in worker.log()
    with rabbitmq_server.connect() as connection:
        for queue in ("sync.incremental", "sync.producers"):
            connection.channel().exchange_declare(queue, "topic", passive=True)
