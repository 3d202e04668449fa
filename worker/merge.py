"""The merge policy: (Loyale customer, Klaviyo profile or none, tenant settings) -> plan. Pure.

Rules, in the order they apply (DESIGN.md, decisions 3-8):
  stale      a snapshot older than the one last synced for this customer is dropped
  conflict   email and external id point at two profiles, or the email's profile carries another
             Loyale customer's id: nothing is written
  consent    not opted in (or deleted/suspended/on hold): never created or updated; an existing
             profile is suppressed, in every merge mode
  unsuppress opted in again: lift the suppression only if this service set it (or sent it and
             Klaviyo has not applied it yet: suppressions apply minutes to hours later)
  create     no profile: create it with every mapped field, in every merge mode
  merge on   every mapped field Loyale has a value for replaces Klaviyo's value; an owned property
             (Levels, Tags, balances) Loyale holds empty is unset (never set to null)
  skip       merge off: the existing profile is left untouched
  fill_empty merge off: only fields that are empty in Klaviyo are set
  no-op      nothing differs: no write
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from worker.mapping import MappedProfile, to_attributes
from worker.models import SUPPRESSION_USER, KlaviyoProfile, LoyaleCustomer
from worker.outcomes import Outcome

ChangeKind = Literal["set", "overwrite", "fill", "keep", "clear"]
ExistingProfiles = Literal["skip", "fill_empty"]
#: The ExistingProfiles choices by their spelling on a command line.
EXISTING_PROFILES: dict[str, ExistingProfiles] = {"skip": "skip", "fill_empty": "fill_empty"}
SuppressionAction = Literal["suppress", "unsuppress"]


@dataclass(frozen=True)
class Policy:
    merge_customers: bool = False
    existing_profiles: ExistingProfiles = "skip"


@dataclass(frozen=True)
class Match:
    """What the Klaviyo lookups found for one customer."""

    by_email: KlaviyoProfile | None = None
    by_external_id: KlaviyoProfile | None = None


@dataclass(frozen=True)
class Memory:
    """What this service remembers about the customer from earlier syncs."""

    last_synced: datetime | None = None
    suppressed_by_us: bool = False
    #: The Klaviyo profile this service last wrote for the customer (reads by id see it at once,
    #: filters may not yet; and it finds the profile after an email change).
    profile_id: str | None = None
    #: A suppress/unsuppress this service sent that Klaviyo has not confirmed applied yet.
    pending_suppression: SuppressionAction | None = None
    #: The customer's last outcome (any run), e.g. "created": whether it has a profile of ours.
    last_outcome: str | None = None

    @property
    def has_profile(self) -> bool:
        """An earlier sync created or wrote the customer's profile (it may carry an older email now)."""
        return self.profile_id is not None or self.last_outcome in ("created", "updated", "unchanged", "unsuppressed")


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any
    #: set = new profile, overwrite = replaces a Klaviyo value, fill = Klaviyo had none, keep = not sent,
    #: clear = an owned property Loyale holds empty, unset in Klaviyo (merge on only)
    kind: ChangeKind


@dataclass(frozen=True)
class Plan:
    outcome: Outcome
    reason: str = ""
    profile_id: str | None = None
    write: Literal["create", "update"] | None = None
    changes: tuple[FieldChange, ...] = ()
    #: Fields where Klaviyo's differing value is kept (merge off); shown by preview, never sent.
    kept: tuple[FieldChange, ...] = ()
    suppress_email: str | None = None
    unsuppress_email: str | None = None

    @property
    def attributes(self) -> dict[str, Any]:
        """The attributes to send: only changed fields, never a null."""
        return to_attributes({c.field: c.new for c in self.changes if c.new is not None and c.kind != "clear"})

    @property
    def unset(self) -> list[str]:
        """Property names to remove (`meta.patch_properties.unset`); only on an update."""
        return [c.field.removeprefix("properties.") for c in self.changes if c.kind == "clear"]

    @property
    def overwrites(self) -> tuple[FieldChange, ...]:
        """Changes that replace or remove an existing Klaviyo value (journaled before the write)."""
        return tuple(c for c in self.changes if c.kind in ("overwrite", "clear"))

    @property
    def sends_phone(self) -> bool:
        return any(c.field == "phone_number" for c in self.changes)

    def without_phone(self) -> Plan:
        """The plan minus its phone (it belongs to another profile, or Klaviyo refused it). A create
        left with no email is not made: a profile whose only identifier is our id would be orphaned."""
        changes = tuple(c for c in self.changes if c.field != "phone_number")
        if self.write == "create" and not any(c.field == "email" for c in changes):
            return Plan(Outcome.REJECTED, "no email, and the phone could not be used: nothing to create",
                        profile_id=self.profile_id)
        if self.write == "update" and not changes and not self.writes_suppression:
            return replace(self, changes=(), write=None, outcome=Outcome.UNCHANGED,
                           reason="only the phone differed, and it was not sent")
        return replace(self, changes=changes)

    @property
    def writes_suppression(self) -> bool:
        return bool(self.suppress_email or self.unsuppress_email)

    @property
    def writes_anything(self) -> bool:
        return bool(self.write or self.suppress_email or self.unsuppress_email)


def is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def same(old: Any, new: Any) -> bool:
    """Klaviyo's value equals ours (numbers by value, emails case-insensitively)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return old is new
    if isinstance(old, int | float) and isinstance(new, int | float):
        return old == new  # Python compares int and float exactly, even past float's range
    if isinstance(old, str) and isinstance(new, str):
        return old == new
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(same(a, b) for a, b in zip(old, new, strict=True))
    return bool(old == new)


def stale_plan(customer: LoyaleCustomer, memory: Memory) -> Plan | None:
    """A STALE plan if this snapshot is older than the last one synced, else None."""
    if customer.updated_date and memory.last_synced and customer.updated_date < memory.last_synced:
        return Plan(
            Outcome.STALE,
            f"snapshot of {customer.updated_date.isoformat()} is older than the one already synced "
            f"({memory.last_synced.isoformat()})",
        )
    return None


def _consent_reason(customer: LoyaleCustomer) -> str:
    if customer.deleted:
        return "deleted in Loyale"
    if customer.on_hold:
        return "suspended or on hold in Loyale"
    if customer.left_scheme:
        return "left the scheme in Loyale"
    if customer.marketing_sub is None:
        return "no marketing consent recorded in Loyale"
    return "opted out of marketing in Loyale"


def plan_sync(
    customer: LoyaleCustomer, mapped: MappedProfile, match: Match, policy: Policy, memory: Memory
) -> Plan:
    """Decide what to do for one customer. Never returns a plan that sends a null."""
    if (stale := stale_plan(customer, memory)) is not None:
        return stale

    by_email, by_xid = match.by_email, match.by_external_id
    if by_email and by_xid and by_email.id != by_xid.id:
        return Plan(
            Outcome.CONFLICT,
            f"email belongs to Klaviyo profile {by_email.id} but external_id {customer.id} to profile {by_xid.id}",
        )
    if by_email and by_email.external_id and by_email.external_id != customer.id:
        return Plan(
            Outcome.CONFLICT,
            f"Klaviyo profile {by_email.id} with this email belongs to Loyale customer {by_email.external_id}",
            profile_id=by_email.id,
        )
    profile = by_email or by_xid

    if not customer.opted_in:
        reason = _consent_reason(customer)
        if profile is None:
            return Plan(Outcome.SKIPPED_NO_CONSENT, f"{reason}; not in Klaviyo, so not created")
        email = profile.email or mapped.email
        if profile.suppression_reasons and memory.pending_suppression != "unsuppress":
            return Plan(
                Outcome.UNCHANGED,
                f"{reason}; already suppressed in Klaviyo ({', '.join(profile.suppression_reasons)})",
                profile_id=profile.id,
            )
        if email is None:
            return Plan(Outcome.SKIPPED_NO_CONSENT, f"{reason}; the profile has no email to suppress",
                        profile_id=profile.id)
        return Plan(Outcome.SUPPRESSED, reason, profile_id=profile.id, suppress_email=email)

    if profile is None:
        return Plan(Outcome.CREATED, "new profile", write="create",
                    changes=tuple(FieldChange(k, None, v, "set") for k, v in mapped.fields.items()))

    unsuppress = None
    notes: list[str] = []
    reasons = profile.suppression_reasons
    if (SUPPRESSION_USER in reasons and memory.suppressed_by_us) or memory.pending_suppression == "suppress":
        # A suppression we sent may not show yet (it applies minutes to hours later): lift it anyway,
        # or it would land after this opt-in and leave the customer unmarketable.
        unsuppress = profile.email or mapped.email
    elif reasons:
        notes.append(f"Klaviyo suppression kept ({', '.join(reasons)}): not set by this service")

    changes: list[FieldChange] = []
    kept: list[FieldChange] = []
    for path, new in mapped.fields.items():
        old = profile.value(path)
        if same(old, new) or (path == "email" and profile.email == new):  # emails match case-insensitively
            continue
        change = FieldChange(path, old, new, "fill" if is_empty(old) else "overwrite")
        if policy.merge_customers or (policy.existing_profiles == "fill_empty" and change.kind == "fill"):
            changes.append(change)
        else:
            kept.append(FieldChange(path, old, new, "keep"))
    if policy.merge_customers:
        changes.extend(FieldChange(path, profile.value(path), None, "clear")
                       for path in sorted(mapped.cleared) if not is_empty(profile.value(path)))

    write: Literal["update"] | None = "update" if changes else None
    if unsuppress:
        outcome, reason = Outcome.UNSUPPRESSED, "opted in again; lifting the suppression this service set"
    elif changes:
        outcome = Outcome.UPDATED
        reason = f"{len(changes)} field(s) written" + (" (merge on)" if policy.merge_customers else " (fill empty)")
    elif not policy.merge_customers and policy.existing_profiles == "skip":
        outcome, reason = Outcome.SKIPPED_EXISTING, "merge off: existing Klaviyo profile left untouched"
    else:
        outcome, reason = Outcome.UNCHANGED, "Klaviyo already holds these values"
    if notes:
        reason = f"{reason}; {'; '.join(notes)}"
    return Plan(
        outcome, reason, profile_id=profile.id, write=write, changes=tuple(changes), kept=tuple(kept),
        unsuppress_email=unsuppress,
    )
