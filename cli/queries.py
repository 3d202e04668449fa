"""What the operators' commands ask Redis: the run store opened read-only, a run by id, its customers that
did not succeed, the failures a retry can re-drive, and what waits on the broker's queues.

Reads only: ids, outcomes and reasons from the run records and the per-customer ledger, never a key or a
customer's record.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from typing import Any
from urllib.parse import urlsplit

import redis
from rich.markup import escape

from cli import context as ctx
from cli.render import RANK, iso
from worker.broker import BrokerError, open_broker
from worker.messages import QUEUE_BACKFILL, QUEUE_INCREMENTAL
from worker.outcomes import REDRIVABLE
from worker.runtime import make_redis
from worker.settings import Settings, TenantConfig
from worker.store import RunInfo, Store

#: How far back `failures` and `retry-failures` look, per tenant, when no --run is given.
RECENT_RUNS = 20


def _where(url: str) -> str:
    """Host and port of a Redis or AMQP URL, without the password it may carry."""
    parts = urlsplit(url)
    default_port = 5672 if parts.scheme.startswith("amqp") or parts.scheme == "pyamqp" else 6379
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or default_port}"


@contextmanager
def redis_errors(config: Settings) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise ctx.fail(f"Redis at {_where(config.redis_url)} failed ({type(exc).__name__}: {exc}); check "
                       "SYNC_REDIS_URL and that Redis is running") from None


@contextmanager
def state() -> Iterator[tuple[dict[str, TenantConfig], Store]]:
    """The tenants and the store, for commands that only read Redis (no HTTP clients, no rate limits)."""
    config = ctx.settings()
    all_tenants = ctx.tenants(config)
    client = make_redis(config.redis_url)
    try:
        with redis_errors(config):
            yield all_tenants, Store(client, config.retention_days)
    finally:
        client.close()


def queues_text(config: Settings) -> str:
    """What waits on the broker's sync queues (`SYNC_BROKER_URL`, perhaps not the state Redis), in one line."""
    broker = open_broker(config.broker)
    try:
        depths = broker.depths([QUEUE_BACKFILL, QUEUE_INCREMENTAL])
    except BrokerError as exc:
        cause = type(exc.__cause__).__name__
        return f"[yellow]queues unknown:[/] the broker at {_where(config.broker)} failed ({cause})"
    finally:
        broker.close()
    return "waiting on the broker: " + ", ".join(f"{queue} {depth}" for queue, depth in depths.items())


def run_or_fail(store: Store, run_id: str) -> RunInfo:
    info = store.run(run_id)
    if info is None:
        raise ctx.fail(f"no run {escape(repr(run_id))} in Redis (a typo, or older than SYNC_RETENTION_DAYS); "
                       "`loyale-sync runs` lists the recent ones")
    return info


def problem_rows(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Every non-success customer of the run: ids, outcome and reason only (the ledger keeps no record)."""
    rows = [{"customer_id": cid, "outcome": entry.get("outcome", ""), "reason": entry.get("reason", ""),
             "profile_id": entry.get("profile_id"), "recorded_at": iso(entry.get("at"))}
            for cid, entry in store.problems(run_id).items()]
    return sorted(rows, key=lambda r: (RANK.get(r["outcome"], len(RANK)), r["customer_id"]))



@dataclass(frozen=True)
class Failure:
    tenant: str
    customer_id: str
    outcome: str
    reason: str
    run: str
    at: float | None


def runs_to_scan(store: Store, all_tenants: dict[str, TenantConfig], tenant: str | None,
                 run_id: str | None) -> list[RunInfo]:
    if run_id is None:
        return [info for chosen in ctx.selected(all_tenants, tenant) for info in store.runs(chosen.id, RECENT_RUNS)]
    info = run_or_fail(store, run_id)
    if tenant is not None and info.tenant != tenant:
        raise ctx.fail(f"run {run_id} belongs to tenant {info.tenant!r}, not {tenant!r}")
    return [info]


def open_failures(store: Store, runs: list[RunInfo]) -> list[Failure]:
    """The `failed` and `rejected` customers of these runs that no later sync has resolved.

    A customer counts once, as the newest entry of its ledger says: if that is a success (a later run,
    a webhook, a retry), it is no longer a failure, whichever run it failed in.
    """
    candidates: dict[tuple[str, str], Failure] = {}
    for info in sorted(runs, key=lambda r: r.started_at, reverse=True):
        for cid, entry in store.problems(info.id).items():
            if entry.get("outcome") in REDRIVABLE and (info.tenant, cid) not in candidates:
                candidates[(info.tenant, cid)] = Failure(info.tenant, cid, entry["outcome"], entry.get("reason", ""),
                                                         info.id, entry.get("at"))
    found: list[Failure] = []
    by_tenant = sorted(candidates.values(), key=lambda f: f.tenant)
    for tenant, group in groupby(by_tenant, key=lambda f: f.tenant):
        failures = list(group)
        latest = store.latest_entries(tenant, [f.customer_id for f in failures])
        for failure in failures:
            now = latest.get(failure.customer_id)
            if now is None:  # the ledger expired or was trimmed: the run's record is all we know
                found.append(failure)
            elif now.get("outcome") in REDRIVABLE:
                found.append(Failure(tenant, failure.customer_id, now["outcome"], now.get("reason", ""),
                                     now.get("run") or failure.run, now.get("at")))
    return sorted(found, key=lambda f: (f.tenant, f.outcome, f.customer_id))
