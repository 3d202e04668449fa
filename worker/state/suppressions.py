"""Suppressions this service sent: which emails it suppressed (only those are ever lifted), the jobs
Klaviyo has not applied yet, and the profile id remembered for each customer."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from worker import keys
from worker.state.client import TextRedis


class Suppressions:
    def __init__(self, client: TextRedis) -> None:
        self.redis = client

    def mark_suppressed(self, tenant: str, email: str, job_id: str = "", customer_id: str = "") -> None:
        """We sent a suppression for `email` (job `job_id`, applied later by Klaviyo)."""
        self.mark_many(tenant, "suppress", [(email, customer_id)], job_id)

    def mark_unsuppressed(self, tenant: str, email: str, job_id: str = "", customer_id: str = "") -> None:
        """We sent an unsuppress for `email`; `suppressed_by_us` is kept until it is seen applied, so
        an opt-out inside the lag still knows the suppression was ours."""
        self.mark_many(tenant, "unsuppress", [(email, customer_id)], job_id)

    def mark_many(self, tenant: str, action: Literal["suppress", "unsuppress"], sent: list[tuple[str, str]],
                  job_id: str = "") -> None:
        """`mark_suppressed` or `mark_unsuppressed` for many (email, customer id) of one job, in one round trip."""
        if not sent:
            return
        now = time.time()
        pipe = self.redis.pipeline()
        if action == "suppress":
            pipe.hset(keys.suppressed_by_us(tenant), mapping={email: repr(now) for email, _ in sent})
        pipe.hset(keys.pending_suppressions(tenant), mapping={email: json.dumps(
            {"action": action, "job": job_id, "customer_id": customer_id, "at": now}) for email, customer_id in sent})
        pipe.execute()

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

