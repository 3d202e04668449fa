"""Sync one Loyale customer into Klaviyo: parse, map, look up, plan (pure), write, record.

No Celery here: the task in `worker.tasks` and `loyale-sync sync-one` both call `sync_customer`, and
tests call it directly. Retryable and tenant-fatal errors propagate to the caller, which decides to
retry, defer or pause; every other path ends in exactly one recorded outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from worker.errors import DuplicateProfile, RecordRejected, RetryableError, refuses_region
from worker.klaviyo import KlaviyoClient
from worker.mapping import MappedProfile
from worker.merge import Match, Memory, Plan, Policy, plan_sync, stale_plan
from worker.messages import customer_id_of
from worker.models import KlaviyoProfile, LoyaleCustomer
from worker.outcomes import LOOKUP_LAGS, Outcome, after_interruption, lookup_lags
from worker.pipeline import Stopped, lookup_many, prepare_many
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
    #: The customer as synced (None when the record could not be read).
    customer: LoyaleCustomer | None = None


#: How long a phone sent for one customer is kept from every other customer (see `keys.phone_claim`):
#: longer than Klaviyo's read lag plus the longest bulk job, after which a lookup sees its owner.
PHONE_CLAIM_TTL_S = 900.0
#: Writes tried for one customer: as planned, then re-planned after a 409 or without a refused phone.
MAX_WRITE_ROUNDS = 4


def plan_customer(deps: SyncDeps, payload: dict[str, Any], *, memory: Memory | None = None
                  ) -> tuple[LoyaleCustomer | None, Plan, list[str]]:
    """Parse, map, look up and plan one customer. Reads Klaviyo, writes nothing."""
    customer, plan, warnings, _, _ = _plan(deps, payload, memory)
    return customer, plan, warnings


def _plan(deps: SyncDeps, payload: dict[str, Any], memory: Memory | None
          ) -> tuple[LoyaleCustomer | None, Plan, list[str], MappedProfile | None, Memory]:
    tenant = deps.tenant
    prepared = prepare_many([payload], tenant.default_phone_region,
                            lambda phones: deps.store.unusable_phones(tenant.id, phones))[0]
    if isinstance(prepared, Stopped):
        return prepared.customer, prepared.plan, prepared.warnings, None, Memory()
    customer, mapped = prepared.customer, prepared.mapped
    if memory is None:
        memory = deps.store.memory(tenant.id, customer.id, mapped.email)
    if (stale := stale_plan(customer, memory)) is not None:
        return customer, stale, prepared.warnings, mapped, memory
    ready = replace(prepared, memory=memory)
    # Two lookups at most before the write, as prepaid (`worker.runtime.LOOKUPS_PER_SYNC`).
    match = lookup_many(deps.klaviyo, deps.policy, [ready], every_external_id=True)[ready]
    return customer, plan_sync(customer, mapped, match, deps.policy, memory), prepared.warnings, mapped, memory


def phone_of(plan: Plan) -> str | None:
    return next((c.new for c in plan.changes if c.field == "phone_number"), None)


def claim_phone(deps: SyncDeps, customer: LoyaleCustomer, plan: Plan, warnings: list[str]) -> Plan:
    """Keep the phone only if no other customer sent it moments ago (see `keys.phone_claim`)."""
    phone = phone_of(plan)
    if phone is None or deps.store.claim_phones(deps.tenant.id, [(phone, customer.id)], PHONE_CLAIM_TTL_S)[0]:
        return plan
    warnings.append("phone not sent: another customer with this phone was synced moments ago")
    return plan.without_phone()


def _replan_on_duplicate(deps: SyncDeps, customer: LoyaleCustomer, mapped: MappedProfile, memory: Memory,
                         plan: Plan, exc: DuplicateProfile, warnings: list[str]) -> Plan:
    """A 409: an identifier we sent belongs to profile `duplicate_profile_id` (one the lookup did not
    see yet, or another person's phone). Read that profile and decide again, at once."""
    duplicate = deps.klaviyo.get_profile(exc.duplicate_profile_id) if exc.duplicate_profile_id else None
    if duplicate is None:
        raise RetryableError("Klaviyo reported a duplicate profile it cannot show yet; re-planning") from exc
    ours = duplicate.email is not None and duplicate.email == mapped.email
    phone = phone_of(plan)
    if phone is not None and not ours and duplicate.phone == phone and duplicate.id != plan.profile_id:
        # The phone is an identifier in Klaviyo and belongs to another profile; the rest of the
        # customer still syncs, and the warning says why the phone is missing.
        deps.store.remember_taken_phone(deps.tenant.id, phone)
        warnings.append(f"phone not sent: it belongs to Klaviyo profile {duplicate.id}")
        return plan.without_phone()
    if plan.write == "create" and (ours or duplicate.external_id == customer.id):
        return plan_sync(customer, mapped, Match(by_email=duplicate if ours else None,
                                                 by_external_id=duplicate if duplicate.external_id else None),
                         deps.policy, memory)
    return Plan(Outcome.CONFLICT, f"Klaviyo: {exc.detail} (profile {duplicate.id})", profile_id=plan.profile_id)


def execute(deps: SyncDeps, run_id: str, customer: LoyaleCustomer, plan: Plan, warnings: list[str],
            mapped: MappedProfile | None = None, memory: Memory | None = None) -> Plan:
    """Send the plan's writes; returns the plan as executed (re-planned after a 409, or without a
    phone Klaviyo refused)."""
    tenant, klaviyo, store = deps.tenant.id, deps.klaviyo, deps.store
    mapped = mapped or MappedProfile(fields={})
    memory = memory or Memory()
    plan = claim_phone(deps, customer, plan, warnings)
    profile: KlaviyoProfile | None = None
    for _ in range(MAX_WRITE_ROUNDS):
        if plan.write is None:
            break
        if plan.write == "update" and plan.profile_id and plan.overwrites:
            store.journal_overwrites(run_id, tenant, customer.id, plan.profile_id, plan.overwrites)
        try:
            if plan.write == "create":
                profile = klaviyo.create_profile(plan.attributes)
            elif plan.write == "update" and plan.profile_id:
                profile = klaviyo.update_profile(plan.profile_id, plan.attributes, plan.unset)
            break
        except DuplicateProfile as exc:
            plan = _replan_on_duplicate(deps, customer, mapped, memory, plan, exc, warnings)
        except RecordRejected as exc:
            if exc.status == 404 and plan.write == "update":
                # The profile is gone or its email now belongs to another profile (Klaviyo answers
                # such a PATCH with 404): look it up again.
                raise RetryableError(f"Klaviyo no longer shows profile {plan.profile_id}; re-planning") from exc
            if (phone := phone_of(plan)) is not None and exc.status == 400 and exc.about_phone:
                store.remember_refused_phone(tenant, phone, region_wide=refuses_region(exc.detail))
                warnings.append(f"phone not sent: Klaviyo refused it ({exc.detail[:120]})")
                plan = plan.without_phone()
                continue
            raise
    else:
        raise RetryableError("the profile kept changing in Klaviyo during the sync; re-planning")
    if profile is not None and plan.profile_id is None:
        plan = replace(plan, profile_id=profile.id)
    if plan.suppress_email:
        job_ids = klaviyo.suppress([plan.suppress_email])
        store.mark_suppressed(tenant, plan.suppress_email, job_ids[0] if job_ids else "", customer.id)
    if plan.unsuppress_email:
        job_ids = klaviyo.unsuppress([plan.unsuppress_email])
        store.mark_unsuppressed(tenant, plan.unsuppress_email, job_ids[0] if job_ids else "", customer.id)
    return plan


def sync_customer(deps: SyncDeps, run_id: str, payload: dict[str, Any], *, dry_run: bool = False) -> SyncResult:
    """Sync one customer and record its outcome (unless `dry_run`, which only plans)."""
    customer, plan, warnings, mapped, memory = _plan(deps, payload, None)
    customer_id = customer.id if customer else customer_id_of(payload)
    planned = None
    if not dry_run and customer is not None:
        planned = deps.store.pending(run_id, [customer_id]).get(customer_id)
        if lookup_lags(planned, plan.outcome, plan.profile_id):
            raise RetryableError(LOOKUP_LAGS)
    if not dry_run and plan.writes_anything and customer is not None:
        deps.store.mark_pending(run_id, {customer_id: plan.outcome.value})
        try:
            plan = execute(deps, run_id, customer, plan, warnings, mapped, memory)
        except DuplicateProfile as exc:
            plan = Plan(Outcome.CONFLICT, f"Klaviyo: {exc.detail} (profile {exc.duplicate_profile_id})",
                        profile_id=plan.profile_id)
        except RecordRejected as exc:
            plan = Plan(Outcome.REJECTED, str(exc), profile_id=plan.profile_id)
    if planned is not None:
        plan = replace(plan, outcome=after_interruption(planned, plan.outcome))
    reason = plan.reason + (f" [{'; '.join(warnings)}]" if warnings else "")
    result = SyncResult(customer_id, plan.outcome, reason, plan, plan.profile_id, warnings, customer=customer)
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
