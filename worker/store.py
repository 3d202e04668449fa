"""The sync's state store: one object with every concept of `worker.state`, for one deployment."""

from __future__ import annotations

import redis

from worker.state.client import text_client
from worker.state.events import METRICS_EVENTS_KEY, EventOutcome, EventState
from worker.state.journal import Journal
from worker.state.locks import LOCK_TTL_S, PHONE_TAKEN_TTL_S, Locks
from worker.state.runs import (
    LEDGER_MAX_ENTRIES,
    METRICS_OUTCOMES_KEY,
    METRICS_REQUESTS_KEY,
    REMEMBERED,
    OutcomeRecord,
    RunInfo,
    RunLedger,
    epoch_us,
    new_run_id,
)
from worker.state.suppressions import Suppressions
from worker.state.tenants import TenantPause


class Store(RunLedger, Locks, Journal, Suppressions, TenantPause, EventState):
    """All sync state in Redis. `client` must decode responses (`worker.runtime.make_redis` does)."""

    def __init__(self, client: redis.Redis, retention_days: int = 30, journal_retention_days: int = 90) -> None:
        text = text_client(client)
        ttl_s, journal_ttl_s = retention_days * 86_400, journal_retention_days * 86_400
        RunLedger.__init__(self, text, ttl_s, journal_ttl_s)
        Locks.__init__(self, text, ttl_s)
        Journal.__init__(self, text, journal_ttl_s)
        Suppressions.__init__(self, text)
        TenantPause.__init__(self, text)
        EventState.__init__(self, text, ttl_s)


__all__ = ["METRICS_EVENTS_KEY", "EventOutcome",
           "LEDGER_MAX_ENTRIES", "LOCK_TTL_S", "METRICS_OUTCOMES_KEY", "METRICS_REQUESTS_KEY", "PHONE_TAKEN_TTL_S",
           "OutcomeRecord", "REMEMBERED", "RunInfo", "Store", "epoch_us", "new_run_id"]
