"""The journal: the old value of every field a run overwrote in Klaviyo, written before the write is sent,
so that `undo` can put it back."""

from __future__ import annotations

import json
import time
from typing import Any

from worker import keys
from worker.merge import FieldChange
from worker.state.client import TextRedis


class Journal:
    """`journal_ttl_s`: how long a run's journal is kept."""

    def __init__(self, client: TextRedis, journal_ttl_s: int) -> None:
        self.redis = client
        self.journal_ttl_s = journal_ttl_s

    def journal_overwrites(self, run_id: str, tenant: str, customer_id: str, profile_id: str,
                           changes: tuple[FieldChange, ...]) -> None:
        """Write the old value of every field about to be overwritten, before the write is sent."""
        self.journal_many(run_id, tenant, [(customer_id, profile_id, changes)])

    def journal_many(self, run_id: str, tenant: str,
                     overwrites: list[tuple[str, str, tuple[FieldChange, ...]]]) -> None:
        """`journal_overwrites` for many (customer id, profile id, changes) of one run, in one round trip."""
        now = time.time()
        entries = [json.dumps({"run": run_id, "tenant": tenant, "customer_id": customer_id, "profile_id": profile_id,
                               "field": c.field, "old": c.old, "new": c.new, "at": now}, ensure_ascii=False)
                   for customer_id, profile_id, changes in overwrites for c in changes]
        if not entries:
            return
        pipe = self.redis.pipeline()
        pipe.rpush(keys.journal(run_id), *entries)
        pipe.expire(keys.journal(run_id), self.journal_ttl_s)
        pipe.execute()

    def journal(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(keys.journal(run_id), 0, -1)]

