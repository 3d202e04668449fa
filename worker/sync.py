"""Sync one Loyale customer into Klaviyo: parse, map, look up, plan (pure), write, record.

No Celery here: the task in `worker.tasks` and `loyale-sync sync-one` both call `sync_customer`, and
tests call it directly. Retryable and tenant-fatal errors propagate to the caller, which decides to
retry, defer or pause; every other path ends in exactly one recorded outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from pydantic import ValidationError

from worker.errors import DuplicateProfile, RecordRejected, RetryableError
from worker.klaviyo import KlaviyoClient
from worker.mapping import InvalidCustomer, MappedProfile, map_customer
from worker.merge import Match, Memory, Plan, Policy, plan_sync, stale_plan
from worker.models import KlaviyoProfile, LoyaleCustomer, parse_customer
from worker.outcomes import Outcome, after_interruption
from worker.settings import TenantConfig
from worker.store import Store

log = structlog.get_logger("sync")


@dataclass
class SyncDeps:
    """What a sync needs, passed in: the tenant, its Klaviyo client and the state store."""

    tenant: TenantConfig
    klaviyo: KlaviyoClient
    store: Store

    @property
    def policy(self) -> Policy:
        return Policy(self.tenant.merge_customers, self.tenant.existing_profiles)


@dataclass(frozen=True)
class SyncResult:
    customer_id: str
    outcome: Outcome
    reason: str
    plan: Plan | None = None
    profile_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    #: False when the run already had an outcome for this customer (a redelivered message).
    recorded: bool = True


def customer_id_of(payload: dict[str, Any]) -> str:
    value = payload.get("id") if isinstance(payload, dict) else None
    return str(value).strip() if isinstance(value, str | int) and str(value).strip() else "(no id)"


def lookup(klaviyo: KlaviyoClient, customer: LoyaleCustomer, mapped: MappedProfile) -> Match:
    """Find the customer's profile by email, then by external_id (one request when they agree)."""
    by_email = klaviyo.find_one("email", mapped.email) if mapped.email else None
    if by_email is not None and by_email.external_id == customer.id:
        return Match(by_email=by_email, by_external_id=by_email)
    return Match(by_email=by_email, by_external_id=klaviyo.find_one("external_id", customer.id))


def plan_customer(deps: SyncDeps, payload: dict[str, Any], *, memory: Memory | None = None
                  ) -> tuple[LoyaleCustomer | None, Plan, list[str]]:
    """Parse, map, look up and plan one customer. Reads Klaviyo, writes nothing."""
    try:
        customer, warnings = parse_customer(payload)
    except ValidationError as exc:
        problem = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
        return None, Plan(Outcome.INVALID, f"unreadable Loyale record: {problem}"), []
    try:
        mapped = map_customer(customer, deps.tenant.default_phone_region)
    except InvalidCustomer as exc:
        if customer.opted_in:
            return customer, Plan(Outcome.INVALID, str(exc)), warnings
        # Not opted in (deleted, say) and nothing to send: still find its profile by our id to suppress it.
        mapped = MappedProfile(fields={"external_id": customer.id})
    warnings = warnings + mapped.warnings
    if memory is None:
        memory = deps.store.memory(deps.tenant.id, customer.id, mapped.email)
    if (stale := stale_plan(customer, memory)) is not None:
        return customer, stale, warnings
    match = lookup(deps.klaviyo, customer, mapped)
    return customer, plan_sync(customer, mapped, match, deps.policy, memory), warnings


def _without_phone(plan: Plan) -> Plan:
    return replace(plan, changes=tuple(c for c in plan.changes if c.field != "phone_number"))


def execute(deps: SyncDeps, run_id: str, customer: LoyaleCustomer, plan: Plan, warnings: list[str]) -> Plan:
    """Send the plan's writes; returns the plan as executed (it may have dropped a contested phone)."""
    tenant, klaviyo, store = deps.tenant.id, deps.klaviyo, deps.store
    profile: KlaviyoProfile | None = None
    if plan.write == "update" and plan.profile_id and plan.overwrites:
        store.journal_overwrites(run_id, tenant, customer.id, plan.profile_id, plan.overwrites)
    for attempt in ("as planned", "without phone"):
        try:
            if plan.write == "create":
                profile = klaviyo.create_profile(plan.attributes)
            elif plan.write == "update" and plan.profile_id:
                profile = klaviyo.update_profile(plan.profile_id, plan.attributes)
            break
        except DuplicateProfile as exc:
            sends_phone = any(c.field == "phone_number" for c in plan.changes)
            if attempt == "as planned" and sends_phone:
                # The phone is an identifier in Klaviyo and belongs to another profile; the rest of
                # the customer still syncs, and the warning says why the phone is missing.
                warnings.append(f"phone not sent: it belongs to Klaviyo profile {exc.duplicate_profile_id}")
                plan = _without_phone(plan)
                if plan.write == "update" and not plan.changes:
                    break
                continue
            if plan.write == "create":
                # Someone created the profile between our lookup and our write: look again.
                raise RetryableError("the profile appeared in Klaviyo during the sync; re-planning") from exc
            raise
    if profile is not None and plan.profile_id is None:
        plan = replace(plan, profile_id=profile.id)
    if plan.suppress_email:
        klaviyo.suppress([plan.suppress_email])
        store.mark_suppressed(tenant, plan.suppress_email)
    if plan.unsuppress_email:
        klaviyo.unsuppress([plan.unsuppress_email])
        store.mark_unsuppressed(tenant, plan.unsuppress_email)
    return plan


def sync_customer(deps: SyncDeps, run_id: str, payload: dict[str, Any], *, dry_run: bool = False) -> SyncResult:
    """Sync one customer and record its outcome (unless `dry_run`, which only plans)."""
    customer, plan, warnings = plan_customer(deps, payload)
    customer_id = customer.id if customer else customer_id_of(payload)
    if not dry_run and customer is not None:
        planned = deps.store.pending(run_id, [customer_id]).get(customer_id)
        if planned is not None:
            plan = replace(plan, outcome=after_interruption(planned, plan.outcome))
    if not dry_run and plan.writes_anything and customer is not None:
        deps.store.mark_pending(run_id, {customer_id: plan.outcome.value})
        try:
            plan = execute(deps, run_id, customer, plan, warnings)
        except DuplicateProfile as exc:
            plan = Plan(Outcome.CONFLICT, f"Klaviyo: {exc.detail} (profile {exc.duplicate_profile_id})",
                        profile_id=plan.profile_id)
        except RecordRejected as exc:
            plan = Plan(Outcome.REJECTED, str(exc), profile_id=plan.profile_id)
    reason = plan.reason + (f" [{'; '.join(warnings)}]" if warnings else "")
    result = SyncResult(customer_id, plan.outcome, reason, plan, plan.profile_id, warnings)
    if dry_run:
        return result
    recorded = deps.store.record_outcome(
        run_id=run_id, tenant=deps.tenant.id, customer_id=customer_id, outcome=plan.outcome, reason=reason,
        profile_id=plan.profile_id, updated_date=customer.updated_date if customer else None, warnings=warnings,
    )
    log.info("customer_synced", tenant=deps.tenant.id, run=run_id, customer_id=customer_id,
             outcome=plan.outcome.value, reason=plan.reason, warnings=len(warnings), profile_id=plan.profile_id,
             fields_changed=len(plan.changes), duplicate_delivery=not recorded)
    return replace(result, recorded=recorded)
