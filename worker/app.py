"""The Celery application: `celery -A worker.app worker`.

Building it loads settings (environment only: no network, no tenants). Tenants, Redis and HTTP
clients are built per worker process on first use (`worker.tasks.get_runtime`).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging, worker_process_init
from kombu import Queue

from worker import tasks
from worker.logs import configure_logging
from worker.settings import Settings, get_settings


def create_app(settings: Settings) -> Celery:
    app = Celery("loyale_klaviyo_sync", broker=settings.broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message reserved per process: a long backfill never starves an incremental change
        # that arrives behind it, and a killed process holds at most one unacked message.
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(tasks.QUEUE_INCREMENTAL), Queue(tasks.QUEUE_BACKFILL)],
        task_default_queue=tasks.QUEUE_INCREMENTAL,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Round robin between the incremental and the backfill queue.
            "queue_order_strategy": "round_robin",
            # Messages of a worker that died are restored once older than the visibility timeout;
            # sweep often enough that recovery takes about 1.1x the timeout, not a fixed 100 s.
            "unacked_restore_interval": max(1, settings.visibility_timeout_s // 100),
        },
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    tasks.register(app, settings)
    return app


@setup_logging.connect
def _setup_logging(**_: object) -> None:
    settings = get_settings()
    configure_logging(settings.log_json, settings.log_level)


@worker_process_init.connect
def _fresh_runtime(**_: object) -> None:
    # Clients built before fork must not be shared by children.
    tasks.set_runtime(None)


app = create_app(get_settings())
