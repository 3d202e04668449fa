"""The Celery application: `celery -A worker.app worker`.

Building it loads settings (environment only: no network, no tenants). Tenants, Redis and HTTP
clients are built per worker process on first use (`worker.runtime.get_runtime`).

This module is where the two sides meet: it registers the worker's tasks and the producers' tasks
and beat schedule (`producers.tasks.register`, `producers.schedule`). Nothing imports it but the
`celery -A worker.app` command and the CLI, so there is no cycle.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Celery
from celery.signals import setup_logging, worker_init, worker_process_init
from kombu.entity import Exchange, Queue

import producers.tasks
from producers.schedule import beat_schedule
from worker import tasks
from worker.errors import ConfigError
from worker.logs import configure_logging
from worker.messages import QUEUE_INCREMENTAL, QUEUES
from worker.runtime import set_runtime
from worker.settings import BrokerTransport, Settings, broker_transport, get_settings

log = structlog.get_logger("app")


def _queue(name: str, transport: BrokerTransport) -> Queue:
    # kombu ships no types: its constructors are untyped calls.
    if transport == "redis":
        return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
    # RabbitMQ: durable quorum queues (replicated, written to disk before the publish is confirmed; a
    # consumer's unacknowledged messages go back at once when its connection dies). On a topic exchange,
    # because Celery's native delayed delivery hands a countdown message back to the queue's exchange
    # with a `#.<queue>` binding, which a direct exchange cannot match.
    return Queue(name, Exchange(name, type="topic", durable=True),  # type: ignore[no-untyped-call]
                 routing_key=name, durable=True, queue_arguments={"x-queue-type": "quorum"})


def transport_conf(settings: Settings) -> dict[str, Any]:
    """The Celery settings that differ between the brokers (README "Choosing a broker")."""
    if settings.broker_transport == "redis":
        return {"broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # Round robin between the incremental and the backfill queue.
            "queue_order_strategy": "round_robin",
            # Messages of a worker that died are restored once older than the visibility timeout;
            # sweep often enough that recovery takes about 1.1x the timeout, not a fixed 100 s.
            "unacked_restore_interval": max(1, settings.visibility_timeout_s // 100),
            # The sweep holds a mutex in Redis; a worker killed while holding it would block every
            # other worker's sweep for kombu's default 5 minutes. A sweep takes milliseconds.
            "unacked_mutex_expire": 15,
        }}
    # RabbitMQ keeps no visibility timeout, unacked hash or restore sweep (so none of the options above):
    # a delivery stays with its consumer until acknowledged, rejected, or the consumer's connection or
    # channel closes, and then it is ready again at once. A worker holding one past the server's
    # consumer_timeout (SYNC_CONSUMER_TIMEOUT_S) loses its channel and the deliveries go back.
    return {
        # confirm_publish: a publish returns only once RabbitMQ has the message (on a quorum queue: on
        # a majority's disks), so a producer or a requeue that returned has not lost it.
        # A restarting node takes seconds to come back (its quorum queues recover from disk): a publish
        # (a producer's, a batch's requeue) rides that out, about 20 s, instead of failing within Celery's
        # 0.6 s of retries on a dead socket, or kombu's 4 s connect timeout on a closed connection
        # (`connect_retries_timeout`, which the publish's retry policy does not cover).
        "broker_transport_options": {"confirm_publish": True, "connect_retries_timeout": 20,
                                     "interval_start": 0, "interval_step": 1, "interval_max": 3},
        "task_publish_retry_policy": {"max_retries": 8, "interval_start": 0, "interval_step": 1,
                                      "interval_max": 3},
        # Quorum queues refuse a global QoS; Celery sees the x-queue-type and uses per-consumer
        # prefetch (a static count: `--prefetch-multiplier` x concurrency, as celery-batches needs) and
        # native delayed delivery: a countdown waits in RabbitMQ's `celery_delayed_*` quorum queues, not
        # in a worker's memory, so it neither holds a prefetch slot nor meets the consumer timeout.
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
        # Anything Celery declares on its own (a queue not in task_queues) is a quorum queue as well.
        "task_default_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_type": "quorum",
        "task_create_missing_queue_exchange_type": "topic",
        # No priorities: the project sets none, and quorum queues before RabbitMQ 4.0 ignore them.
    }


class SyncCelery(Celery):  # type: ignore[misc]  # Celery is untyped
    """Celery, with countdowns RabbitMQ's native delayed delivery can carry. That routes a message through
    its delay queues by the countdown's whole seconds (`int(countdown)`; the worker holds the message for
    the rest, until its eta), and refuses a countdown under a second (celery 5.6 raises ValueError from
    kombu's `calculate_routing_key`); Redis takes any. On RabbitMQ a countdown under a second becomes one
    second: never earlier than asked. (The limiter's short waits do not come here on RabbitMQ: a task
    sleeps them in place, `Settings.task_wait_inline_s`; what does is a retry's backoff.)"""

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, countdown: float | None = None,
                  eta: Any = None, **options: Any) -> Any:
        if countdown is not None and 0 < countdown < 1 and self.whole_second_countdowns:
            countdown = 1.0
        return super().send_task(name, args, kwargs, countdown, eta, **options)

    @property
    def whole_second_countdowns(self) -> bool:
        return broker_transport(self.conf.broker_url) == "amqp"


def create_app(settings: Settings) -> Celery:
    app = SyncCelery("loyale_klaviyo_sync", broker=settings.broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message reserved per process: a long backfill never starves an incremental change
        # that arrives behind it, and a killed process holds at most one unacked message.
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # Each queue on its own exchange and key: declared bare, all three would be bound to the default
        # queue's exchange with one key, and a message sent there would land in every queue.
        task_queues=[_queue(name, settings.broker_transport) for name in QUEUES],
        task_default_queue=QUEUE_INCREMENTAL,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
        # Exactly one active scheduler: redbeat keeps the schedule in Redis behind a lock, so a
        # second `celery beat` started by mistake (or for failover) waits instead of doubling passes.
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix="lks:redbeat:",
        redbeat_lock_timeout=max(30, int(settings.incremental_interval_s * 5)),
        beat_max_loop_interval=min(5.0, settings.incremental_interval_s),
        **transport_conf(settings),
    )
    tasks.register(app, settings)
    producers.tasks.register(app)

    try:
        app.conf.beat_schedule = beat_schedule(settings, settings.load_tenants())
    except ConfigError as exc:   # a worker that only syncs can start without a tenants file
        log.warning("no_schedule", error=str(exc))
    return app


def _setup_logging(**_: object) -> None:
    settings = get_settings()
    configure_logging(settings.log_json, settings.log_level)


def _fresh_runtime(**_: object) -> None:
    # Clients built before fork must not be shared by children.
    set_runtime(None)


#: AMQP's basic.qos carries the prefetch count in 16 bits (65,535). Celery sends concurrency x prefetch
#: multiplier as it is, and a worker above it dies as it starts ("'H' format requires 0 <= number <=
#: 65535"): a backfill worker with SYNC_BATCH_SIZE=10000 and 8 threads asks for 90,000. Room is left
#: below the maximum for the count Celery adds for each message it holds for a countdown (kombu turns a
#: count above the maximum into no limit at all).
AMQP_PREFETCH_MAX = 60_000


def prepare_amqp_worker(sender: Any, **_: object) -> None:
    """`worker_init`, on RabbitMQ only, before the worker consumes:
    - keep its prefetch count (concurrency x multiplier) within what AMQP can carry; the worker then holds
      fewer messages than asked (fewer batches ahead), and says so;
    - declare every queue of the app (with its exchange and binding), not only those it consumes: Celery's
      delayed delivery binds all of them to its delay exchange as the worker starts, and fails (logging
      "delayed delivery will not be available") for an exchange nobody has declared yet."""
    if broker_transport(sender.app.conf.broker_url) != "amqp":
        return
    concurrency = max(int(getattr(sender, "max_concurrency", None) or sender.concurrency or 1), 1)
    if concurrency * sender.prefetch_multiplier > AMQP_PREFETCH_MAX:
        clamped = max(1, AMQP_PREFETCH_MAX // concurrency)
        log.warning("prefetch_clamped", asked=concurrency * sender.prefetch_multiplier, holds=clamped * concurrency,
                    why="RabbitMQ's prefetch count is at most 65,535 messages per consumer")
        sender.prefetch_multiplier = clamped
    try:
        with sender.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=3)
            for queue in sender.app.amqp.queues.values():
                queue.bind(connection.default_channel).declare()
    except Exception as exc:  # noqa: BLE001 - RabbitMQ not up yet: the worker's own connection waits for it
        log.warning("queues_not_declared", error=repr(exc))


setup_logging.connect(_setup_logging)
worker_process_init.connect(_fresh_runtime)
worker_init.connect(prepare_amqp_worker)


app = create_app(get_settings())
