"""What a backfill would do, without writing: the same parsing, mapping and merge policy, read-only.

Lookups are batched (`any(email,[...])` and `any(external_id,[...])` of up to 100), so previewing a
whole scheme costs about two requests per hundred customers, and every request goes through the
fleet's limiter like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.klaviyo import KlaviyoClient
from worker.merge import Match, Memory, Plan, Policy, plan_sync
from worker.models import KlaviyoProfile
from worker.outcomes import Outcome
from worker.sync import customer_id_of, prepare

CHUNK = 100


@dataclass(frozen=True)
class Previewed:
    customer_id: str
    plan: Plan
    warnings: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """Field by field: Klaviyo's value -> Loyale's, and what the sync would do with it."""
        return [{"field": c.field, "klaviyo": c.old, "loyale": c.new, "action": c.kind}
                for c in (*self.plan.changes, *self.plan.kept)]


def preview_chunk(klaviyo: KlaviyoClient, policy: Policy, payloads: list[dict[str, Any]], *,
                  region: str | None = None, memories: dict[str, Memory] | None = None) -> list[Previewed]:
    """Plans for up to 100 customers with two batched lookups; reads Klaviyo, writes nothing."""
    parsed = [(payload, p.customer, p.mapped, p.early, p.warnings)
              for payload in payloads for p in [prepare(payload, region)]]
    emails = sorted({m.email for _, _, m, _, _ in parsed if m is not None and m.email})
    ids = sorted({c.id for _, c, m, _, _ in parsed if c is not None and m is not None})
    by_email: dict[str, KlaviyoProfile] = {}
    by_xid: dict[str, KlaviyoProfile] = {}
    if emails:
        by_email = {p.email.lower(): p for p in klaviyo.find_many("email", emails) if p.email}
    if ids:
        by_xid = {p.external_id: p for p in klaviyo.find_many("external_id", ids) if p.external_id}
    result = []
    for payload, customer, mapped, early, warnings in parsed:
        if early is not None or customer is None or mapped is None:
            result.append(Previewed(customer_id_of(payload), early or Plan(Outcome.INVALID, "unreadable"), warnings))
            continue
        match = Match(by_email=by_email.get(mapped.email) if mapped.email else None,
                      by_external_id=by_xid.get(customer.id))
        memory = (memories or {}).get(customer.id, Memory())
        result.append(Previewed(customer.id, plan_sync(customer, mapped, match, policy, memory), warnings))
    return result


def preview(klaviyo: KlaviyoClient, policy: Policy, payloads: Iterable[dict[str, Any]], *,
            region: str | None = None) -> Iterator[Previewed]:
    chunk: list[dict[str, Any]] = []
    for payload in payloads:
        chunk.append(payload)
        if len(chunk) == CHUNK:
            yield from preview_chunk(klaviyo, policy, chunk, region=region)
            chunk = []
    if chunk:
        yield from preview_chunk(klaviyo, policy, chunk, region=region)
