"""The first half of every sync: prepare (parse, map, leave out an unusable phone) and look up.

One copy, used by the per-customer path (`worker.sync`), the batch (`worker.batch`) and preview
(`worker.preview`), so a preview looks customers up exactly as the backfill then does.

Lookups (`lookup_many`), per group of customers:

  email         `any(email,[...])` of up to 100 emails per request; a profile found by email that
                carries our id needs nothing more
  external id   `any(external_id,[...])` for the customers whose profile email did not find: every
                one without an email (our id is all there is), every one with merge off (an existing
                profile must never be touched), and with merge on only those an earlier sync wrote a
                profile for (it may carry an older email); for the others it would cost a request per
                hundred customers for nothing. The per-customer path has paid for two lookups before
                the first (`worker.runtime.LOOKUPS_PER_SYNC`) and looks by external id whenever email
                did not find the customer's own profile (`every_external_id`)
  remembered    the profile id remembered from the customer's last sync is read by id where the
                filters show nothing: they lag behind writes, and a read by id does not
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from worker.klaviyo import MAX_FILTER_VALUES, KlaviyoClient
from worker.mapping import InvalidCustomer, MappedProfile, map_customer
from worker.merge import Match, Memory, Plan, Policy
from worker.models import KlaviyoProfile, LoyaleCustomer, parse_customer
from worker.outcomes import Outcome

T = TypeVar("T")


@dataclass(frozen=True, eq=False)   # compared and hashed by identity: used as a dict key
class Ready:
    """A customer that can be looked up: parsed and mapped, its phone usable as far as we know."""

    customer: LoyaleCustomer
    mapped: MappedProfile
    warnings: list[str]
    #: What this service remembers of the customer (filled in before the lookup).
    memory: Memory = field(default_factory=Memory)


@dataclass(frozen=True)
class Stopped:
    """A customer whose outcome is decided before any lookup (unreadable, invalid, nothing to key it by)."""

    customer: LoyaleCustomer | None
    plan: Plan
    warnings: list[str]


Prepared = Ready | Stopped


def prepare(payload: dict[str, Any], default_phone_region: str | None) -> Prepared:
    """Parse and map one customer (pure)."""
    try:
        customer, warnings = parse_customer(payload)
    except ValidationError as exc:
        problem = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
        return Stopped(None, Plan(Outcome.INVALID, f"unreadable Loyale record: {problem}"), [])
    try:
        mapped = map_customer(customer, default_phone_region)
    except InvalidCustomer as exc:
        if customer.opted_in:
            return Stopped(customer, Plan(Outcome.INVALID, str(exc)), warnings)
        # Not opted in (deleted, say) and nothing to send: still find its profile by our id to suppress it.
        mapped = MappedProfile(fields={"external_id": customer.id})
    return Ready(customer, mapped, warnings + mapped.warnings)


def _phone(prepared: Prepared) -> str | None:
    return prepared.mapped.fields.get("phone_number") if isinstance(prepared, Ready) else None


def without_unusable_phone(prepared: Prepared, unusable: set[str]) -> Prepared:
    """Leave out a phone Klaviyo refused before, or that another profile holds; a customer left with
    nothing to key a profile by is rejected (opted in) or looked up by our id only (to suppress it)."""
    phone = _phone(prepared)
    if not isinstance(prepared, Ready) or phone is None or phone not in unusable:
        return prepared
    customer, mapped = prepared.customer, prepared.mapped
    warnings = [*prepared.warnings, "phone not sent: Klaviyo refused it, or another profile held it, lately"]
    fields = {k: v for k, v in mapped.fields.items() if k != "phone_number"}
    if mapped.email is None:
        if customer.opted_in:
            return Stopped(customer, Plan(
                Outcome.REJECTED, "no email, and the phone cannot be used: nothing to create"), warnings)
        fields = {"external_id": customer.id}
    return Ready(customer, replace(mapped, fields=fields), warnings)


def prepare_many(payloads: Sequence[dict[str, Any]], default_phone_region: str | None,
                 unusable_phones: Callable[[list[str]], set[str]]) -> list[Prepared]:
    """`prepare` each customer, then leave out the phones known to be unusable (one question for all)."""
    prepared = [prepare(payload, default_phone_region) for payload in payloads]
    phones = [phone for p in prepared if (phone := _phone(p)) is not None]
    unusable = unusable_phones(phones) if phones else set()
    return [without_unusable_phone(p, unusable) for p in prepared]


class Calls(Protocol):
    """How `lookup_many` makes its Klaviyo calls: the batch retries them in place and sets aside the
    customers of a chunk Klaviyo refuses; elsewhere they are plain calls."""

    def chunks(self, group: list[Ready], size: int, fn: Callable[[list[Ready]], None]) -> None: ...

    def call(self, fn: Callable[[], T]) -> T: ...

    def still_open(self, ready: Ready) -> bool: ...


class DirectCalls:
    """Plain calls: errors propagate to the caller."""

    def chunks(self, group: list[Ready], size: int, fn: Callable[[list[Ready]], None]) -> None:
        for start in range(0, len(group), size):
            fn(group[start:start + size])

    def call(self, fn: Callable[[], T]) -> T:
        return fn()

    def still_open(self, ready: Ready) -> bool:
        return True


def needs_external_id(ready: Ready, by_email: KlaviyoProfile | None, policy: Policy, *,
                      every_external_id: bool = False) -> bool:
    """Whether the customer is also looked up by our id (see the module's docstring)."""
    if by_email is not None and by_email.external_id == ready.customer.id:
        return False
    return (every_external_id or ready.mapped.email is None or not policy.merge_customers
            or (by_email is None and ready.memory.has_profile))


def lookup_many(klaviyo: KlaviyoClient, policy: Policy, readies: list[Ready], *,
                calls: Calls | None = None, every_external_id: bool = False) -> dict[Ready, Match]:
    """What Klaviyo holds for each customer: by email, by external id where needed, and by the
    remembered profile id where the filters show nothing. Reads only."""
    calls = calls or DirectCalls()
    by_email: dict[str, KlaviyoProfile] = {}

    def find_emails(chunk: list[Ready]) -> None:
        for profile in klaviyo.find_many("email", [r.mapped.email for r in chunk if r.mapped.email is not None]):
            if profile.email:
                by_email[profile.email] = profile

    calls.chunks([r for r in readies if r.mapped.email is not None], MAX_FILTER_VALUES, find_emails)
    matches: dict[Ready, Match] = {}
    for r in readies:
        found = by_email.get(r.mapped.email) if r.mapped.email is not None else None
        own = found is not None and found.external_id == r.customer.id
        matches[r] = Match(by_email=found, by_external_id=found if own else None)

    by_id: dict[str, KlaviyoProfile] = {}

    def find_ids(chunk: list[Ready]) -> None:
        for profile in klaviyo.find_many("external_id", [r.customer.id for r in chunk]):
            if profile.external_id:
                by_id[profile.external_id] = profile

    unknown = [r for r in readies if calls.still_open(r) and matches[r].by_external_id is None
               and needs_external_id(r, matches[r].by_email, policy, every_external_id=every_external_id)]
    calls.chunks(unknown, MAX_FILTER_VALUES, find_ids)
    for r in unknown:
        matches[r] = replace(matches[r], by_external_id=by_id.get(r.customer.id))
    # A profile this service wrote may not show in a filter yet (read lag), or carry an older email.
    for r in readies:
        match, profile_id = matches[r], r.memory.profile_id
        if not calls.still_open(r) or match.by_email is not None or match.by_external_id is not None or not profile_id:
            continue
        remembered = calls.call(partial(klaviyo.get_profile, profile_id))
        if remembered is not None and remembered.external_id in (None, r.customer.id):
            if remembered.email is not None and remembered.email == r.mapped.email:
                matches[r] = Match(by_email=remembered)
            else:
                matches[r] = Match(by_external_id=remembered)
    return matches
