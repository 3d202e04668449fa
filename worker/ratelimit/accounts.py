"""The Klaviyo account of each tenant's key: the unit Klaviyo's limits apply to, so tenants sharing an
account share one limit.

Asked once a day per key (GET /api/accounts allows 1/s, 15/min) and cached in Redis for the fleet and in
the process; a key without accounts:read is limited under its own fingerprint (`key-<fingerprint>`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import redis
import structlog

from worker import keys
from worker.errors import RetryableError, TenantFatalError, Throttled
from worker.ratelimit.limiter import key_fingerprint

log = structlog.get_logger("ratelimit")

ACCOUNT_CACHE_S = 86_400
#: A key without accounts:read is limited under its own name; ask again after this long.
ACCOUNT_FALLBACK_CACHE_S = 3_600
#: While Klaviyo fails (5xx, timeouts) a key is limited under its own name for this long, rather than
#: spend the accounts endpoint's tiny quota (15/min) on every attempt of every customer.
ACCOUNT_RETRY_S = 60


def own_name(private_key: str) -> str:
    """The account a key is limited under when its real one is unknown."""
    return f"key-{key_fingerprint(private_key)}"


class AccountCache:
    """`private_key(tenant)` gives the tenant's key; `ask(tenant)` asks Klaviyo for its account id."""

    def __init__(self, client: redis.Redis, private_key: Callable[[str], str], ask: Callable[[str], str]) -> None:
        self.redis = client
        self._private_key = private_key
        self._ask = ask
        self._known: dict[str, tuple[str, float]] = {}   # tenant -> (account, until: monotonic)

    def own_name(self, tenant_id: str) -> str:
        return own_name(self._private_key(tenant_id))

    def account(self, tenant_id: str) -> str:
        known = self._known.get(tenant_id)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        fingerprint = key_fingerprint(self._private_key(tenant_id))
        cached = self._cached(fingerprint)
        if cached is None:
            try:
                cached = self.remember(tenant_id, self._ask(tenant_id))
            except TenantFatalError as exc:
                if exc.status != 403:
                    raise
                cached = self.remember(tenant_id, None)
                log.warning("klaviyo_account_unknown", tenant=tenant_id,
                            hint="the key lacks accounts:read; tenants sharing an account will not share a limit")
            except Throttled:
                raise    # like any 429: the task backs the whole tenant off and comes back
            except RetryableError:
                self._known[tenant_id] = (f"key-{fingerprint}", time.monotonic() + ACCOUNT_RETRY_S)
                return f"key-{fingerprint}"
        self._known[tenant_id] = (cached, time.monotonic() + ACCOUNT_CACHE_S)
        return cached

    def remember(self, tenant_id: str, account_id: str | None) -> str:
        """Cache the account Klaviyo named for the tenant's key (None: the key lacks accounts:read, so it is
        limited under its own name, and asked again sooner); returns the account it is limited under."""
        fingerprint = key_fingerprint(self._private_key(tenant_id))
        if account_id is None:
            account, ttl_s = f"key-{fingerprint}", ACCOUNT_FALLBACK_CACHE_S
        else:
            account, ttl_s = account_id, ACCOUNT_CACHE_S
        self.redis.set(keys.account_of_key(fingerprint), account, ex=ttl_s)
        return account

    def _cached(self, fingerprint: str) -> str | None:
        return cast("str | None", self.redis.get(keys.account_of_key(fingerprint)))   # decode_responses=True
