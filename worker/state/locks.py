"""Locks in Redis: a customer's lock (one writer at a time per customer, across the fleet), phone claims
(a phone sent for one customer is not sent for another meanwhile), and phones known to be unusable."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from worker import keys
from worker.mapping import phone_region
from worker.state.client import TextRedis, lua

ACQUIRE_LOCKS = lua(__file__, "acquire_locks.lua")
RELEASE_LOCKS = lua(__file__, "release_locks.lua")
#: The one-lock release the producers' pass lock uses (`producers.watermarks`).
RELEASE_LOCK = lua(__file__, "release_lock.lua")
#: Locks taken or released per script run: thousands of customers cost a few commands, not one each,
#: and no single run holds Redis for long.
LOCKS_PER_SCRIPT = 1000

#: A customer lock outlives the longest write it protects; a batch refreshes its locks while its
#: bulk jobs run (`refresh_locks`), so a slow job never lets an older snapshot overtake a newer one.
LOCK_TTL_S = 120.0
#: A phone found on another profile is not offered again for this long (the owner may change).
PHONE_TAKEN_TTL_S = 86_400
#: A region Klaviyo refused for the account: its phones are left out for this long, then tried again
#: (the brand may turn SMS on for it). Each phone refused since is remembered on its own as before.
REGION_REFUSED_TTL_S = 6 * 3600.0


class Locks:
    """`ttl_s`: how long refused phones are remembered."""

    def __init__(self, client: TextRedis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._acquire = client.register_script(ACQUIRE_LOCKS)
        self._release = client.register_script(RELEASE_LOCKS)

    # --- per-customer lock -----------------------------------------------------------------------

    def lock_customer(self, tenant: str, customer_id: str, token: str, ttl_s: float = LOCK_TTL_S) -> bool:
        """Take the customer's lock for `token` (the task id); True if it is ours now."""
        return self.lock_customers(tenant, [(customer_id, token)], ttl_s)[0]

    def unlock_customer(self, tenant: str, customer_id: str, token: str) -> None:
        self.unlock_customers(tenant, [(customer_id, token)])

    def lock_customers(self, tenant: str, locks: list[tuple[str, str]], ttl_s: float = LOCK_TTL_S) -> list[bool]:
        """`lock_customer` for many (customer id, token) pairs in one round trip."""
        return self._take(locks, partial(keys.customer_lock, tenant), ttl_s)

    def refresh_locks(self, tenant: str, locks: list[tuple[str, str]], ttl_s: float = LOCK_TTL_S) -> None:
        """Extend locks we still hold (a bulk job can run for minutes); one taken over stays lost."""
        self.lock_customers(tenant, locks, ttl_s)

    def claim_phones(self, tenant: str, claims: list[tuple[str, str]], ttl_s: float) -> list[bool]:
        """Claim (phone, customer id) pairs for `ttl_s`: True where the phone is free or already this
        customer's, False where another customer sent it recently (its profile may not show in a
        lookup yet, and a bulk row carrying it would merge the two)."""
        return self._take(claims, partial(keys.phone_claim, tenant), ttl_s)

    def _take(self, pairs: list[tuple[str, str]], key_of: Callable[[str], str], ttl_s: float) -> list[bool]:
        """Take the lock `key_of(name)` for each (name, holder token) pair: `acquire_locks.lua`, a script
        run per `LOCKS_PER_SCRIPT` locks, all in one round trip; each lock is taken atomically."""
        if not pairs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(pairs), LOCKS_PER_SCRIPT):
            chunk = pairs[start:start + LOCKS_PER_SCRIPT]
            self._acquire(keys=[key_of(name) for name, _ in chunk],
                          args=[int(ttl_s * 1000), *(token for _, token in chunk)], client=pipe)
        return [bool(granted) for answer in pipe.execute() for granted in answer]

    def unusable_phones(self, tenant: str, phones: list[str], *, now: float | None = None) -> set[str]:
        """The phones among `phones` that Klaviyo refused before, whose region it refused for the account
        lately (`REGION_REFUSED_TTL_S`), or that another profile held when last looked up (for
        `PHONE_TAKEN_TTL_S`): left out without spending a lookup or a write."""
        if not phones:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.refused_phones(tenant), phones)
        pipe.mget([keys.phone_taken(tenant, p) for p in phones])
        pipe.hgetall(keys.refused_regions(tenant))
        refused, taken, regions = pipe.execute()
        now = time.time() if now is None else now
        regions = {region for region, until in regions.items() if float(until) > now}
        return {p for p, r, t in zip(phones, refused, taken, strict=True)
                if r or t or (regions and phone_region(p) in regions)}

    def remember_taken_phone(self, tenant: str, phone: str) -> None:
        self.redis.set(keys.phone_taken(tenant, phone), "1", ex=PHONE_TAKEN_TTL_S)

    def remember_refused_phone(self, tenant: str, phone: str, *, region_wide: bool = False,
                               now: float | None = None) -> None:
        """Klaviyo refused this phone for what it is (its region, its format): later syncs leave it out
        at once instead of sending it, being refused and resending every time. `region_wide`: the refusal
        was for the phone's region on this account, so every phone of the region is left out for
        `REGION_REFUSED_TTL_S` (each would cost a bulk job round of minutes to be refused the same way)."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline()
        pipe.hset(keys.refused_phones(tenant), phone, repr(now))
        pipe.expire(keys.refused_phones(tenant), self.ttl_s)
        if region_wide and (region := phone_region(phone)) is not None:
            pipe.hset(keys.refused_regions(tenant), region, repr(now + REGION_REFUSED_TTL_S))
            pipe.expire(keys.refused_regions(tenant), round(REGION_REFUSED_TTL_S))
        pipe.execute()

    def unlock_customers(self, tenant: str, locks: list[tuple[str, str]]) -> None:
        if not locks:
            return
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(locks), LOCKS_PER_SCRIPT):
            chunk = locks[start:start + LOCKS_PER_SCRIPT]
            self._release(keys=[keys.customer_lock(tenant, customer_id) for customer_id, _ in chunk],
                          args=[token for _, token in chunk], client=pipe)
        pipe.execute()
