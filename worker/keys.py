"""Every Redis key this service writes, in one place. All start with `lks:` so they never collide
with Celery's own keys when the broker and the state share a database."""

from __future__ import annotations

PREFIX = "lks"


def run(run_id: str) -> str:
    """Hash: tenant, kind, state, timestamps, `expected`, `completed`, `outcome:<name>` counters."""
    return f"{PREFIX}:run:{run_id}"


def run_outcomes(run_id: str) -> str:
    """Hash customer id -> outcome: one terminal outcome per customer per run (HSETNX)."""
    return f"{PREFIX}:run:{run_id}:outcomes"


def run_problems(run_id: str) -> str:
    """Hash customer id -> JSON {outcome, reason}: every non-success customer, for the report."""
    return f"{PREFIX}:run:{run_id}:problems"


def run_requests(run_id: str) -> str:
    """Hash `<endpoint> <status>` -> count of Klaviyo requests this run spent."""
    return f"{PREFIX}:run:{run_id}:requests"


def runs_index(tenant: str | None = None) -> str:
    """Sorted set of run ids by start time, for one tenant or all."""
    return f"{PREFIX}:runs:{tenant}" if tenant else f"{PREFIX}:runs"


def ledger(tenant: str, customer_id: str) -> str:
    """List of JSON entries (newest first): the customer's history of outcomes across runs."""
    return f"{PREFIX}:ledger:{tenant}:{customer_id}"


def synced(tenant: str) -> str:
    """Hash customer id -> updatedDate (epoch microseconds) of the newest snapshot synced."""
    return f"{PREFIX}:tenant:{tenant}:synced"


def suppressed_by_us(tenant: str) -> str:
    """Hash email -> time: suppressions this service set (only these are ever lifted)."""
    return f"{PREFIX}:tenant:{tenant}:suppressed"


def profile_ids(tenant: str) -> str:
    """Hash customer id -> the Klaviyo profile id this service last wrote or found for it."""
    return f"{PREFIX}:tenant:{tenant}:profiles"


def pending_suppressions(tenant: str) -> str:
    """Hash email -> JSON {action, job, customer_id, at}: a suppress/unsuppress sent and not yet seen
    applied (Klaviyo applies them minutes to hours later); re-checked by `sync.recheck_suppressions`."""
    return f"{PREFIX}:tenant:{tenant}:pending-suppressions"


def refused_phones(tenant: str) -> str:
    """Hash phone -> time: phones Klaviyo refused (an unsupported region, invalid); not sent again."""
    return f"{PREFIX}:tenant:{tenant}:refused-phones"


def refused_regions(tenant: str) -> str:
    """Hash region code -> expiry epoch: regions whose phones Klaviyo refused for the tenant's account
    ("not in a supported region for this account"); their phones are left out, not sent and refused."""
    return f"{PREFIX}:tenant:{tenant}:refused-regions"


def phone_taken(tenant: str, phone: str) -> str:
    """String, with a TTL: the phone belongs to another Klaviyo profile; not offered again until it expires."""
    return f"{PREFIX}:phone-taken:{tenant}:{phone}"


def phone_claim(tenant: str, phone: str) -> str:
    """String customer id, with a TTL: this customer sent the phone to Klaviyo recently, while a
    lookup may not see it yet. Another customer's row carrying it would merge two people."""
    return f"{PREFIX}:phone:{tenant}:{phone}"


def paused(tenant: str) -> str:
    """String JSON {reason, at}: the tenant's credentials failed; its tasks stop until fixed."""
    return f"{PREFIX}:tenant:{tenant}:paused"


def tenant_backoff(tenant: str) -> str:
    """Exists (with a TTL) while the tenant backs off after a 429: no Klaviyo request is granted."""
    return f"{PREFIX}:tenant:{tenant}:backoff"


def rate_log(account: str, endpoint: str, window: str) -> str:
    """Sorted set of request times (ms) granted for the account's endpoint in the burst/steady window."""
    return f"{PREFIX}:rl:{account}:{endpoint}:{window}"


def account_of_key(fingerprint: str) -> str:
    """String: the Klaviyo account a private key belongs to (from GET /api/accounts), by key fingerprint."""
    return f"{PREFIX}:account:{fingerprint}"


def customer_lock(tenant: str, customer_id: str) -> str:
    """One sync of a customer at a time, so a webhook and a pass cannot interleave their writes."""
    return f"{PREFIX}:lock:{tenant}:{customer_id}"


def journal(run_id: str) -> str:
    """List of JSON entries: the old value of every field a run overwrote (for review and undo)."""
    return f"{PREFIX}:journal:{run_id}"


def run_enqueued(run_id: str) -> str:
    """Set of customer ids enqueued in the run: dedupes a customer that paging returns twice."""
    return f"{PREFIX}:run:{run_id}:enqueued"


def run_held(run_id: str) -> str:
    """Hash batch token -> "customers:expiry epoch": the run's customers a worker's batch holds off the
    queue without an outcome yet (looked up, in bulk jobs), so the producer's bound counts only the ones
    that wait. An entry whose batch died lapses at its expiry."""
    return f"{PREFIX}:run:{run_id}:held"


def run_pending(run_id: str) -> str:
    """Hash customer id -> planned outcome, written before our write is sent: if the worker dies after
    the write took effect, the redelivered task reports what the first attempt did, not `unchanged`."""
    return f"{PREFIX}:run:{run_id}:pending"


def watermark(tenant: str) -> str:
    """String ISO time: incremental passes read customers updated since this (minus the overlap)."""
    return f"{PREFIX}:tenant:{tenant}:watermark"


def change_seen(tenant: str, customer_id: str, updated_us: int) -> str:
    """Exists for a while once (customer, updatedDate) was enqueued: overlapping passes skip it."""
    return f"{PREFIX}:chg:{tenant}:{customer_id}:{updated_us}"


def pass_lock(tenant: str, kind: str) -> str:
    """One incremental pass (or scheduled backfill) of a tenant at a time."""
    return f"{PREFIX}:tenant:{tenant}:pass:{kind}"


# --- loyalty events (worker/state/events.py) ----------------------------------------------------------

def events_handled(tenant: str, customer_id: str) -> str:
    """Set of the unique ids of the customer's events that have an outcome (sent, dropped, rejected):
    one seen again is a duplicate, never sent twice by us."""
    return f"{PREFIX}:ev:{tenant}:{customer_id}:handled"


def events_attempted(tenant: str, customer_id: str) -> str:
    """Set of unique ids sent to Klaviyo whose outcome is not recorded yet (the worker may have died
    after sending): sent again only one by one (`POST /api/events` drops a repeat; a repeat in a bulk
    job would fail the whole job)."""
    return f"{PREFIX}:ev:{tenant}:{customer_id}:attempted"


def events_ledger(tenant: str, customer_id: str) -> str:
    """List of JSON entries (newest first): the customer's events and what became of each."""
    return f"{PREFIX}:ev:{tenant}:{customer_id}:ledger"


def synced_levels(tenant: str) -> str:
    """Hash customer id -> JSON list of the level names held when the customer was last synced."""
    return f"{PREFIX}:tenant:{tenant}:levels"


def events_watermark(tenant: str) -> str:
    """String ISO time: the events' catch-up pass reads transactions and coupons since this (minus the overlap)."""
    return f"{PREFIX}:tenant:{tenant}:events-watermark"


def events_blocked(tenant: str) -> str:
    """String JSON {reason, at}, with a TTL: Klaviyo refused the tenant's events (the key lacks
    events:write); events are not sent until it expires. The profile sync goes on."""
    return f"{PREFIX}:tenant:{tenant}:events-blocked"
