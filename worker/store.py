"""Run counters, the per-customer ledger and sync memory, in Redis.

Recording an outcome is one Lua script, so under redelivery (a killed worker, a duplicate message)
a customer still gets exactly one outcome per run and every counter moves exactly once.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from worker import keys
from worker.merge import FieldChange, Memory
from worker.outcomes import PROBLEMS, SETTLED, Outcome

#: Outcomes whose profile id is the customer's own profile (a conflict's is someone else's).
REMEMBERED = frozenset({Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED, Outcome.SKIPPED_EXISTING,
                        Outcome.SUPPRESSED, Outcome.UNSUPPRESSED})
#: A customer lock outlives the longest write it protects; a batch refreshes its locks while its
#: bulk jobs run (`refresh_locks`), so a slow job never lets an older snapshot overtake a newer one.
LOCK_TTL_S = 120.0
#: A phone found on another profile is not offered again for this long (the owner may change).
PHONE_TAKEN_TTL_S = 86_400

RECORD_OUTCOME = """
-- KEYS: 1 run outcomes, 2 run hash, 3 run problems, 4 customer ledger, 5 tenant synced, 6 metrics outcomes,
--       7 tenant profile ids
-- ARGV: 1 customer, 2 outcome, 3 entry json, 4 is problem, 5 updated epoch-us or '', 6 ledger max,
--       7 ttl seconds, 8 now (epoch seconds, string), 9 metrics field '<tenant>|<outcome>', 10 profile id or ''
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[7], ARGV[1], ARGV[10]) end
redis.call('HINCRBY', KEYS[6], ARGV[9], 1)
redis.call('HINCRBY', KEYS[2], 'outcome:' .. ARGV[2], 1)
local completed = redis.call('HINCRBY', KEYS[2], 'completed', 1)
redis.call('HSET', KEYS[2], 'progress_at', ARGV[8])
if ARGV[4] == '1' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[3]) end
redis.call('LPUSH', KEYS[4], ARGV[3])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
redis.call('EXPIRE', KEYS[4], ARGV[7])
if ARGV[5] ~= '' then
  local current = redis.call('HGET', KEYS[5], ARGV[1])
  if (not current) or tonumber(current) < tonumber(ARGV[5]) then redis.call('HSET', KEYS[5], ARGV[1], ARGV[5]) end
end
local expected = tonumber(redis.call('HGET', KEYS[2], 'expected') or '-1')
if redis.call('HGET', KEYS[2], 'produced') == '1' and expected >= 0 and completed >= expected then
  if redis.call('HGET', KEYS[2], 'state') ~= 'done' then
    redis.call('HSET', KEYS[2], 'state', 'done', 'finished_at', ARGV[8])
  end
end
return 1
"""

FINISH_PRODUCING = """
-- KEYS: 1 run hash. ARGV: 1 expected, 2 now
redis.call('HSET', KEYS[1], 'expected', ARGV[1], 'produced', '1', 'produced_at', ARGV[2])
local completed = tonumber(redis.call('HGET', KEYS[1], 'completed') or '0')
if completed >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'done', 'finished_at', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'state', 'running')
end
return 1
"""

ACQUIRE_LOCK = """
-- The same task id may take its own lock again: that is its message redelivered after the worker
-- that held it died, and waiting for the TTL would stall the customer for nothing.
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

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

    @property
    def duration_s(self) -> float:
        end = self.finished_at or time.time()
        return max(0.0, end - self.started_at)

    @property
    def done(self) -> bool:
        return self.state == "done"


class Store:
    """All sync state in Redis, for one deployment. `redis` is passed in (decode_responses=True)."""

    def __init__(self, client: redis.Redis, retention_days: int = 30, journal_retention_days: int = 90) -> None:
        self.redis = client
        self.ttl_s = retention_days * 86_400
        self.journal_ttl_s = journal_retention_days * 86_400
        self._record = client.register_script(RECORD_OUTCOME)
        self._finish = client.register_script(FINISH_PRODUCING)
        self._acquire = client.register_script(ACQUIRE_LOCK)
        self._release = client.register_script(RELEASE_LOCK)
        self._run_tenants: dict[str, str] = {}  # run id -> tenant, for request metrics

    # --- runs ------------------------------------------------------------------------------------

    def create_run(self, tenant: str, kind: str, run_id: str | None = None, **meta: str) -> str:
        run_id = run_id or new_run_id(kind)
        now = time.time()
        fields = {"tenant": tenant, "kind": kind, "state": "producing", "started_at": repr(now),
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
        """Remember that these customers are on the queue for the run; False for ones already there."""
        pipe = self.redis.pipeline()
        for customer_id in customer_ids:
            pipe.sadd(keys.run_enqueued(run_id), customer_id)
        pipe.expire(keys.run_enqueued(run_id), self.ttl_s)
        return [bool(added) for added in pipe.execute()[:-1]]

    def missing(self, run_id: str) -> list[str]:
        """Customers enqueued for the run that have no outcome yet."""
        enqueued = self.redis.smembers(keys.run_enqueued(run_id))
        return sorted(enqueued - set(self.redis.hkeys(keys.run_outcomes(run_id))))

    def enqueued_count(self, run_id: str) -> int:
        return int(self.redis.scard(keys.run_enqueued(run_id)))

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
        entry = {"run": run_id, "outcome": outcome.value, "reason": reason, "profile_id": profile_id,
                 "updated_date": updated_date.isoformat() if updated_date else None, "at": time.time()}
        if warnings:
            entry["warnings"] = warnings
        settled = outcome in SETTLED and updated_date is not None
        return bool(self._record(
            keys=[keys.run_outcomes(run_id), keys.run(run_id), keys.run_problems(run_id),
                  keys.ledger(tenant, customer_id), keys.synced(tenant), METRICS_OUTCOMES_KEY,
                  keys.profile_ids(tenant)],
            args=[customer_id, outcome.value, json.dumps(entry, ensure_ascii=False),
                  "1" if outcome in PROBLEMS else "0", str(epoch_us(updated_date)) if settled else "",
                  LEDGER_MAX_ENTRIES, self.ttl_s, repr(time.time()), f"{tenant}|{outcome.value}",
                  profile_id if profile_id and outcome in REMEMBERED else ""],
        ))

    def history(self, tenant: str, customer_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(keys.ledger(tenant, customer_id), 0, -1)]

    def memory(self, tenant: str, customer_id: str, email: str | None) -> Memory:
        return self.memories(tenant, [(customer_id, email)])[0]

    def mark_pending(self, run_id: str, planned: dict[str, str]) -> None:
        """Remember the outcome each customer's write is about to produce (see `keys.run_pending`)."""
        if planned:
            pipe = self.redis.pipeline()
            pipe.hset(keys.run_pending(run_id), mapping=planned)
            pipe.expire(keys.run_pending(run_id), self.ttl_s)
            pipe.execute()

    def pending(self, run_id: str, customer_ids: list[str]) -> dict[str, str]:
        if not customer_ids:
            return {}
        values = self.redis.hmget(keys.run_pending(run_id), customer_ids)
        return {cid: v for cid, v in zip(customer_ids, values, strict=True) if v}

    def memories(self, tenant: str, customers: list[tuple[str, str | None]]) -> list[Memory]:
        """`memory` for many (customer id, email) pairs in one round trip."""
        pipe = self.redis.pipeline()
        for customer_id, email in customers:
            pipe.hget(keys.synced(tenant), customer_id)
            pipe.hexists(keys.suppressed_by_us(tenant), email or "")
            pipe.hget(keys.profile_ids(tenant), customer_id)
            pipe.hget(keys.pending_suppressions(tenant), email or "")
            pipe.lindex(keys.ledger(tenant, customer_id), 0)
        raw = pipe.execute()
        memories = []
        for i, (customer_id, email) in enumerate(customers):
            last, ours, profile_id, pending, latest = raw[5 * i:5 * i + 5]
            entry = json.loads(pending) if pending and email else {}
            # Only this customer's own pending job counts (two customers may share an email by case).
            action = entry.get("action") if entry.get("customer_id") in (customer_id, "", None) else None
            memories.append(Memory(
                last_synced=datetime.fromtimestamp(int(last) / 1_000_000, UTC) if last else None,
                suppressed_by_us=bool(email) and bool(ours), profile_id=profile_id or None,
                pending_suppression=action if action in ("suppress", "unsuppress") else None,
                last_outcome=json.loads(latest).get("outcome") if latest else None))
        return memories

    def mark_suppressed(self, tenant: str, email: str, job_id: str = "", customer_id: str = "") -> None:
        """We sent a suppression for `email` (job `job_id`, applied later by Klaviyo)."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.suppressed_by_us(tenant), email, repr(time.time()))
        pipe.hset(keys.pending_suppressions(tenant), email, json.dumps(
            {"action": "suppress", "job": job_id, "customer_id": customer_id, "at": time.time()}))
        pipe.execute()

    def mark_unsuppressed(self, tenant: str, email: str, job_id: str = "", customer_id: str = "") -> None:
        """We sent an unsuppress for `email`; `suppressed_by_us` is kept until it is seen applied, so
        an opt-out inside the lag still knows the suppression was ours."""
        self.redis.hset(keys.pending_suppressions(tenant), email, json.dumps(
            {"action": "unsuppress", "job": job_id, "customer_id": customer_id, "at": time.time()}))

    def profile_ids_of(self, tenant: str) -> dict[str, str]:
        """customer id -> the Klaviyo profile id remembered for it."""
        return dict(self.redis.hgetall(keys.profile_ids(tenant)))

    def pending_suppressions(self, tenant: str) -> dict[str, dict[str, Any]]:
        return {email: json.loads(raw) for email, raw in self.redis.hgetall(keys.pending_suppressions(tenant)).items()}

    def settle_suppression(self, tenant: str, email: str, entry: dict[str, Any]) -> bool:
        """Klaviyo shows `entry`'s action applied: forget it (unless a newer one was sent meanwhile)."""
        raw = self.redis.hget(keys.pending_suppressions(tenant), email)
        if raw is None or json.loads(raw) != entry:
            return False
        pipe = self.redis.pipeline()
        pipe.hdel(keys.pending_suppressions(tenant), email)
        if entry.get("action") == "unsuppress":
            pipe.hdel(keys.suppressed_by_us(tenant), email)
        pipe.execute()
        return True

    def journal_overwrites(self, run_id: str, tenant: str, customer_id: str, profile_id: str,
                           changes: tuple[FieldChange, ...]) -> None:
        """Write the old value of every field about to be overwritten, before the write is sent."""
        if not changes:
            return
        now = time.time()
        entries = [json.dumps({"run": run_id, "tenant": tenant, "customer_id": customer_id, "profile_id": profile_id,
                               "field": c.field, "old": c.old, "new": c.new, "at": now}, ensure_ascii=False)
                   for c in changes]
        pipe = self.redis.pipeline()
        pipe.rpush(keys.journal(run_id), *entries)
        pipe.expire(keys.journal(run_id), self.journal_ttl_s)
        pipe.execute()

    def journal(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(keys.journal(run_id), 0, -1)]

    # --- tenant state ----------------------------------------------------------------------------

    def pause_tenant(self, tenant: str, reason: str) -> bool:
        """Pause the tenant; True if this call paused it (so only one error is logged)."""
        return bool(self.redis.set(keys.paused(tenant), json.dumps({"reason": reason, "at": time.time()}), nx=True))

    def tenant_paused(self, tenant: str) -> str | None:
        raw = self.redis.get(keys.paused(tenant))
        return json.loads(raw)["reason"] if raw else None

    def resume_tenant(self, tenant: str) -> bool:
        return bool(self.redis.delete(keys.paused(tenant)))

    # --- incremental passes ---------------------------------------------------------------------

    def watermark(self, tenant: str) -> datetime | None:
        raw = self.redis.get(keys.watermark(tenant))
        return datetime.fromisoformat(raw) if raw else None

    def set_watermark(self, tenant: str, moment: datetime) -> None:
        """Only ever moves forward."""
        current = self.watermark(tenant)
        if current is None or moment > current:
            self.redis.set(keys.watermark(tenant), moment.isoformat())

    def claim_changes(self, tenant: str, changes: list[tuple[str, datetime | None]], ttl_s: int) -> list[bool]:
        """True for each (customer, updatedDate) not enqueued in the last `ttl_s` (a change without a date
        is always enqueued: the stale guard in the worker still keeps order)."""
        pipe = self.redis.pipeline()
        for customer_id, updated in changes:
            if updated is None:
                pipe.echo("1")
            else:
                pipe.set(keys.change_seen(tenant, customer_id, epoch_us(updated)), "1", nx=True, ex=ttl_s)
        return [bool(v) for v in pipe.execute()]

    def try_pass_lock(self, tenant: str, kind: str, token: str, ttl_s: float) -> bool:
        return bool(self.redis.set(keys.pass_lock(tenant, kind), token, nx=True, px=int(ttl_s * 1000)))

    def release_pass_lock(self, tenant: str, kind: str, token: str) -> None:
        self._release(keys=[keys.pass_lock(tenant, kind)], args=[token])

    def log_pass(self, tenant: str, task_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.rpush(keys.pass_log(tenant), json.dumps({"at": time.time(), "task": task_id}))
        pipe.ltrim(keys.pass_log(tenant), -1000, -1)
        pipe.execute()

    def passes(self, tenant: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(keys.pass_log(tenant), 0, -1)]

    # --- per-customer lock -----------------------------------------------------------------------

    def lock_customer(self, tenant: str, customer_id: str, token: str, ttl_s: float = LOCK_TTL_S) -> bool:
        """Take the customer's lock for `token` (the task id); True if it is ours now."""
        return self.lock_customers(tenant, [(customer_id, token)], ttl_s)[0]

    def unlock_customer(self, tenant: str, customer_id: str, token: str) -> None:
        self.unlock_customers(tenant, [(customer_id, token)])

    def lock_customers(self, tenant: str, locks: list[tuple[str, str]], ttl_s: float = LOCK_TTL_S) -> list[bool]:
        """`lock_customer` for many (customer id, token) pairs in one round trip."""
        if not locks:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for customer_id, token in locks:
            self._acquire(keys=[keys.customer_lock(tenant, customer_id)], args=[token, int(ttl_s * 1000)], client=pipe)
        return [bool(granted) for granted in pipe.execute()]

    def refresh_locks(self, tenant: str, locks: list[tuple[str, str]], ttl_s: float = LOCK_TTL_S) -> None:
        """Extend locks we still hold (a bulk job can run for minutes); one taken over stays lost."""
        self.lock_customers(tenant, locks, ttl_s)

    def claim_phones(self, tenant: str, claims: list[tuple[str, str]], ttl_s: float) -> list[bool]:
        """Claim (phone, customer id) pairs for `ttl_s`: True where the phone is free or already this
        customer's, False where another customer sent it recently (its profile may not show in a
        lookup yet, and a bulk row carrying it would merge the two)."""
        if not claims:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for phone, customer_id in claims:
            self._acquire(keys=[keys.phone_claim(tenant, phone)], args=[customer_id, int(ttl_s * 1000)], client=pipe)
        return [bool(granted) for granted in pipe.execute()]

    def unusable_phones(self, tenant: str, phones: list[str]) -> set[str]:
        """The phones among `phones` that Klaviyo refused before, or that another profile held when
        last looked up (for `PHONE_TAKEN_TTL_S`): left out without spending a lookup or a write."""
        if not phones:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.refused_phones(tenant), phones)
        pipe.mget([keys.phone_taken(tenant, p) for p in phones])
        refused, taken = pipe.execute()
        return {p for p, r, t in zip(phones, refused, taken, strict=True) if r or t}

    def remember_taken_phone(self, tenant: str, phone: str) -> None:
        self.redis.set(keys.phone_taken(tenant, phone), "1", ex=PHONE_TAKEN_TTL_S)

    def remember_refused_phone(self, tenant: str, phone: str) -> None:
        """Klaviyo refused this phone for what it is (its region, its format): later syncs leave it out
        at once instead of sending it, being refused and resending every time."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.refused_phones(tenant), phone, repr(time.time()))
        pipe.expire(keys.refused_phones(tenant), self.ttl_s)
        pipe.execute()

    def unlock_customers(self, tenant: str, locks: list[tuple[str, str]]) -> None:
        if not locks:
            return
        pipe = self.redis.pipeline(transaction=False)
        for customer_id, token in locks:
            self._release(keys=[keys.customer_lock(tenant, customer_id)], args=[token], client=pipe)
        pipe.execute()

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
