"""The producers' state in Redis: each tenant's incremental watermark (and the events' catch-up one), the
changes already enqueued (so an overlapping pass does not enqueue them again), and the locks that keep
one pass of a kind running at a time. Keys in `worker.keys`, so the data written before this module moved still reads.

`worker.metrics` reads the watermark too (the oldest unsynced change), through the callable `cli.metrics`
hands it (`Watermarks.watermark`): `worker/` never imports `producers/`."""

from __future__ import annotations

from datetime import datetime

import redis

from worker import keys
from worker.state.client import text_client
from worker.state.locks import RELEASE_LOCK
from worker.state.runs import epoch_us


class Watermarks:
    """`client` must decode responses (`worker.runtime.make_redis` does)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = text_client(client)
        self._release_pass = self.redis.register_script(RELEASE_LOCK)

    def _read(self, key: str) -> datetime | None:
        raw = self.redis.get(key)
        return datetime.fromisoformat(raw) if raw else None

    def _advance(self, key: str, moment: datetime) -> None:
        """Only ever moves forward."""
        current = self._read(key)
        if current is None or moment > current:
            self.redis.set(key, moment.isoformat())

    def watermark(self, tenant: str) -> datetime | None:
        return self._read(keys.watermark(tenant))

    def set_watermark(self, tenant: str, moment: datetime) -> None:
        self._advance(keys.watermark(tenant), moment)

    def event_watermark(self, tenant: str) -> datetime | None:
        """Where the events' catch-up pass (producers/event_catchup.py) reads from."""
        return self._read(keys.events_watermark(tenant))

    def set_event_watermark(self, tenant: str, moment: datetime) -> None:
        self._advance(keys.events_watermark(tenant), moment)

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
        self._release_pass(keys=[keys.pass_lock(tenant, kind)], args=[token])
