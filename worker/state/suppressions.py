"""Suppressions this service sent: which emails it suppressed (only those are ever lifted), the jobs
Klaviyo has not applied yet, and the profile id remembered for each customer."""

from __future__ import annotations

import json
import time
from typing import Any

from worker import keys
from worker.state.client import TextRedis


class Suppressions:
    def __init__(self, client: TextRedis) -> None:
        self.redis = client

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

