"""What a backfill would do, without writing: the same preparation, lookups and merge policy, read-only.

Customers are prepared and looked up by `worker.pipeline`, as the backfill's batch does
(`any(email,[...])`, then `any(external_id,[...])` only where the batch looks by our id, and the
profile ids remembered from earlier syncs), so previewing a whole scheme costs about one or two
requests per hundred customers, and every request goes through the fleet's limiter like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from worker.klaviyo import KlaviyoClient
from worker.merge import Memory, Plan, Policy, plan_sync, stale_plan
from worker.messages import customer_id_of
from worker.models import LoyaleCustomer
from worker.pipeline import Ready, Stopped, lookup_many, prepare_many

CHUNK = 100


@dataclass(frozen=True)
class Previewed:
    customer_id: str
    plan: Plan
    warnings: list[str] = field(default_factory=list)
    #: The customer as read (None when the record could not be), for the events a backfill would send.
    customer: LoyaleCustomer | None = None

    def rows(self) -> list[dict[str, Any]]:
        """Field by field: Klaviyo's value -> Loyale's, and what the sync would do with it."""
        return [{"field": c.field, "klaviyo": c.old, "loyale": c.new, "action": c.kind}
                for c in (*self.plan.changes, *self.plan.kept)]


class Remembers(Protocol):
    """What preview reads of this service's state (`worker.store.Store`): it writes nothing."""

    def unusable_phones(self, tenant: str, phones: list[str]) -> set[str]: ...

    def memories(self, tenant: str, customers: list[tuple[str, str | None]]) -> list[Memory]: ...


def preview_chunk(klaviyo: KlaviyoClient, policy: Policy, payloads: list[dict[str, Any]], *,
                  region: str | None = None, state: Remembers | None = None, tenant: str = ""
                  ) -> list[Previewed]:
    """Plans for up to 100 customers, prepared and looked up as the backfill's batch does
    (`worker.pipeline`); reads Klaviyo and `state` (what earlier syncs remembered), writes nothing."""
    prepared = prepare_many(payloads, region,
                            lambda phones: state.unusable_phones(tenant, phones) if state else set())
    readies = [p for p in prepared if isinstance(p, Ready)]
    memories = (state.memories(tenant, [(r.customer.id, r.mapped.email) for r in readies]) if state
                else [Memory() for _ in readies])
    remembered = {r: replace(r, memory=m) for r, m in zip(readies, memories, strict=True)}
    stale = {r: plan for r in remembered.values() if (plan := stale_plan(r.customer, r.memory)) is not None}
    matches = lookup_many(klaviyo, policy, [r for r in remembered.values() if r not in stale])
    result = []
    for payload, p in zip(payloads, prepared, strict=True):
        if isinstance(p, Stopped):
            result.append(Previewed(customer_id_of(payload), p.plan, p.warnings, p.customer))
            continue
        r = remembered[p]
        plan = stale.get(r) or plan_sync(r.customer, r.mapped, matches[r], policy, r.memory)
        result.append(Previewed(r.customer.id, plan, r.warnings, r.customer))
    return result


def preview(klaviyo: KlaviyoClient, policy: Policy, payloads: Iterable[dict[str, Any]], *,
            region: str | None = None, state: Remembers | None = None, tenant: str = "") -> Iterator[Previewed]:
    chunk: list[dict[str, Any]] = []
    for payload in payloads:
        chunk.append(payload)
        if len(chunk) == CHUNK:
            yield from preview_chunk(klaviyo, policy, chunk, region=region, state=state, tenant=tenant)
            chunk = []
    if chunk:
        yield from preview_chunk(klaviyo, policy, chunk, region=region, state=state, tenant=tenant)
