"""Which loyalty events may be sent (`worker.event_sync.verdict`): pure, consent first, and only to a
profile this service synced, named by its id."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.builders import loyale_payload
from worker import events as ev
from worker.event_sync import Synced, carried, verdict
from worker.events import LoyaltyEvent
from worker.models import parse_customer
from worker.outcomes import Outcome
from worker.state.events import EventOutcome

PROFILE = "01KPROFILE0000000000000001"
EARNED = LoyaltyEvent(ev.POINTS_EARNED, "c-1", "loyale-transaction-1", datetime(2026, 3, 1, tzinfo=UTC), {"Points": 5})
LEFT = LoyaltyEvent(ev.LEFT_SCHEME, "c-1", "loyale-left-c-1-1", datetime(2026, 3, 1, tzinfo=UTC))


def synced(outcome: Outcome = Outcome.UPDATED, profile_id: str | None = PROFILE, **customer: object) -> Synced:
    return Synced("c-1", parse_customer(loyale_payload(**customer))[0], outcome, profile_id)


@pytest.mark.parametrize("outcome", [Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED, Outcome.SKIPPED_EXISTING,
                                     Outcome.UNSUPPRESSED])
def test_an_opted_in_customer_with_a_profile_of_ours_gets_its_events(outcome):
    assert verdict(synced(outcome), EARNED) is None


@pytest.mark.parametrize(("customer", "why"), [
    ({"marketingSub": False}, "not opted in"),
    ({"marketingSub": None}, "not opted in"),
    ({"deleted": True}, "deleted"),
    ({"onHold": True}, "on hold"),
    ({"leftScheme": True}, "left the scheme"),
])
def test_a_customer_without_consent_gets_no_event_whatever_the_profile(customer, why):
    for outcome in (Outcome.UPDATED, Outcome.UNCHANGED, Outcome.SUPPRESSED):
        result = verdict(synced(outcome, **customer), EARNED)
        assert result is not None and result.outcome == EventOutcome.DROPPED_NO_CONSENT and why in result.reason


def test_leaving_the_scheme_is_told_to_a_profile_of_ours_but_nothing_after():
    assert verdict(synced(Outcome.SUPPRESSED, leftScheme=True), LEFT) is None
    refused = verdict(synced(Outcome.SUPPRESSED, leftScheme=True, marketingSub=False), LEFT)
    assert refused is not None and refused.outcome == EventOutcome.DROPPED_NO_CONSENT


@pytest.mark.parametrize(("outcome", "profile_id"), [
    (Outcome.UPDATED, None), (Outcome.CONFLICT, PROFILE), (Outcome.REJECTED, PROFILE), (Outcome.INVALID, None),
    (Outcome.SKIPPED_NO_CONSENT, None),
])
def test_no_event_without_a_profile_this_service_synced(outcome, profile_id):
    result = verdict(synced(outcome, profile_id), EARNED)
    assert result is not None and result.outcome == EventOutcome.DROPPED_NO_PROFILE


def test_a_stale_snapshot_goes_by_the_customers_last_outcome_and_a_failed_sync_fails_its_events():
    assert verdict(synced(Outcome.STALE), EARNED, last_outcome="unchanged") is None
    refused = verdict(synced(Outcome.STALE), EARNED, last_outcome="conflict")
    assert refused is not None and refused.outcome == EventOutcome.DROPPED_NO_PROFILE
    failed = verdict(Synced("c-1", None, Outcome.FAILED, None), EARNED)
    assert failed is not None and failed.outcome == EventOutcome.FAILED


def test_a_message_carries_only_what_reads_as_an_event():
    assert carried([EARNED.to_json(), {"metric": "Placed Order"}, "junk"]) == (EARNED,)  # type: ignore[list-item]
