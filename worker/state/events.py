"""The state of loyalty events in Redis: which of a customer's events have an outcome (so one seen
again is a duplicate), which were sent without an outcome yet, the customer's event ledger, the levels
last synced (for `Loyale Level Reached`/`Lost`), the per-tenant block after Klaviyo refused events,
and the cumulative counts per tenant, event name and outcome for Prometheus.

Recording an event's outcome is one Lua script (`record_event.lua`): an event gets exactly one
settling outcome, and the run's and the metrics' counters move once, also when a message is
redelivered.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

from worker import keys
from worker.state.client import TextRedis, lua

RECORD_EVENT = lua(__file__, "record_event.lua")

#: Hash `<tenant>|<event name>|<outcome>` -> events that reached the outcome, over every run (never reset).
METRICS_EVENTS_KEY = f"{keys.PREFIX}:metrics:events"
EVENT_LEDGER_MAX_ENTRIES = 200


class EventOutcome(StrEnum):
    SENT = "sent"                                  #: Klaviyo accepted it (202)
    DUPLICATE = "duplicate"                        #: seen again after it had an outcome: not sent again
    DROPPED_NO_CONSENT = "dropped_no_consent"      #: the customer has not opted in: never sent
    DROPPED_NO_PROFILE = "dropped_no_profile"      #: no Klaviyo profile this service synced: never sent
    REJECTED = "rejected"                          #: Klaviyo refused it (4xx); its detail is kept
    FAILED = "failed"                              #: the customer's sync failed for good: not sent


class EventState:
    """`ttl_s`: how long a customer's handled ids and event ledger are kept after their last event."""

    def __init__(self, client: TextRedis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._record_event = client.register_script(RECORD_EVENT)

    def handled_events(self, tenant: str, customer_id: str, unique_ids: list[str]) -> set[str]:
        """Those of `unique_ids` that already have an outcome."""
        if not unique_ids:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for unique_id in unique_ids:
            pipe.sismember(keys.events_handled(tenant, customer_id), unique_id)
        return {uid for uid, member in zip(unique_ids, pipe.execute(), strict=True) if member}

    def attempted_events(self, tenant: str, customer_id: str) -> set[str]:
        return self.redis.smembers(keys.events_attempted(tenant, customer_id))

    def mark_attempted(self, tenant: str, sending: dict[str, list[str]]) -> None:
        """Customer id -> unique ids about to be sent (their outcome is recorded once Klaviyo answers)."""
        pipe = self.redis.pipeline(transaction=False)
        for customer_id, unique_ids in sending.items():
            if unique_ids:
                pipe.sadd(keys.events_attempted(tenant, customer_id), *unique_ids)
                pipe.expire(keys.events_attempted(tenant, customer_id), self.ttl_s)
        pipe.execute()

    def record_event(self, *, run_id: str, tenant: str, customer_id: str, metric: str, unique_id: str,
                     time_iso: str, outcome: EventOutcome, reason: str = "", profile_id: str | None = None) -> bool:
        """Record what became of one event; False if it already had a settling outcome (then nothing is
        counted). A duplicate is counted each time it is seen."""
        entry: dict[str, Any] = {"run": run_id, "event": metric, "unique_id": unique_id, "time": time_iso,
                                 "outcome": outcome.value, "at": time.time()}
        if reason:
            entry["reason"] = reason
        if profile_id:
            entry["profile_id"] = profile_id
        return bool(self._record_event(
            keys=[keys.events_handled(tenant, customer_id), keys.events_attempted(tenant, customer_id),
                  keys.events_ledger(tenant, customer_id), keys.run(run_id), METRICS_EVENTS_KEY],
            args=[unique_id, outcome.value, json.dumps(entry, ensure_ascii=False), EVENT_LEDGER_MAX_ENTRIES,
                  self.ttl_s, f"{tenant}|{metric}|{outcome.value}", "0" if outcome == EventOutcome.DUPLICATE else "1"],
        ))

    def event_history(self, tenant: str, customer_id: str) -> list[dict[str, Any]]:
        """The customer's events, newest first."""
        return [json.loads(e) for e in self.redis.lrange(keys.events_ledger(tenant, customer_id), 0, -1)]

    # --- levels last synced ----------------------------------------------------------------------

    def synced_levels(self, tenant: str, customer_ids: list[str]) -> dict[str, list[str] | None]:
        """Customer id -> the level names held at the last sync (None: never synced with known levels)."""
        if not customer_ids:
            return {}
        raw = self.redis.hmget(keys.synced_levels(tenant), customer_ids)
        return {cid: json.loads(value) if value else None for cid, value in zip(customer_ids, raw, strict=True)}

    def remember_levels(self, tenant: str, levels: dict[str, list[str]]) -> None:
        if levels:
            self.redis.hset(keys.synced_levels(tenant), mapping={
                cid: json.dumps(names, ensure_ascii=False) for cid, names in levels.items()})

    # --- a tenant whose events Klaviyo refuses ---------------------------------------------------

    def block_events(self, tenant: str, reason: str, ttl_s: int) -> bool:
        """Stop sending the tenant's events for `ttl_s`; True if this call blocked them (log once)."""
        return bool(self.redis.set(keys.events_blocked(tenant), json.dumps({"reason": reason, "at": time.time()}),
                                   ex=ttl_s, nx=True))

    def events_blocked(self, tenant: str) -> str | None:
        raw = self.redis.get(keys.events_blocked(tenant))
        return str(json.loads(raw)["reason"]) if raw else None

    def unblock_events(self, tenant: str) -> bool:
        return bool(self.redis.delete(keys.events_blocked(tenant)))

    # --- metrics ---------------------------------------------------------------------------------

    def event_totals(self) -> dict[tuple[str, str, str], int]:
        """(tenant, event name, outcome) -> events, over every run."""
        totals: dict[tuple[str, str, str], int] = {}
        for name, count in self.redis.hgetall(METRICS_EVENTS_KEY).items():
            tenant, _, rest = name.partition("|")
            metric, _, outcome = rest.rpartition("|")
            totals[(tenant, metric, outcome)] = int(count)
        return totals
