"""A tenant paused after Klaviyo refused its key (401/403), until `verify` resumes it."""

from __future__ import annotations

import json
import time

from worker import keys
from worker.state.client import TextRedis


class TenantPause:
    def __init__(self, client: TextRedis) -> None:
        self.redis = client

    # --- tenant state ----------------------------------------------------------------------------

    def pause_tenant(self, tenant: str, reason: str) -> bool:
        """Pause the tenant; True if this call paused it (so only one error is logged)."""
        return bool(self.redis.set(keys.paused(tenant), json.dumps({"reason": reason, "at": time.time()}), nx=True))

    def tenant_paused(self, tenant: str) -> str | None:
        raw = self.redis.get(keys.paused(tenant))
        return json.loads(raw)["reason"] if raw else None

    def resume_tenant(self, tenant: str) -> bool:
        return bool(self.redis.delete(keys.paused(tenant)))

