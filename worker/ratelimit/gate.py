"""The gate every Klaviyo request passes: it asks the fleet-wide limiter (which also holds the tenant's
429 back-off) for a place, under the account the tenant's key belongs to.

A sync takes its lookups' places together before its first request (`prepaid`); a place is used only
within `prepaid_for_s` of asking for it (half `SYNC_LIMITER_TRANSIT_S`), later requests ask afresh, so
a prepaid request is sent no later after its grant than the limiter leaves room for (see
`worker.ratelimit.limiter`).

A Celery task never sleeps on a limit: the gate raises `Deferred` with the wait, and the task comes back
after that countdown. An interactive caller (`sync-one`, `preview`, `verify`), or a batch inside
`waiting_inline`, waits in place up to a bound instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from worker.errors import Deferred
from worker.klaviyo import GET_ACCOUNTS
from worker.ratelimit.accounts import AccountCache
from worker.ratelimit.limiter import EndpointLimit, RateLimiter
from worker.settings import TRANSIT_S


@dataclass
class Prepaid:
    """Places a running sync took in advance for one endpoint; its requests use them first."""

    grant_id: str
    count: int
    #: The gate's clock just before the places were asked for: no later than the limiter granted them.
    asked_at: float
    used: int = 0


_prepaid: ContextVar[dict[str, Prepaid] | None] = ContextVar("prepaid", default=None)
#: Overrides `Gate.wait_inline_s` inside `Gate.waiting_inline` (a batch of backfill customers).
_wait_inline_s: ContextVar[float] = ContextVar("wait_inline_s")


class Gate:
    """`limits(tenant)` gives the tenant's limit per endpoint; `wait_inline_s` is how long a request may wait
    for the limiter in place (0: a Celery task, deferred instead); `prepaid_for_s` how long a place taken
    in advance stays usable."""

    def __init__(self, limiter: RateLimiter, accounts: AccountCache,
                 limits: Callable[[str], dict[str, EndpointLimit]], *, wait_inline_s: float = 0.0,
                 prepaid_for_s: float = TRANSIT_S / 2, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = limiter
        self.accounts = accounts
        self.limits = limits
        self.wait_inline_s = wait_inline_s
        self.prepaid_for_s = prepaid_for_s
        self._sleep = sleep
        self._clock = clock

    def limit(self, tenant_id: str, endpoint: str) -> EndpointLimit:
        limits = self.limits(tenant_id)
        return limits.get(endpoint) or limits["GET /api/profiles"]

    def __call__(self, tenant_id: str, endpoint: str) -> None:
        """Before every Klaviyo request: a place from the limiter, or `Deferred` with the wait."""
        entry = (_prepaid.get() or {}).get(endpoint)
        if (entry is not None and entry.used < entry.count and self._clock() - entry.asked_at <= self.prepaid_for_s
                and self.limiter.backoff_remaining_s(tenant_id) <= 0):
            entry.used += 1
            return
        limit = self.limit(tenant_id, endpoint)
        # asking for the account must not need the account
        account = self.accounts.own_name(tenant_id) if endpoint == GET_ACCOUNTS else self.accounts.account(tenant_id)
        wait_s = self.limiter.acquire(account, tenant_id, endpoint, limit)
        waited_s, may_wait_s = 0.0, _wait_inline_s.get(self.wait_inline_s)
        while wait_s > 0 and waited_s + wait_s <= may_wait_s:
            self._sleep(wait_s)
            waited_s += wait_s
            wait_s = self.limiter.acquire(account, tenant_id, endpoint, limit)
        if wait_s > 0:
            raise Deferred(f"rate limit of {endpoint} for tenant {tenant_id}", retry_after_s=wait_s)

    @contextmanager
    def prepaid(self, tenant_id: str, endpoint: str, count: int) -> Iterator[float]:
        """Take `count` places for `endpoint` at once. Yields 0.0 when taken (the requests inside use
        them; unused ones are given back on exit), else the seconds to wait, having taken none."""
        account, limit = self.accounts.account(tenant_id), self.limit(tenant_id, endpoint)
        asked_at = self._clock()
        wait_s, grant_id = self.limiter.acquire_many(account, tenant_id, endpoint, limit, count)
        if wait_s > 0:
            yield wait_s
            return
        entry = Prepaid(grant_id, count, asked_at)
        token = _prepaid.set({endpoint: entry})
        try:
            yield 0.0
        finally:
            _prepaid.reset(token)
            self.limiter.refund(account, endpoint, limit, grant_id, entry.used, count)

    def waiting_inline(self, wait_s: float) -> AbstractContextManager[None]:
        return waiting_inline(wait_s)


@contextmanager
def waiting_inline(wait_s: float) -> Iterator[None]:
    """Inside: wait up to `wait_s` for the limiter in place instead of raising `Deferred` (0: never wait)."""
    token = _wait_inline_s.set(wait_s)
    try:
        yield
    finally:
        _wait_inline_s.reset(token)
