"""Runs and the per-customer ledger, in Redis: run records and counters, each customer's outcome per run
(the ledger), what a sync remembers of a customer (`Memory`), and the cumulative metrics totals.

Recording an outcome is one Lua script (`record_outcome.lua`), so under redelivery (a killed worker, a
duplicate message) a customer still gets exactly one outcome per run and every counter moves exactly once.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.typing import EncodableT, FieldT

from worker import keys
from worker.merge import Memory
from worker.outcomes import PROBLEMS, SETTLED, Outcome
from worker.state.client import TextRedis, lua

RECORD_OUTCOME = lua(__file__, "record_outcome.lua")
FINISH_PRODUCING = lua(__file__, "finish_producing.lua")

#: Outcomes whose profile id is the customer's own profile (a conflict's is someone else's).
REMEMBERED = frozenset({Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED, Outcome.SKIPPED_EXISTING,
                        Outcome.SUPPRESSED, Outcome.UNSUPPRESSED})
LEDGER_MAX_ENTRIES = 50

# --- metrics keys: cumulative counters for Prometheus (worker/metrics.py) ---------------------------
# They never expire and are never reset (a Prometheus counter only goes up); their size is bounded
# by tenants x outcomes and tenants x endpoints x statuses.
#: Hash `<tenant>|<outcome>` -> customers that reached the outcome, over every run.
METRICS_OUTCOMES_KEY = f"{keys.PREFIX}:metrics:outcomes"
#: Hash `<tenant>|<endpoint>|<status>` -> Klaviyo requests made inside a run (status 0: no answer).
METRICS_REQUESTS_KEY = f"{keys.PREFIX}:metrics:requests"
#: Runs whose tenant a process remembers for request counting before it forgets them all.
RUN_TENANTS_CACHED_MAX = 10_000


def epoch_us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def new_run_id(kind: str) -> str:
    """Sortable, readable and unique: `backfill-20261128T184500-3f9a`."""
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunInfo:
    id: str
    tenant: str
    kind: str
    state: str
    started_at: float
    finished_at: float | None
    expected: int | None
    completed: int
    counts: dict[str, int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    deferrals: int = 0
    #: When the producer finished, and when a customer last got an outcome (epoch seconds).
    produced_at: float | None = None
    progress_at: float | None = None
    #: Loyalty events of the run's customers per outcome (`worker.state.events.EventOutcome`).
    events: dict[str, int] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        end = self.finished_at or time.time()
        return max(0.0, end - self.started_at)

    @property
    def done(self) -> bool:
        return self.state == "done"


@dataclass(frozen=True)
class OutcomeRecord:
    """A customer's terminal outcome for a run, as `RunLedger.record_outcomes` records it."""

    run_id: str
    tenant: str
    customer_id: str
    outcome: Outcome
    reason: str = ""
    profile_id: str | None = None
    updated_date: datetime | None = None
    warnings: list[str] | None = None


class RunLedger:
    """Runs, the ledger and the sync memory. `ttl_s`: how long runs and ledgers are kept."""

    def __init__(self, client: TextRedis, ttl_s: int, journal_ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.journal_ttl_s = journal_ttl_s
        self._record = client.register_script(RECORD_OUTCOME)
        self._finish = client.register_script(FINISH_PRODUCING)
        self._run_tenants: dict[str, str] = {}  # run id -> tenant, for request metrics

    # --- runs ------------------------------------------------------------------------------------

    def create_run(self, tenant: str, kind: str, run_id: str | None = None, **meta: str) -> str:
        run_id = run_id or new_run_id(kind)
        now = time.time()
        fields: dict[FieldT, EncodableT] = {
            "tenant": tenant, "kind": kind, "state": "producing", "started_at": repr(now),
            **{f"meta:{k}": v for k, v in meta.items()}}
        pipe = self.redis.pipeline()
        pipe.hset(keys.run(run_id), mapping=fields)
        # a record re-created after Redis lost it keeps the outcomes counted since (see `resume`)
        pipe.hsetnx(keys.run(run_id), "completed", 0)
        pipe.zadd(keys.runs_index(tenant), {run_id: now})
        pipe.zadd(keys.runs_index(), {run_id: now})
        for key in (keys.run(run_id),):
            pipe.expire(key, self.ttl_s)
        pipe.execute()
        return run_id

    def mark_enqueued(self, run_id: str, customer_ids: list[str]) -> list[bool]:
        """Remember that these customers are on the queue for the run; False for ones already there (and
        for the repeats of one the list holds twice). Three commands whatever the list's length: one SADD
        each cost the producer a tenth of its CPU."""
        if not customer_ids:
            return []
        key = keys.run_enqueued(run_id)
        pipe = self.redis.pipeline()   # MULTI/EXEC: nothing is added between the check and the add
        pipe.smismember(key, customer_ids)
        pipe.sadd(key, *customer_ids)
        pipe.expire(key, self.ttl_s)
        known: list[int] = pipe.execute()[0]
        seen: set[str] = set()
        fresh = []
        for customer_id, was_known in zip(customer_ids, known, strict=True):
            fresh.append(not was_known and customer_id not in seen)
            seen.add(customer_id)
        return fresh

    def missing(self, run_id: str) -> list[str]:
        """Customers enqueued for the run that have no outcome yet."""
        enqueued = self.redis.smembers(keys.run_enqueued(run_id))
        return sorted(enqueued - set(self.redis.hkeys(keys.run_outcomes(run_id))))

    def enqueued_count(self, run_id: str) -> int:
        return int(self.redis.scard(keys.run_enqueued(run_id)))

    def hold(self, run_id: str, token: str, customers: int, ttl_s: float) -> None:
        """A worker's batch (`token`) holds `customers` of the run off the queue, without an outcome yet,
        for `ttl_s` unless it says so again (a batch that died stops counting then); 0 lets go of them."""
        key = keys.run_held(run_id)
        if customers <= 0:
            self.redis.hdel(key, token)
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, token, f"{customers}:{time.time() + ttl_s}")
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def waiting(self, run_id: str) -> int:
        """The run's customers enqueued, without an outcome, and not held by a live batch: on the queue,
        in a worker's buffer, or sent back to the queue for later. The producer's backpressure bound."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(keys.run_enqueued(run_id))
        pipe.hget(keys.run(run_id), "completed")
        pipe.hvals(keys.run_held(run_id))
        enqueued, completed, held = pipe.execute()
        now = time.time()
        in_batches = 0
        for entry in held:
            count, _, expiry = entry.partition(":")
            if float(expiry) > now:
                in_batches += int(count)
        return max(0, int(enqueued) - int(completed or 0) - in_batches)

    def finish_producing(self, run_id: str, expected: int) -> None:
        """The producer enqueued `expected` customers; the run is done when all have an outcome."""
        self._finish(keys=[keys.run(run_id)], args=[expected, repr(time.time())])
        for key in (keys.run_outcomes(run_id), keys.run_problems(run_id), keys.run_requests(run_id),
                    keys.run_enqueued(run_id)):
            self.redis.expire(key, self.ttl_s)
        self.redis.expire(keys.journal(run_id), self.journal_ttl_s)

    def set_run_field(self, run_id: str, **values: str) -> None:
        self.redis.hset(keys.run(run_id), mapping=values)

    def run(self, run_id: str) -> RunInfo | None:
        raw = self.redis.hgetall(keys.run(run_id))
        if not raw:
            return None
        return RunInfo(
            id=run_id, tenant=raw.get("tenant", ""), kind=raw.get("kind", ""), state=raw.get("state", ""),
            started_at=float(raw.get("started_at", 0)),
            finished_at=float(raw["finished_at"]) if raw.get("finished_at") else None,
            expected=int(raw["expected"]) if raw.get("expected") else None,
            completed=int(raw.get("completed", 0)),
            counts={k.split(":", 1)[1]: int(v) for k, v in raw.items() if k.startswith("outcome:")},
            meta={k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("meta:")},
            deferrals=int(raw.get("deferrals", 0)),
            produced_at=float(raw["produced_at"]) if raw.get("produced_at") else None,
            progress_at=float(raw["progress_at"]) if raw.get("progress_at") else None,
            events={k.split(":", 1)[1]: int(v) for k, v in raw.items() if k.startswith("event:")},
        )

    def runs(self, tenant: str | None = None, limit: int = 20) -> list[RunInfo]:
        ids = self.redis.zrevrange(keys.runs_index(tenant), 0, limit - 1)
        return [info for run_id in ids if (info := self.run(run_id)) is not None]

    def problems(self, run_id: str) -> dict[str, dict[str, Any]]:
        return {cid: json.loads(entry) for cid, entry in self.redis.hgetall(keys.run_problems(run_id)).items()}

    def outcomes(self, run_id: str) -> dict[str, str]:
        return dict(self.redis.hgetall(keys.run_outcomes(run_id)))

    def outcomes_of(self, run_id: str, customer_ids: list[str]) -> list[str | None]:
        """The run's outcome of each customer (None: none yet)."""
        return list(self.redis.hmget(keys.run_outcomes(run_id), customer_ids)) if customer_ids else []

    def count_deferral(self, run_id: str) -> None:
        """A customer waited for the rate limiter (a countdown, not an attempt)."""
        self.redis.hincrby(keys.run(run_id), "deferrals", 1)

    def count_request(self, run_id: str | None, endpoint: str, status: int) -> None:
        if run_id:
            self.redis.hincrby(keys.run_requests(run_id), f"{endpoint} {status}", 1)
            self.count_request_total(run_id, endpoint, status)

    def requests(self, run_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis.hgetall(keys.run_requests(run_id)).items()}

    # --- outcomes and the ledger -----------------------------------------------------------------

    def record_outcome(
        self, *, run_id: str, tenant: str, customer_id: str, outcome: Outcome, reason: str = "",
        profile_id: str | None = None, updated_date: datetime | None = None, warnings: list[str] | None = None,
    ) -> bool:
        """Record the customer's terminal outcome for the run; False if it already had one."""
        return self.record_outcomes([OutcomeRecord(
            run_id=run_id, tenant=tenant, customer_id=customer_id, outcome=outcome, reason=reason,
            profile_id=profile_id, updated_date=updated_date, warnings=warnings)])[0]

    def record_outcomes(self, records: list[OutcomeRecord]) -> list[bool]:
        """`record_outcome` for many customers in one round trip: each is its own run of the script
        (atomic per customer, so each still gets exactly one outcome per run), pipelined."""
        if not records:
            return []
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for r in records:
            entry: dict[str, Any] = {
                "run": r.run_id, "outcome": r.outcome.value, "reason": r.reason, "profile_id": r.profile_id,
                "updated_date": r.updated_date.isoformat() if r.updated_date else None, "at": now}
            if r.warnings:
                entry["warnings"] = r.warnings
            settled = r.outcome in SETTLED and r.updated_date is not None
            self._record(
                keys=[keys.run_outcomes(r.run_id), keys.run(r.run_id), keys.run_problems(r.run_id),
                      keys.ledger(r.tenant, r.customer_id), keys.synced(r.tenant), METRICS_OUTCOMES_KEY,
                      keys.profile_ids(r.tenant)],
                args=[r.customer_id, r.outcome.value, json.dumps(entry, ensure_ascii=False),
                      "1" if r.outcome in PROBLEMS else "0",
                      str(epoch_us(r.updated_date)) if settled and r.updated_date else "",
                      LEDGER_MAX_ENTRIES, self.ttl_s, repr(now), f"{r.tenant}|{r.outcome.value}",
                      r.profile_id if r.profile_id and r.outcome in REMEMBERED else ""],
                client=pipe)
        return [bool(recorded) for recorded in pipe.execute()]

    def history(self, tenant: str, customer_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(keys.ledger(tenant, customer_id), 0, -1)]

    def memory(self, tenant: str, customer_id: str, email: str | None) -> Memory:
        return self.memories(tenant, [(customer_id, email)])[0]

    def mark_pending(self, run_id: str, planned: dict[str, str]) -> None:
        """Remember the outcome each customer's write is about to produce (see `keys.run_pending`)."""
        if planned:
            pipe = self.redis.pipeline()
            pending: dict[FieldT, EncodableT] = {cid: outcome for cid, outcome in planned.items()}
            pipe.hset(keys.run_pending(run_id), mapping=pending)
            pipe.expire(keys.run_pending(run_id), self.ttl_s)
            pipe.execute()

    def pending(self, run_id: str, customer_ids: list[str]) -> dict[str, str]:
        if not customer_ids:
            return {}
        values = self.redis.hmget(keys.run_pending(run_id), customer_ids)
        return {cid: v for cid, v in zip(customer_ids, values, strict=True) if v}

    def memories(self, tenant: str, customers: list[tuple[str, str | None]]) -> list[Memory]:
        """`memory` for many (customer id, email) pairs in one round trip."""
        if not customers:
            return []
        ids = [customer_id for customer_id, _ in customers]
        emails = [email or "" for _, email in customers]
        pipe = self.redis.pipeline(transaction=False)
        # A field per customer of the tenant's hashes (one HMGET each), and each customer's own ledger.
        pipe.hmget(keys.synced(tenant), ids)
        pipe.hmget(keys.suppressed_by_us(tenant), emails)
        pipe.hmget(keys.profile_ids(tenant), ids)
        pipe.hmget(keys.pending_suppressions(tenant), emails)
        for customer_id in ids:
            pipe.lindex(keys.ledger(tenant, customer_id), 0)
        synced, suppressed, profile_ids, pendings, *ledgers = pipe.execute()
        memories = []
        for i, (customer_id, email) in enumerate(customers):
            last, ours, profile_id, pending, latest = synced[i], suppressed[i], profile_ids[i], pendings[i], ledgers[i]
            entry = json.loads(pending) if pending and email else {}
            # Only this customer's own pending job counts (two customers may share an email by case).
            action = entry.get("action") if entry.get("customer_id") in (customer_id, "", None) else None
            memories.append(Memory(
                last_synced=datetime.fromtimestamp(int(last) / 1_000_000, UTC) if last else None,
                suppressed_by_us=bool(email) and bool(ours), profile_id=profile_id or None,
                pending_suppression=action if action in ("suppress", "unsuppress") else None,
                last_outcome=json.loads(latest).get("outcome") if latest else None))
        return memories

    # --- operator reports (cli/ops.py) -----------------------------------------------------------

    def latest_entries(self, tenant: str, customer_ids: list[str], chunk: int = 1000) -> dict[str, dict[str, Any]]:
        """The newest ledger entry of each customer, a pipeline per `chunk`; customers without one are left out."""
        latest: dict[str, dict[str, Any]] = {}
        for start in range(0, len(customer_ids), chunk):
            ids = customer_ids[start:start + chunk]
            pipe = self.redis.pipeline(transaction=False)
            for customer_id in ids:
                pipe.lindex(keys.ledger(tenant, customer_id), 0)
            latest.update({cid: json.loads(raw) for cid, raw in zip(ids, pipe.execute(), strict=True) if raw})
        return latest

    # --- metrics: cumulative per-tenant counters (worker/metrics.py reads them at scrape time) ----

    def count_request_total(self, run_id: str, endpoint: str, status: int) -> None:
        """Count a Klaviyo request of the run under the run's tenant, over every run (never expires)."""
        tenant = self._run_tenants.get(run_id)
        if tenant is None:
            tenant = self.redis.hget(keys.run(run_id), "tenant") or ""
            if len(self._run_tenants) >= RUN_TENANTS_CACHED_MAX:
                self._run_tenants.clear()
            self._run_tenants[run_id] = tenant
        if tenant:
            self.redis.hincrby(METRICS_REQUESTS_KEY, f"{tenant}|{endpoint}|{status}", 1)

    def outcome_totals(self) -> dict[tuple[str, str], int]:
        """(tenant, outcome) -> customers that reached it, over every run."""
        totals: dict[tuple[str, str], int] = {}
        for field_name, count in self.redis.hgetall(METRICS_OUTCOMES_KEY).items():
            tenant, _, outcome = field_name.partition("|")
            totals[(tenant, outcome)] = int(count)
        return totals

    def request_totals(self) -> dict[tuple[str, str, str], int]:
        """(tenant, endpoint, status) -> Klaviyo requests made inside runs, over every run."""
        totals: dict[tuple[str, str, str], int] = {}
        for field_name, count in self.redis.hgetall(METRICS_REQUESTS_KEY).items():
            tenant, _, rest = field_name.partition("|")
            endpoint, _, status = rest.rpartition("|")
            totals[(tenant, endpoint, status)] = int(count)
        return totals
