"""Locks in Redis: a customer's lock (one writer at a time per customer, across the fleet), phone claims
(a phone sent for one customer is not sent for another meanwhile), and phones known to be unusable."""

from __future__ import annotations

import time

from worker import keys
from worker.state.client import TextRedis, lua

ACQUIRE_LOCK = lua(__file__, "acquire_lock.lua")
RELEASE_LOCK = lua(__file__, "release_lock.lua")

#: A customer lock outlives the longest write it protects; a batch refreshes its locks while its
#: bulk jobs run (`refresh_locks`), so a slow job never lets an older snapshot overtake a newer one.
LOCK_TTL_S = 120.0
#: A phone found on another profile is not offered again for this long (the owner may change).
PHONE_TAKEN_TTL_S = 86_400


class Locks:
    """`ttl_s`: how long refused phones are remembered."""

    def __init__(self, client: TextRedis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._acquire = client.register_script(ACQUIRE_LOCK)
        self._release = client.register_script(RELEASE_LOCK)

    # --- per-customer lock -----------------------------------------------------------------------

    def lock_customer(self, tenant: str, customer_id: str, token: str, ttl_s: float = LOCK_TTL_S) -> bool:
        """Take the customer's lock for `token` (the task id); True if it is ours now."""
        return self.lock_customers(tenant, [(customer_id, token)], ttl_s)[0]

    def unlock_customer(self, tenant: str, customer_id: str, token: str) -> None:
        self.unlock_customers(tenant, [(customer_id, token)])

    def lock_customers(self, tenant: str, locks: list[tuple[str, str]], ttl_s: float = LOCK_TTL_S) -> list[bool]:
        """`lock_customer` for many (customer id, token) pairs in one round trip."""
        if not locks:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for customer_id, token in locks:
            self._acquire(keys=[keys.customer_lock(tenant, customer_id)], args=[token, int(ttl_s * 1000)], client=pipe)
        return [bool(granted) for granted in pipe.execute()]

    def refresh_locks(self, tenant: str, locks: list[tuple[str, str]], ttl_s: float = LOCK_TTL_S) -> None:
        """Extend locks we still hold (a bulk job can run for minutes); one taken over stays lost."""
        self.lock_customers(tenant, locks, ttl_s)

    def claim_phones(self, tenant: str, claims: list[tuple[str, str]], ttl_s: float) -> list[bool]:
        """Claim (phone, customer id) pairs for `ttl_s`: True where the phone is free or already this
        customer's, False where another customer sent it recently (its profile may not show in a
        lookup yet, and a bulk row carrying it would merge the two)."""
        if not claims:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for phone, customer_id in claims:
            self._acquire(keys=[keys.phone_claim(tenant, phone)], args=[customer_id, int(ttl_s * 1000)], client=pipe)
        return [bool(granted) for granted in pipe.execute()]

    def unusable_phones(self, tenant: str, phones: list[str]) -> set[str]:
        """The phones among `phones` that Klaviyo refused before, or that another profile held when
        last looked up (for `PHONE_TAKEN_TTL_S`): left out without spending a lookup or a write."""
        if not phones:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.refused_phones(tenant), phones)
        pipe.mget([keys.phone_taken(tenant, p) for p in phones])
        refused, taken = pipe.execute()
        return {p for p, r, t in zip(phones, refused, taken, strict=True) if r or t}

    def remember_taken_phone(self, tenant: str, phone: str) -> None:
        self.redis.set(keys.phone_taken(tenant, phone), "1", ex=PHONE_TAKEN_TTL_S)

    def remember_refused_phone(self, tenant: str, phone: str) -> None:
        """Klaviyo refused this phone for what it is (its region, its format): later syncs leave it out
        at once instead of sending it, being refused and resending every time."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.refused_phones(tenant), phone, repr(time.time()))
        pipe.expire(keys.refused_phones(tenant), self.ttl_s)
        pipe.execute()

    def unlock_customers(self, tenant: str, locks: list[tuple[str, str]]) -> None:
        if not locks:
            return
        pipe = self.redis.pipeline(transaction=False)
        for customer_id, token in locks:
            self._release(keys=[keys.customer_lock(tenant, customer_id)], args=[token], client=pipe)
        pipe.execute()

