"""The Celery application: `celery -A worker.app worker`.

Building it loads settings (environment only: no network, no tenants). Tenants, Redis and HTTP
clients are built per worker process on first use (`worker.tasks.get_runtime`).
"""

from __future__ import annotations

import structlog
from celery import Celery
from celery.schedules import crontab
from celery.signals import setup_logging, worker_process_init
from kombu import Exchange, Queue

from worker import tasks
from worker.errors import ConfigError
from worker.logs import configure_logging
from worker.settings import Settings, TenantConfig, get_settings

log = structlog.get_logger("app")

#: Scheduled passes run on their own queue, so a long backfill producer never holds up a worker
#: that syncs incremental changes.
QUEUE_PRODUCERS = "sync.producers"


def cron(expression: str) -> crontab:
    """"m h dom mon dow" -> a Celery crontab; raises ConfigError with the expression if it is not one."""
    parts = expression.split()
    if len(parts) != 5:
        raise ConfigError(f"backfill_cron {expression!r} is not a 5-field cron expression (e.g. '0 3 * * *')")
    minute, hour, day_of_month, month_of_year, day_of_week = parts
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                   day_of_week=day_of_week)


def beat_schedule(settings: Settings, tenants: dict[str, TenantConfig]) -> dict[str, dict]:
    """An incremental pass per tenant every interval, each tenant's nightly backfill if it has one, the
    rescue of runs whose broker messages were lost, and the re-check of suppressions not yet applied."""
    schedule: dict[str, dict] = {
        "rescue": {"task": "sync.rescue_stalled_runs", "schedule": settings.rescue_interval_s,
                   "options": {"queue": QUEUE_PRODUCERS, "expires": settings.rescue_interval_s}},
        "suppressions": {"task": "sync.recheck_suppressions", "schedule": settings.suppression_recheck_interval_s,
                         "options": {"queue": QUEUE_PRODUCERS, "expires": settings.suppression_recheck_interval_s}},
    }
    for tenant in tenants.values():
        schedule[f"incremental:{tenant.id}"] = {
            "task": "sync.incremental_pass", "schedule": settings.incremental_interval_s, "args": (tenant.id,),
            # a pass that could not start within its interval is superseded by the next one
            "options": {"queue": QUEUE_PRODUCERS, "expires": settings.incremental_interval_s},
        }
        if tenant.backfill_cron:
            schedule[f"backfill:{tenant.id}"] = {
                "task": "sync.scheduled_backfill", "schedule": cron(tenant.backfill_cron), "args": (tenant.id,),
                "options": {"queue": QUEUE_PRODUCERS},
            }
    return schedule


def create_app(settings: Settings) -> Celery:
    app = Celery("loyale_klaviyo_sync", broker=settings.broker, set_as_current=False,
                 include=["producers.tasks"])
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
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name)
                     for name in (tasks.QUEUE_INCREMENTAL, tasks.QUEUE_BACKFILL, QUEUE_PRODUCERS)],
        task_default_queue=tasks.QUEUE_INCREMENTAL,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Round robin between the incremental and the backfill queue.
            "queue_order_strategy": "round_robin",
            # Messages of a worker that died are restored once older than the visibility timeout;
            # sweep often enough that recovery takes about 1.1x the timeout, not a fixed 100 s.
            "unacked_restore_interval": max(1, settings.visibility_timeout_s // 100),
            # The sweep holds a mutex in Redis; a worker killed while holding it would block every
            # other worker's sweep for kombu's default 5 minutes. A sweep takes milliseconds.
            "unacked_mutex_expire": 15,
        },
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
    )
    tasks.register(app, settings)

    try:
        app.conf.beat_schedule = beat_schedule(settings, settings.load_tenants())
    except ConfigError as exc:   # a worker that only syncs can start without a tenants file
        log.warning("no_schedule", error=str(exc))
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
