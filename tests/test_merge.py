"""The merge policy, one table row per rule (DESIGN.md decisions 3-8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.builders import klaviyo_profile, loyale_payload
from worker.mapping import map_customer
from worker.merge import Match, Memory, Policy, plan_sync
from worker.models import parse_customer
from worker.outcomes import Outcome

ON = Policy(merge_customers=True)
SKIP = Policy(merge_customers=False, existing_profiles="skip")
FILL = Policy(merge_customers=False, existing_profiles="fill_empty")
EARLIER = datetime(2026, 1, 1, tzinfo=UTC)
LATER = datetime(2026, 2, 1, tzinfo=UTC)

# Klaviyo holds a different name, no phone, and a property we do not map.
EXISTING = dict(external_id="c-1", first_name="Janet", last_name="Doe", organization="Loyale",
                properties={"FavouriteColour": "blue", "LoyalePointBalance": 900})


@dataclass
class Case:
    rule: str
    policy: Policy = ON
    customer: dict[str, Any] = field(default_factory=dict)
    by_email: dict[str, Any] | None = None
    by_xid: dict[str, Any] | None = None
    memory: Memory = field(default_factory=Memory)
    outcome: Outcome = Outcome.UPDATED
    writes: set[str] | None = None          # exactly these fields are sent
    suppress: bool = False
    unsuppress: bool = False


def profile(spec: dict[str, Any] | None):
    if spec is None:
        return None
    spec = dict(spec)
    return klaviyo_profile(spec.pop("id", "01KPROFILE0000000000000001"), **spec)


CASES = [
    Case("new customer is created with every mapped field", ON, outcome=Outcome.CREATED,
         writes={"email", "external_id", "phone_number", "first_name", "last_name", "organization",
                 "location.address1", "location.city", "location.zip", "location.country", "properties.Birthday",
                 "properties.LoyalePointBalance", "properties.LoyaleMonetaryBalance", "properties.Levels",
                 "properties.Tags", "properties.ShoeSize"}),
    Case("new customer is created with merge off too", SKIP, outcome=Outcome.CREATED),
    Case("merge on overwrites differing fields and fills empty ones, leaves the rest", ON, by_email=EXISTING,
         outcome=Outcome.UPDATED,
         writes={"first_name", "phone_number", "location.address1", "location.city", "location.zip",
                 "location.country", "properties.Birthday", "properties.LoyalePointBalance",
                 "properties.LoyaleMonetaryBalance", "properties.Levels", "properties.Tags", "properties.ShoeSize"}),
    Case("merge off (skip) leaves an existing profile untouched", SKIP, by_email=EXISTING,
         outcome=Outcome.SKIPPED_EXISTING, writes=set()),
    Case("merge off (fill_empty) sets only empty fields", FILL, by_email=EXISTING, outcome=Outcome.UPDATED,
         writes={"phone_number", "location.address1", "location.city", "location.zip", "location.country",
                 "properties.Birthday", "properties.LoyaleMonetaryBalance", "properties.Levels",
                 "properties.Tags", "properties.ShoeSize"}),
    Case("fill_empty fills a missing external_id on a profile found by email", FILL,
         by_email={**EXISTING, "external_id": None}, writes=None, outcome=Outcome.UPDATED),
    Case("nothing differs: no write", ON, customer=dict(firstName="Janet", points_balance=900, monetary_balance=None,
                                                        areaCode=None, mobileNumber=None, dob=None, addressLine1=None,
                                                        town=None, postCode=None, country=None, levelNames=[],
                                                        tags=[], additionalCustomerFields=[]),
         by_email=EXISTING, outcome=Outcome.UNCHANGED, writes=set()),
    Case("email and external id on two profiles is a conflict", ON, by_email={**EXISTING, "external_id": None},
         by_xid={"id": "01KOTHER000000000000000002", "email": "old@example.com", "external_id": "c-1"},
         outcome=Outcome.CONFLICT, writes=set()),
    Case("email's profile belongs to another Loyale customer: conflict", ON,
         by_email={**EXISTING, "external_id": "c-99"}, outcome=Outcome.CONFLICT, writes=set()),
    Case("found by external id after an email change: merge on writes the new email", ON,
         by_xid={**EXISTING, "email": "old@example.com"}, outcome=Outcome.UPDATED, writes=None),
    Case("opted out and not in Klaviyo: never created", ON, customer=dict(marketingSub=False),
         outcome=Outcome.SKIPPED_NO_CONSENT, writes=set()),
    Case("opted out and in Klaviyo: suppressed, even with merge off", SKIP, customer=dict(marketingSub=False),
         by_email=EXISTING, outcome=Outcome.SUPPRESSED, writes=set(), suppress=True),
    Case("deleted in Loyale counts as opted out: suppressed, never deleted", ON, customer=dict(deleted=True),
         by_email=EXISTING, outcome=Outcome.SUPPRESSED, writes=set(), suppress=True),
    Case("on hold counts as opted out", ON, customer=dict(onHold=True), by_email=EXISTING,
         outcome=Outcome.SUPPRESSED, suppress=True, writes=set()),
    Case("opted out and already suppressed: nothing to do", ON, customer=dict(marketingSub=False),
         by_email={**EXISTING, "suppression": ["UNSUBSCRIBE"]}, outcome=Outcome.UNCHANGED, writes=set()),
    Case("opted in again: our own suppression is lifted", SKIP,
         by_email={**EXISTING, "suppression": ["USER_SUPPRESSED"]}, memory=Memory(suppressed_by_us=True),
         outcome=Outcome.UNSUPPRESSED, unsuppress=True, writes=set()),
    Case("a suppression someone else set is never lifted", SKIP,
         by_email={**EXISTING, "suppression": ["USER_SUPPRESSED"]}, memory=Memory(suppressed_by_us=False),
         outcome=Outcome.SKIPPED_EXISTING, writes=set()),
    Case("a bounce is never lifted", ON, by_email={**EXISTING, "suppression": ["HARD_BOUNCE"]},
         memory=Memory(suppressed_by_us=True), outcome=Outcome.UPDATED),
    Case("stale snapshot is dropped", ON, customer=dict(updatedDate="2026-01-01T00:00:00Z"), by_email=EXISTING,
         memory=Memory(last_synced=LATER), outcome=Outcome.STALE, writes=set()),
    Case("a newer snapshot goes through", ON, customer=dict(updatedDate="2026-03-01T00:00:00Z"), by_email=EXISTING,
         memory=Memory(last_synced=EARLIER), outcome=Outcome.UPDATED),
    Case("the same snapshot again (redelivery) is not stale", ON, customer=dict(updatedDate="2026-02-01T00:00:00Z"),
         by_email=EXISTING, memory=Memory(last_synced=LATER), outcome=Outcome.UPDATED),
]


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_rule(case: Case):
    customer, _ = parse_customer(loyale_payload(**case.customer))
    mapped = map_customer(customer)
    match = Match(by_email=profile(case.by_email), by_external_id=profile(case.by_xid))
    if case.by_email and case.by_email.get("external_id") == "c-1" and case.by_xid is None:
        match = Match(by_email=match.by_email, by_external_id=match.by_email)
    plan = plan_sync(customer, mapped, match, case.policy, case.memory)

    assert plan.outcome == case.outcome, plan.reason
    if case.writes is not None:
        assert {c.field for c in plan.changes} == case.writes
    assert bool(plan.suppress_email) == case.suppress
    assert bool(plan.unsuppress_email) == case.unsuppress
    assert None not in [c.new for c in plan.changes]


def test_merge_on_journals_old_values_of_overwritten_fields_only():
    customer, _ = parse_customer(loyale_payload())
    plan = plan_sync(customer, map_customer(customer), Match(by_email=profile(EXISTING)), ON, Memory())
    assert {(c.field, c.old, c.new) for c in plan.overwrites} == {
        ("first_name", "Janet", "Jane"), ("properties.LoyalePointBalance", 900, 1200)}
    assert plan.attributes["properties"]["LoyalePointBalance"] == 1200
    assert "FavouriteColour" not in plan.attributes["properties"]


def test_merge_off_reports_the_kept_values_it_did_not_send():
    customer, _ = parse_customer(loyale_payload())
    plan = plan_sync(customer, map_customer(customer), Match(by_email=profile(EXISTING)), FILL, Memory())
    assert {c.field for c in plan.kept} == {"first_name", "properties.LoyalePointBalance"}
    assert "first_name" not in plan.attributes


def test_fill_empty_writes_the_external_id_so_later_lookups_find_the_profile():
    customer, _ = parse_customer(loyale_payload())
    plan = plan_sync(customer, map_customer(customer), Match(by_email=profile({**EXISTING, "external_id": None})),
                     FILL, Memory())
    assert plan.attributes["external_id"] == "c-1"
