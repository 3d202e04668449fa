"""What celery beat runs, and when: each tenant's passes, the rescue of stranded runs, the suppression re-check."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from worker.errors import ConfigError
from worker.messages import (
    QUEUE_PRODUCERS,
    TASK_INCREMENTAL_PASS,
    TASK_RECHECK_SUPPRESSIONS,
    TASK_RESCUE_STALLED_RUNS,
    TASK_SCHEDULED_BACKFILL,
)
from worker.settings import Settings, TenantConfig


def cron(expression: str) -> crontab:
    """"m h dom mon dow" -> a Celery crontab; raises ConfigError with the expression if it is not one."""
    parts = expression.split()
    if len(parts) != 5:
        raise ConfigError(f"backfill_cron {expression!r} is not a 5-field cron expression (e.g. '0 3 * * *')")
    minute, hour, day_of_month, month_of_year, day_of_week = parts
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                   day_of_week=day_of_week)


def beat_schedule(settings: Settings, tenants: dict[str, TenantConfig]) -> dict[str, dict[str, Any]]:
    """An incremental pass per tenant every interval, each tenant's nightly backfill if it has one, the
    rescue of runs whose broker messages were lost, and the re-check of suppressions not yet applied."""
    schedule: dict[str, dict[str, Any]] = {
        "rescue": {"task": TASK_RESCUE_STALLED_RUNS, "schedule": settings.rescue_interval_s,
                   "options": {"queue": QUEUE_PRODUCERS, "expires": settings.rescue_interval_s}},
        "suppressions": {"task": TASK_RECHECK_SUPPRESSIONS, "schedule": settings.suppression_recheck_interval_s,
                         "options": {"queue": QUEUE_PRODUCERS, "expires": settings.suppression_recheck_interval_s}},
    }
    for tenant in tenants.values():
        schedule[f"incremental:{tenant.id}"] = {
            "task": TASK_INCREMENTAL_PASS, "schedule": settings.incremental_interval_s, "args": (tenant.id,),
            # a pass that could not start within its interval is superseded by the next one
            "options": {"queue": QUEUE_PRODUCERS, "expires": settings.incremental_interval_s},
        }
        if tenant.backfill_cron:
            schedule[f"backfill:{tenant.id}"] = {
                "task": TASK_SCHEDULED_BACKFILL, "schedule": cron(tenant.backfill_cron), "args": (tenant.id,),
                "options": {"queue": QUEUE_PRODUCERS},
            }
    return schedule
