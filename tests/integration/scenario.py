"""A brand's world for end-to-end tests: a Loyale scheme, a Klaviyo account seeded with profiles
that conflict with Loyale, a tenants entry, and an oracle that says what Klaviyo must hold at the end.

The oracle reads DESIGN.md's rules directly (who is opted in, who existed, which merge mode) and uses
the mapping only to know each customer's Klaviyo fields; the pipeline under test is everything else.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.loyale_control import FakeLoyaleControl
from producers.loyale import customer_snapshot
from worker.mapping import InvalidCustomer, MappedProfile, map_customer
from worker.merge import is_empty, same
from worker.models import KlaviyoProfile, parse_customer
from worker.outcomes import Outcome

FOREIGN_ID = "another-loyale-customer"


def private_key() -> str:
    return "pk_" + secrets.token_hex(17)


def mapped_fields(customer: dict[str, Any], level_names: dict[str, str]) -> MappedProfile | None:
    """The fields our mapping gives a raw Loyale customer, or None if it is invalid."""
    try:
        payload = customer_snapshot(customer, scheme_id=None,
                                    level_names=lambda ids: [level_names[i] for i in ids if i in level_names])
        parsed, _ = parse_customer(payload)
        return map_customer(parsed)
    except (InvalidCustomer, ValueError):
        return None


@dataclass
class Scenario:
    tenant_id: str
    scheme_id: str
    admin_email: str
    admin_password: str
    account_id: str
    key: str
    merge_customers: bool
    existing_profiles: str
    loyale_url: str
    klaviyo_url: str
    level_names: dict[str, str]
    #: customer id -> the attributes we seeded in Klaviyo for them (existing profiles)
    seeded: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: customer id -> suppression reasons seeded
    seeded_suppression: dict[str, list[str]] = field(default_factory=dict)
    conflict_ids: set[str] = field(default_factory=set)

    def tenant_config(self) -> dict[str, Any]:
        return {
            "loyale_base_url": self.loyale_url, "loyale_scheme_id": self.scheme_id,
            "loyale_admin_email": self.admin_email, "loyale_admin_password": self.admin_password,
            "klaviyo_base_url": self.klaviyo_url, "klaviyo_private_key": self.key,
            "merge_customers": self.merge_customers, "existing_profiles": self.existing_profiles,
        }


def build_scenario(loyale: FakeLoyaleControl, klaviyo: FakeKlaviyoControl, tenant_id: str, *, customers: int,
                   merge_customers: bool, existing_profiles: str = "skip", seed: int = 7,
                   existing_share: int = 3) -> Scenario:
    """A scheme of `customers` synthetic customers; every `existing_share`-th already in Klaviyo with
    conflicting data, a few of those bounced, one email owned by another Loyale customer's profile."""
    scheme = loyale.create_scheme(customers=customers, seed=seed)
    key = private_key()
    account_id = klaviyo.add_account(keys=[{"key": key}])
    scenario = Scenario(
        tenant_id=tenant_id, scheme_id=scheme["scheme_id"], admin_email=scheme["admin_email"],
        admin_password=scheme["admin_password"], account_id=account_id, key=key, merge_customers=merge_customers,
        existing_profiles=existing_profiles, loyale_url=loyale.base_url, klaviyo_url=klaviyo.base_url,
        level_names={lv["id"]: lv["name"] for lv in scheme["levels"]},
    )
    seeds: list[dict[str, Any]] = []
    all_customers = loyale.customers(scenario.scheme_id)
    mapped_all = [mapped_fields(c, scenario.level_names) for c in all_customers]
    shared = defaultdict(int)
    for mapped in mapped_all:
        if mapped is not None and mapped.email:
            shared[mapped.email] += 1
    for index, (customer, mapped) in enumerate(zip(all_customers, mapped_all, strict=True)):
        # Emails that differ only in case belong to two customers: not seeded, checked on their own.
        if mapped is None or mapped.email is None or shared[mapped.email] > 1 or index % existing_share:
            continue
        attributes: dict[str, Any] = {
            "email": mapped.email, "first_name": "Klaviyo-" + str(index), "last_name": None,
            "properties": {"FavouriteColour": "blue", "LoyalePointBalance": -1},
            "location": {"city": "Old Town"},
        }
        if index % (existing_share * 5) == 0:
            attributes["external_id"] = FOREIGN_ID + str(index)   # the email's profile is someone else's
            scenario.conflict_ids.add(customer["id"])
        suppression = ["HARD_BOUNCE"] if index % (existing_share * 7) == 0 else []
        seeds.append({**{k: v for k, v in attributes.items() if v is not None},
                      "suppression": [{"reason": r} for r in suppression]})
        scenario.seeded[customer["id"]] = attributes
        scenario.seeded_suppression[customer["id"]] = suppression
    if seeds:
        klaviyo.seed_profiles(seeds, account_id=account_id)
    return scenario


def _index(profiles: list[dict[str, Any]]) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    by_email: dict[str, list[dict]] = defaultdict(list)
    by_xid: dict[str, list[dict]] = defaultdict(list)
    for p in profiles:
        attrs = p["attributes"]
        if attrs.get("email"):
            by_email[attrs["email"].lower()].append(p)
        if attrs.get("external_id"):
            by_xid[attrs["external_id"]].append(p)
    return by_email, by_xid


def reasons(profile: dict[str, Any]) -> list[str]:
    marketing = profile.get("subscriptions", {}).get("email", {}).get("marketing", {})
    return [s["reason"] for s in marketing.get("suppression") or []]


def check_final_state(scenario: Scenario, loyale: FakeLoyaleControl, klaviyo: FakeKlaviyoControl,
                      outcomes: dict[str, str], resynced: bool = False) -> dict[str, int]:
    """Assert Klaviyo holds exactly what the rules say for every customer; returns outcome counts.

    `resynced`: the outcomes come from a second pass over customers already synced (a run resumed
    after Redis lost its records), where a write already made reads `unchanged`."""

    def ended(outcome: str | None, want: Outcome) -> bool:
        # Resynced after Redis lost the run: a write already made reads unchanged, and a profile whose
        # batch was cut between its create and its phone job is completed by an update.
        return outcome == want or (resynced and (outcome == Outcome.UNCHANGED
                                                 or (want == Outcome.CREATED and outcome == Outcome.UPDATED)))
    customers = loyale.customers(scenario.scheme_id)
    # Suppressions apply late in Klaviyo: look at the state once every job sent has had its time.
    klaviyo.advance_clock(86_400)
    refused_regions = set(klaviyo.knobs().get("unsupported_phone_regions") or [])

    def refused(phone: str | None) -> bool:
        """A phone Klaviyo refuses for its region: left out on purpose, with a warning."""
        return bool(phone) and phonenumbers.region_code_for_number(phonenumbers.parse(phone)) in refused_regions
    profiles = klaviyo.profiles(account_id=scenario.account_id)
    by_email, by_xid = _index(profiles)
    phone_owners: dict[str, list[str]] = defaultdict(list)
    for p in profiles:
        if p["attributes"].get("phone_number"):
            phone_owners[p["attributes"]["phone_number"]].append(p["id"])
    errors: list[str] = []

    def differing(profile: KlaviyoProfile, fields: dict[str, Any]) -> list[str]:
        """Mapped fields the profile does not hold; a phone that another profile holds is left out
        on purpose (a warning says so), so it does not count."""
        wrong = [k for k, v in fields.items() if not same(profile.value(k), v)]
        if "phone_number" in wrong and (any(o != profile.id for o in phone_owners.get(fields["phone_number"], []))
                                        or refused(fields["phone_number"])):
            wrong.remove("phone_number")
        return wrong
    counts: dict[str, int] = defaultdict(int)

    for key, group in by_xid.items():
        if len(group) > 1:
            errors.append(f"duplicate profiles for external_id {key}")
    for key, group in by_email.items():
        if len(group) > 1:
            errors.append(f"duplicate profiles for email {key}")

    emails: dict[str, list[str]] = defaultdict(list)
    mapped_by_id = {}
    for c in customers:
        mapped_by_id[c["id"]] = mapped_fields(c, scenario.level_names)
        if mapped_by_id[c["id"]] and mapped_by_id[c["id"]].email:
            emails[mapped_by_id[c["id"]].email].append(c["id"])

    for c in customers:
        cid = c["id"]
        outcome = outcomes.get(cid)
        counts[outcome or "missing"] += 1
        if outcome is None:
            errors.append(f"{cid}: no outcome")
            continue
        mapped = mapped_by_id[cid]
        opted_in = c.get("marketingSub") is True and not c.get("deleted") and not c.get("onHold")
        seeded = scenario.seeded.get(cid)
        if mapped is None:
            # Not opted in: it is still looked up by our id (to suppress a profile it may have).
            want = Outcome.INVALID if opted_in else Outcome.SKIPPED_NO_CONSENT
            if outcome != want or by_xid.get(cid):
                errors.append(f"{cid}: invalid customer ended {outcome} / profile {bool(by_xid.get(cid))}")
            continue
        if mapped.email and len(emails[mapped.email]) > 1 and seeded is None:
            # Emails that differ only in case: one customer owns the profile, the others conflict.
            owners = [p["attributes"].get("external_id") for p in by_email.get(mapped.email, [])]
            if outcome not in (Outcome.CONFLICT, Outcome.CREATED, Outcome.SKIPPED_NO_CONSENT, Outcome.UPDATED,
                               Outcome.UNCHANGED, Outcome.SUPPRESSED):
                errors.append(f"{cid}: shared email ended {outcome}")
            if outcome == Outcome.CREATED and owners != [cid]:
                errors.append(f"{cid}: created but the profile belongs to {owners}")
            continue
        final = (by_email.get(mapped.email) if mapped.email else None) or by_xid.get(cid)
        profile = KlaviyoProfile(id=final[0]["id"], attributes=final[0]["attributes"]) if final else None
        if cid in scenario.conflict_ids:
            if outcome != Outcome.CONFLICT:
                errors.append(f"{cid}: expected conflict, got {outcome}")
            if profile is None or profile.value("first_name") != seeded["first_name"]:
                errors.append(f"{cid}: conflicting profile was changed")
            continue
        if not opted_in:
            if seeded is None:
                if profile is not None or outcome != Outcome.SKIPPED_NO_CONSENT:
                    errors.append(f"{cid}: opted out, not in Klaviyo: got {outcome}, profile {profile is not None}")
            else:
                want = Outcome.UNCHANGED if scenario.seeded_suppression[cid] else Outcome.SUPPRESSED
                if not ended(outcome, want) or profile is None or not reasons(final[0]):
                    errors.append(f"{cid}: opted out and existing: expected {want}, got {outcome}")
                elif profile.value("first_name") != seeded["first_name"]:
                    errors.append(f"{cid}: opted out profile was updated")
            continue
        if profile is None:
            if not (mapped.email is None and outcome == Outcome.REJECTED
                    and (refused(mapped.fields.get("phone_number"))
                         or phone_owners.get(mapped.fields.get("phone_number")))):
                errors.append(f"{cid}: opted in but no Klaviyo profile ({outcome})")
            continue
        if seeded is None:
            if not ended(outcome, Outcome.CREATED):
                errors.append(f"{cid}: new customer ended {outcome}")
            wrong = differing(profile, mapped.fields)
            if wrong:
                errors.append(f"{cid}: created profile differs in {wrong}")
            continue
        if scenario.seeded_suppression[cid] != reasons(final[0]):
            errors.append(f"{cid}: suppression changed from {scenario.seeded_suppression[cid]}")
        if profile.value("properties.FavouriteColour") != "blue":
            errors.append(f"{cid}: a property outside the mapping was touched")
        if scenario.merge_customers:
            wrong = differing(profile, mapped.fields)
            if wrong or not ended(outcome, Outcome.UPDATED):
                errors.append(f"{cid}: merge on: {outcome}, fields not Loyale's: {wrong}")
        elif scenario.existing_profiles == "skip":
            if outcome != Outcome.SKIPPED_EXISTING or profile.value("first_name") != seeded["first_name"] \
                    or profile.value("properties.LoyalePointBalance") != -1 or profile.value("external_id"):
                errors.append(f"{cid}: merge off (skip) changed the profile or ended {outcome}")
        else:
            for k, v in mapped.fields.items():
                before = KlaviyoProfile(id="x", attributes=seeded).value(k)
                expected = v if is_empty(before) else before
                if k == "phone_number" and not differing(profile, {k: expected}):
                    continue
                if not same(profile.value(k), expected):
                    errors.append(f"{cid}: fill_empty: {k} is {profile.value(k)!r}, expected {expected!r}")
            if not ended(outcome, Outcome.UPDATED):
                errors.append(f"{cid}: fill_empty ended {outcome}")

    merges = klaviyo.merges()
    if merges:
        errors.append(f"Klaviyo merged {len(merges)} profiles: two people became one, first {merges[0]}")
    extra = set(outcomes) - {c["id"] for c in customers}
    if extra:
        errors.append(f"outcomes for customers not in the scheme: {sorted(extra)[:5]}")
    assert not errors, f"{len(errors)} problems, first: " + "\n".join(errors[:15])
    return dict(counts)
