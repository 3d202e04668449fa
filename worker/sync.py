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


#: How long a phone sent for one customer is kept from every other customer (see `keys.phone_claim`):
#: longer than Klaviyo's read lag plus the longest bulk job, after which a lookup sees its owner.
PHONE_CLAIM_TTL_S = 900.0
#: Writes tried for one customer: as planned, then re-planned after a 409 or without a refused phone.
MAX_WRITE_ROUNDS = 4


def lookup(klaviyo: KlaviyoClient, customer: LoyaleCustomer, mapped: MappedProfile,
           memory: Memory | None = None) -> Match:
    """Find the customer's profile by email, then by external_id (one request when they agree), then
    by the profile id remembered from an earlier sync: a read by id sees a profile that Klaviyo's
    filters do not show yet, and finds it after the customer changed email."""
    by_email = klaviyo.find_one("email", mapped.email) if mapped.email else None
    if by_email is not None and by_email.external_id == customer.id:
        return Match(by_email=by_email, by_external_id=by_email)
    by_xid = klaviyo.find_one("external_id", customer.id)
    if by_email is None and by_xid is None and memory is not None and memory.profile_id:
        remembered = klaviyo.get_profile(memory.profile_id)
        if remembered is not None and remembered.external_id in (None, customer.id):
            if mapped.email and remembered.email == mapped.email:
                return Match(by_email=remembered, by_external_id=remembered if remembered.external_id else None)
            by_xid = remembered
    return Match(by_email=by_email, by_external_id=by_xid)


@dataclass(frozen=True)
class Prepared:
    """A parsed and mapped customer, or the outcome that stops it before any lookup."""

    customer: LoyaleCustomer | None
    mapped: MappedProfile | None
    warnings: list[str]
    early: Plan | None = None


def prepare(payload: dict[str, Any], default_phone_region: str | None) -> Prepared:
    """Parse and map one customer (pure). Shared by the per-customer path, the batch and preview."""
    try:
        customer, warnings = parse_customer(payload)
    except ValidationError as exc:
        problem = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
        return Prepared(None, None, [], Plan(Outcome.INVALID, f"unreadable Loyale record: {problem}"))
    try:
        mapped = map_customer(customer, default_phone_region)
    except InvalidCustomer as exc:
        if customer.opted_in:
            return Prepared(customer, None, warnings, Plan(Outcome.INVALID, str(exc)))
        # Not opted in (deleted, say) and nothing to send: still find its profile by our id to suppress it.
        mapped = MappedProfile(fields={"external_id": customer.id})
    return Prepared(customer, mapped, warnings + mapped.warnings)


def without_unusable_phone(prepared: Prepared, unusable: set[str]) -> Prepared:
    """Leave out a phone Klaviyo refused before, or that another profile holds; a customer left with
    nothing to key a profile by is rejected (opted in) or looked up by our id only (to suppress it)."""
    mapped, customer = prepared.mapped, prepared.customer
    phone = mapped.fields.get("phone_number") if mapped is not None else None
    if phone is None or phone not in unusable or mapped is None or customer is None:
        return prepared
    warnings = [*prepared.warnings, "phone not sent: Klaviyo refused it, or another profile held it, lately"]
    fields = {k: v for k, v in mapped.fields.items() if k != "phone_number"}
    if mapped.email is None:
        if customer.opted_in:
            return Prepared(customer, None, warnings, Plan(
                Outcome.REJECTED, "no email, and the phone cannot be used: nothing to create"))
        fields = {"external_id": customer.id}
    return Prepared(customer, replace(mapped, fields=fields), warnings)


def plan_customer(deps: SyncDeps, payload: dict[str, Any], *, memory: Memory | None = None
                  ) -> tuple[LoyaleCustomer | None, Plan, list[str]]:
    """Parse, map, look up and plan one customer. Reads Klaviyo, writes nothing."""
    customer, plan, warnings, _, _ = _plan(deps, payload, memory)
    return customer, plan, warnings


def _plan(deps: SyncDeps, payload: dict[str, Any], memory: Memory | None
          ) -> tuple[LoyaleCustomer | None, Plan, list[str], MappedProfile | None, Memory]:
    prepared = prepare(payload, deps.tenant.default_phone_region)
    if prepared.mapped is not None and (phone := prepared.mapped.fields.get("phone_number")):
        prepared = without_unusable_phone(prepared, deps.store.unusable_phones(deps.tenant.id, [phone]))
    customer, mapped, warnings = prepared.customer, prepared.mapped, prepared.warnings
    if prepared.early is not None or customer is None or mapped is None:
        return customer, prepared.early or Plan(Outcome.INVALID, "unreadable"), warnings, None, Memory()
    if memory is None:
        memory = deps.store.memory(deps.tenant.id, customer.id, mapped.email)
    if (stale := stale_plan(customer, memory)) is not None:
        return customer, stale, warnings, mapped, memory
    match = lookup(deps.klaviyo, customer, mapped, memory)
    return customer, plan_sync(customer, mapped, match, deps.policy, memory), warnings, mapped, memory


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
    if plan.sends_phone and not ours and duplicate.phone == phone_of(plan) and duplicate.id != plan.profile_id:
        # The phone is an identifier in Klaviyo and belongs to another profile; the rest of the
        # customer still syncs, and the warning says why the phone is missing.
        deps.store.remember_taken_phone(deps.tenant.id, duplicate.phone)
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
            if plan.sends_phone and exc.status == 400 and exc.about_phone:
                store.remember_refused_phone(tenant, phone_of(plan))
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
