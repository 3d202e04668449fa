"""Loyale facts as Klaviyo events (`worker.events`): pure, against the shapes Loyale documents
(TransactionResultView, CustomerCouponResultView, topic 10, the customer of topics 0 and 3) and the
bodies Klaviyo's spec takes (`EventCreateQueryV2`, `EventsBulkCreateJob`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource

from fakes.klaviyo.config import default_spec_path
from worker import events as ev
from worker.events import LoyaltyEvent, NoEvent

PROFILE = "01KPROFILE0000000000000001"
T1 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)


def transaction(**overrides: Any) -> dict[str, Any]:
    tx: dict[str, Any] = {
        "id": "tx-1", "customerId": "c-1", "schemeId": "s-1", "transactionType": 0, "pointValue": 120,
        "allocatedPointValue": 120, "cachedResultantPointValue": 1320, "monetaryValue": 1.2, "value": "24.50",
        "saleCurrency": "eur", "outletId": "o-1", "outlet": {"id": "o-1", "name": "Valletta"},
        "externalRefId": "ORDER-77", "description": "Shoes", "deleted": False,
        "transactionDate": "2026-03-01T10:00:00Z", "createdDate": "2026-03-01T10:00:05Z",
    }
    tx.update(overrides)
    return tx


def customer_coupon(**overrides: Any) -> dict[str, Any]:
    cc: dict[str, Any] = {
        "id": "cc-1", "customerId": "c-1", "couponId": "k-1", "usesLeft": 1, "barCode": "CODE42", "isUsed": False,
        "from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z",
        "createdDate": "2026-03-01T10:00:00Z", "updatedDate": "2026-03-02T09:00:00Z",
        "coupon": {"id": "k-1", "name": "10% off", "description": "Any shoe", "initialNumberOfUses": 1},
    }
    cc.update(overrides)
    return cc


# --- transactions --------------------------------------------------------------------------------

def test_a_positive_transaction_is_points_earned_with_loyales_id_time_and_money():
    event = ev.from_transaction(transaction())
    assert isinstance(event, LoyaltyEvent)
    assert (event.metric, event.customer_id, event.unique_id) == (ev.POINTS_EARNED, "c-1", "loyale-transaction-tx-1")
    assert event.time == T1                       # transactionDate, not createdDate, not now
    assert (event.value, event.value_currency) == (1.2, "EUR")
    assert event.properties == {
        "Points": 120, "Points Balance": 1320, "Monetary Value": 1.2, "Sale Value": 24.5, "Currency": "EUR",
        "Outlet Id": "o-1", "Outlet": "Valletta", "Reference": "ORDER-77", "Description": "Shoes",
        "Transaction Id": "tx-1", "Transaction Type": "Purchase"}


def test_negative_points_and_a_redemption_are_points_spent_counted_as_positive_points():
    spent = ev.from_transaction(transaction(pointValue=-50, cachedResultantPointValue=1270, transactionType=2))
    redeemed = ev.from_transaction(transaction(pointValue=50, transactionType=3, monetaryValue=-0.5))
    assert isinstance(spent, LoyaltyEvent) and isinstance(redeemed, LoyaltyEvent)
    assert (spent.metric, spent.properties["Points"], spent.properties["Transaction Type"]) == \
        (ev.POINTS_SPENT, 50, "NegativeAdjustment")
    assert (redeemed.metric, redeemed.properties["Points"], redeemed.value) == (ev.POINTS_SPENT, 50, 0.5)


@pytest.mark.parametrize(("overrides", "why"), [
    ({"pointValue": 0}, "moves no points"),
    ({"pointValue": "NaN"}, "moves no points"),
    ({"transactionType": 6}, "on hold"),
    ({"deleted": True}, "deleted"),
    ({"isSendPointsAction": True}, "points transfer"),
    ({"id": None}, "without an id"),
    ({"customerId": ""}, "without an id"),
    ({"transactionDate": None, "createdDate": None}, "no date"),
])
def test_a_transaction_that_is_no_event_says_why(overrides, why):
    result = ev.from_transaction(transaction(**overrides))
    assert isinstance(result, NoEvent) and why in result.reason


def test_a_transaction_reads_numbers_given_as_text_and_falls_back_to_its_creation_date():
    event = ev.from_transaction(transaction(pointValue="75", transactionDate=None, saleCurrency="euro",
                                            monetaryValue=None, outlet=None, couponsUsed=[{"name": "Welcome"}]))
    assert isinstance(event, LoyaltyEvent)
    assert event.properties["Points"] == 75 and event.time == datetime(2026, 3, 1, 10, 0, 5, tzinfo=UTC)
    assert event.value is None and "Currency" not in event.properties and "Outlet" not in event.properties
    assert event.properties["Coupons Used"] == ["Welcome"]


def test_the_same_transaction_read_twice_makes_the_same_event():
    assert ev.from_transaction(transaction()) == ev.from_transaction(json.loads(json.dumps(transaction())))


# --- coupons ---------------------------------------------------------------------------------------

def test_a_coupon_issued_is_once_per_customer_coupon_at_its_creation():
    event = ev.coupon_issued(customer_coupon())
    assert isinstance(event, LoyaltyEvent)
    assert (event.metric, event.unique_id, event.time) == (ev.COUPON_ISSUED, "loyale-coupon-cc-1-issued", T1)
    assert event.properties == {"Coupon Id": "k-1", "Coupon Name": "10% off", "Coupon Description": "Any shoe",
                                "Customer Coupon Id": "cc-1", "Coupon Code": "CODE42", "Uses Left": 1,
                                "Valid From": "2026-03-01T00:00:00+00:00", "Valid To": "2026-04-01T00:00:00+00:00"}


def test_a_coupon_read_after_a_use_is_issued_with_all_its_uses():
    event = ev.coupon_issued(customer_coupon(usesLeft=0, isUsed=True))
    assert isinstance(event, LoyaltyEvent) and event.properties["Uses Left"] == 1


def test_each_use_of_a_coupon_is_its_own_event_and_a_redelivered_use_the_same():
    first = ev.coupon_used(customer_coupon(usesLeft=2))
    again = ev.coupon_used(customer_coupon(usesLeft=2))
    second = ev.coupon_used(customer_coupon(usesLeft=1, updatedDate="2026-03-03T09:00:00Z"))
    assert isinstance(first, LoyaltyEvent) and isinstance(second, LoyaltyEvent) and first == again
    assert first.metric == ev.COUPON_USED and first.unique_id != second.unique_id
    untold = ev.coupon_used(customer_coupon(usesLeft=None))
    assert isinstance(untold, LoyaltyEvent) and untold.unique_id.startswith("loyale-coupon-cc-1-used-at-")


def test_a_coupon_shows_a_use_by_its_flag_or_by_fewer_uses_left_than_it_started_with():
    assert ev.coupon_was_used(customer_coupon(isUsed=True))
    assert not ev.coupon_was_used(customer_coupon(usesLeft=1))
    assert ev.coupon_was_used(customer_coupon(usesLeft=0))
    assert not ev.coupon_was_used(customer_coupon(usesLeft=None, coupon=None))


# --- transfer, membership ------------------------------------------------------------------------

def test_a_transfer_is_an_event_for_each_side():
    payload = {"sourceCustomerId": {"id": "c-1", "balance": {"pointsValue": 900}},
               "targetCustomerId": {"id": "c-2", "balance": {"pointsValue": 300.0}},
               "createdDate": "2026-03-01T10:00:00Z"}
    sent, received = ev.from_transfer(payload)
    assert isinstance(sent, LoyaltyEvent) and isinstance(received, LoyaltyEvent)
    assert (sent.customer_id, sent.properties) == ("c-1", {"Direction": "sent", "Other Customer Id": "c-2",
                                                            "Points Balance": 900})
    assert (received.customer_id, received.properties["Direction"], received.properties["Points Balance"]) == \
        ("c-2", "received", 300)
    assert sent.metric == received.metric == ev.POINTS_TRANSFERRED and sent.time == T1
    assert sent.unique_id != received.unique_id and ev.from_transfer(payload) == [sent, received]
    assert isinstance(ev.from_transfer({"sourceCustomerId": "c-1", "targetCustomerId": "c-2"})[0], NoEvent)


def test_joining_and_leaving_are_timed_by_the_webhooks_customer():
    joined = ev.membership({"id": "c-1", "updatedDate": "2026-03-01T10:00:00Z"}, joined=True, scheme_id="s-1")
    left = ev.membership({"id": "c-1", "updatedDate": "2026-03-01T10:00:00Z"}, joined=False)
    assert isinstance(joined, LoyaltyEvent) and isinstance(left, LoyaltyEvent)
    assert (joined.metric, joined.time, joined.properties) == (ev.JOINED_SCHEME, T1, {"Scheme Id": "s-1"})
    assert left.metric == ev.LEFT_SCHEME and left.unique_id != joined.unique_id
    assert isinstance(ev.membership({"id": "c-1"}, joined=True), NoEvent)


# --- levels ----------------------------------------------------------------------------------------

def test_levels_reached_and_lost_against_the_levels_last_synced():
    reached_at = {"Gold": datetime(2026, 3, 1, 9, tzinfo=UTC)}
    changes = ev.level_changes("c-1", ["Silver"], ["Gold"], reached_at, T1)
    assert [(e.metric, e.properties["Level"], e.time) for e in changes] == [
        (ev.LEVEL_REACHED, "Gold", reached_at["Gold"]), (ev.LEVEL_LOST, "Silver", T1)]
    assert changes[0].properties["Levels"] == ["Gold"] and changes[0].properties["Previous Levels"] == ["Silver"]
    assert ev.level_changes("c-1", ["Silver"], ["Gold"], reached_at, T1) == changes   # same change, same ids


def test_no_level_event_on_a_first_sync_or_without_a_change():
    assert ev.level_changes("c-1", None, ["Gold"], {}, T1) == []
    assert ev.level_changes("c-1", ["Gold"], ["Gold"], {}, T1) == []
    assert [e.time for e in ev.level_changes("c-1", [], ["Gold"], {}, T1)] == [T1]


def test_a_level_reached_again_later_is_a_new_event():
    first = ev.level_changes("c-1", [], ["Gold"], {"Gold": T1}, T1)[0]
    later = datetime(2026, 5, 1, tzinfo=UTC)
    again = ev.level_changes("c-1", [], ["Gold"], {"Gold": later}, later)[0]
    assert first.unique_id != again.unique_id


# --- the queue and Klaviyo's bodies ------------------------------------------------------------------

def test_an_event_travels_as_json_and_anything_else_reads_as_none():
    event = ev.from_transaction(transaction())
    assert isinstance(event, LoyaltyEvent)
    assert LoyaltyEvent.from_json(json.loads(json.dumps(event.to_json()))) == event
    assert LoyaltyEvent.from_json({"metric": "Placed Order", "customer_id": "c", "unique_id": "u",
                                   "time": "2026-01-01T00:00:00Z"}) is None
    assert LoyaltyEvent.from_json({"metric": ev.POINTS_EARNED}) is None


def test_the_profile_is_named_by_its_id_alone():
    event = ev.from_transaction(transaction())
    assert isinstance(event, LoyaltyEvent)
    body = ev.event_body(event, PROFILE)
    attributes = body["data"]["attributes"]
    assert attributes["profile"] == {"data": {"type": "profile", "id": PROFILE, "attributes": {}}}
    assert attributes["unique_id"] == "loyale-transaction-tx-1" and attributes["time"] == "2026-03-01T10:00:00+00:00"
    assert attributes["metric"]["data"]["attributes"]["name"] == ev.POINTS_EARNED


def test_bulk_entries_hold_each_profiles_events_in_time_order():
    early = LoyaltyEvent(ev.POINTS_EARNED, "c-1", "a", T1, {"Points": 1})
    late = LoyaltyEvent(ev.POINTS_SPENT, "c-1", "b", datetime(2026, 3, 2, tzinfo=UTC), {"Points": 1})
    other = LoyaltyEvent(ev.POINTS_EARNED, "c-2", "c", T1, {"Points": 1})
    entries = ev.bulk_entries([(PROFILE, late), ("01KOTHER", other), (PROFILE, early)])
    assert [e["attributes"]["profile"]["data"]["id"] for e in entries] == [PROFILE, "01KOTHER"]
    assert [x["attributes"]["unique_id"] for x in entries[0]["attributes"]["events"]["data"]] == ["a", "b"]


SPEC = default_spec_path()


@pytest.mark.skipif(not SPEC.exists(), reason=f"Klaviyo's OpenAPI spec is not at {SPEC}")
def test_the_bodies_are_what_klaviyos_spec_takes():
    spec = json.loads(SPEC.read_text())
    registry: Registry = Registry().with_resource("spec", Resource.opaque(spec))

    def validator(name: str) -> OAS30Validator:
        return OAS30Validator({"$ref": f"spec#/components/schemas/{name}"}, registry=registry)

    made = [ev.from_transaction(transaction()), ev.coupon_used(customer_coupon()), *ev.from_transfer(
        {"sourceCustomerId": {"id": "c-1"}, "targetCustomerId": {"id": "c-2"}, "createdDate": "2026-03-01T10:00:00Z"}),
        *ev.level_changes("c-1", ["Silver"], ["Gold"], {}, T1)]
    events = [e for e in made if isinstance(e, LoyaltyEvent)]
    assert len(events) == len(made)
    for event in events:
        validator("EventCreateQueryV2").validate(ev.event_body(event, PROFILE))
    job = {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {
        "data": ev.bulk_entries((PROFILE, e) for e in events)}}}}
    validator("EventsBulkCreateJob").validate(job)
