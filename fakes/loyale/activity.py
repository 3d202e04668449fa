"""Loyalty activity in the fake Loyale: transactions (earn, spend, balance changes, the two halves of a
points transfer), coupons linked to and used by customers, and levels. Every change is stored (the
list routes read it) and emits its webhook through the scheme's dispatcher.

Shapes, from Loyale's webhook docs: a transaction is a `TransactionResultView` (docs.loyale.io topic-2:
`id, value (string), monetaryValue, saleCurrency, couponsUsed, customerId, customer, transactionType,
outletId, outlet, pointValue, allocatedPointValue, cachedResultantPointValue, deleted, externalRefId,
description, transactionDate, isSendPointsAction, targetTransactionId, sourceTransactionId, levelId...`),
a customer's coupon a `CustomerCouponResultView` (topic-7: `coupon, id, customerId, usesLeft, favorite,
barCode, rewardId, createdDate, updatedDate, couponId, from, to, isUsed, isValid, customer`), a coupon a
`CouponResultView`. Topic 2 is sent for every transaction but Top-Up ones ("This is not triggered for
Top-Up transactions"), topic 6 when a coupon is linked to a customer, topic 7 when one is used, topic
10 for a transfer (`{sourceCustomerId, targetCustomerId}`, each the customer's view).

UNCONFIRMED, and what the fake does:
  * the list routes `GET /api/Transaction`, `/api/CustomerCoupon` and `/api/Coupon` (and `/{id}`),
    paged and filtered like `GET /api/Customer` (the docs name a `Transaction` controller only through
    `GET /api/Transaction/GainRate`);
  * spending is a `Redeem` (3) with a negative `pointValue`; a spend beyond the balance is refused;
    `monetaryValue` is points / 100 unless given (the scheme's `pointRedemptionPerCurrency` is 100);
    `allocatedPointValue` equals `pointValue`; the outlet view is `{id, name, schemeId, ...}`;
  * a transfer also stores one transaction per side (`isSendPointsAction`, linked by
    `sourceTransactionId`/`targetTransactionId`), each sent on topic 2 as well as the topic-10 event;
  * a coupon use bumps the customer coupon's `updatedDate`; `isUsed` turns true when no use is left;
    linking or using a coupon does not bump the customer's `updatedDate`;
  * with knob `levels_follow_points`, after a transaction the customer holds exactly the highest level
    whose `pointsThreshold` is at most the balance; a change bumps `updatedDate` and sends topic 1.
    A level held before keeps its `detailedLevels[].createdDate` (when it was reached).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fakes.loyale.state import (
    TOPIC_COUPON_LINK,
    TOPIC_COUPON_USE,
    TOPIC_TRANSACTION,
    TOPIC_TRANSFER,
    TOPIC_UPDATE,
    ControlError,
    FakeLoyale,
    Scheme,
    number_or_zero,
)
from fakes.loyale_data import format_datetime, parse_datetime

PURCHASE, REDEEM, TOP_UP = 0, 3, 5
TRANSACTION_TYPES = range(0, 7)   # LoyaleTransactionType: Purchase=0 ... Refund=4, TopUp=5, OnHold=6
POINTS_PER_CURRENCY = 100
_BASIC_CUSTOMER = ("id", "firstName", "lastName", "email", "areaCode", "mobileNumber", "barCode", "externalRefId",
                   "onHold", "additionalCustomerFields")


def _numeric(label: str, value: Any, *, required: bool = False) -> float | int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{label} must be a number")
    return value


def _text(label: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ControlError(400, f"{label} must be a string")
    return value


def _stamp(label: str, value: Any, default: str) -> str:
    """An explicit ISO-8601 time given to the control API, in Loyale's format; `default` when absent."""
    if value is None:
        return default
    try:
        return format_datetime(parse_datetime(str(value)))
    except ValueError:
        raise ControlError(400, f"{label} must be an ISO-8601 date-time") from None


def basic_customer(customer: Mapping[str, Any]) -> dict[str, Any]:
    """`BasicCustomerModel`, the customer as a transaction or a coupon carries it."""
    return {name: customer.get(name) for name in _BASIC_CUSTOMER}


def outlet(scheme: Scheme, name_or_id: str, actor: str, stamp: str) -> dict[str, Any]:
    """The scheme's outlet with this id or name, made on first use."""
    for existing in scheme.outlets.values():
        if name_or_id in (existing["id"], existing["name"]):
            return existing
    made = {"id": str(uuid.uuid4()), "name": name_or_id, "schemeId": scheme.id, "createdDate": stamp,
            "updatedDate": stamp, "createdBy": actor, "updatedBy": actor}
    scheme.outlets[made["id"]] = made
    return made


# ---- balances and transactions -----------------------------------------------------------------------


def _move_balance(fake: FakeLoyale, scheme: Scheme, customer: dict[str, Any], actor: str, points: float,
                  monetary: float, stamp: str) -> float:
    """Add to the balance, stamp lastTransactionDate; returns the points balance after."""
    old = customer.get("balance") if isinstance(customer.get("balance"), dict) else {}
    after = number_or_zero(old.get("pointsValue")) + points
    customer["balance"] = {"pointsValue": after,
                           "monetaryValue": round(number_or_zero(old.get("monetaryValue")) + monetary, 6)}
    customer["lastTransactionDate"] = stamp
    fake.touch(scheme, customer, actor, bump=fake.knobs.balance_bumps_updated_date)
    return after


def _transaction(scheme: Scheme, customer: dict[str, Any], actor: str, stamp: str, *, points: float,
                 monetary: float, kind: int, balance_after: float, when: str, value: str | None,
                 currency: str | None, place: dict[str, Any] | None, external_ref: str | None,
                 description: str | None, coupons: Sequence[dict[str, Any]] = (),
                 send_points: bool = False) -> dict[str, Any]:
    levels = customer.get("Levels") if isinstance(customer.get("Levels"), list) else []
    return {
        "id": str(uuid.uuid4()), "value": value, "monetaryValue": monetary, "saleCurrency": currency,
        "lineItems": [], "couponsUsed": [dict(c) for c in coupons],
        "customerId": str(customer.get("id")), "customer": basic_customer(customer), "transactionType": kind,
        "posId": None, "posType": None, "outletId": place["id"] if place else None, "outlet": place,
        "pointValue": points, "allocatedPointValue": points, "cachedResultantPointValue": balance_after,
        "deleted": False, "externalRefId": external_ref, "description": description, "transactionDate": when,
        "createdBy": actor, "createdDate": stamp, "updatedBy": actor, "updatedDate": stamp, "schemeId": scheme.id,
        "isSplitted": False, "splittedBetween": [], "isSendPointsAction": send_points,
        "targetTransactionId": None, "sourceTransactionId": None, "hidden": False, "groupId": None,
        "levelId": next((lv.get("levelId") for lv in levels if isinstance(lv, dict)), None),
    }


def _store(fake: FakeLoyale, scheme: Scheme, transaction: dict[str, Any]) -> None:
    scheme.transactions[transaction["id"]] = transaction
    scheme.changed()
    if transaction["transactionType"] != TOP_UP:
        fake.emit(scheme, TOPIC_TRANSACTION, transaction, transaction["customerId"],
                  f"Transaction Id: {transaction['id']}")


def add_transaction(fake: FakeLoyale, scheme: Scheme, customer_id: str, actor: str, *, points: Any,
                    monetary: Any = None, value: Any = None, currency: Any = None, kind: Any = None,
                    outlet_name: Any = None, external_ref: Any = None, description: Any = None,
                    transaction_date: Any = None, coupons_used: Any = None) -> dict[str, Any]:
    """A customer's transaction: points earned (> 0) or spent (< 0), its money, outlet and reference.
    Uses the customer coupons named in `coupons_used` (topic 7 each, after the transaction's topic 2)."""
    points = _numeric("points", points, required=True)
    assert points is not None
    monetary = _numeric("monetary", monetary)
    sale = _numeric("value", value)
    if kind is not None and (isinstance(kind, bool) or kind not in TRANSACTION_TYPES):
        raise ControlError(400, "kind must be a LoyaleTransactionType (0-6)")
    currency, external_ref, description = (_text("currency", currency), _text("external_ref", external_ref),
                                           _text("description", description))
    outlet_name = _text("outlet", outlet_name)
    if coupons_used is not None and not (isinstance(coupons_used, list)
                                         and all(isinstance(c, str) for c in coupons_used)):
        raise ControlError(400, "coupons_used must be a list of customer coupon ids")
    _, customer = fake.require_customer(scheme, customer_id)
    coupons = [_customer_coupon(scheme, cc_id, str(customer.get("id"))) for cc_id in coupons_used or []]
    for cc in coupons:
        if cc["usesLeft"] <= 0:
            raise ControlError(409, f"customer coupon {cc['id']} has no use left")
    balance = number_or_zero((customer.get("balance") or {}).get("pointsValue")) \
        if isinstance(customer.get("balance"), dict) else 0
    if points < 0 and balance + points < 0:
        raise ControlError(409, f"customer {customer_id} holds {balance} points, cannot spend {-points}")
    stamp = format_datetime(fake.now())
    when = _stamp("transaction_date", transaction_date, stamp)
    money = monetary if monetary is not None else round(points / POINTS_PER_CURRENCY, 6)
    after = _move_balance(fake, scheme, customer, actor, points, money, stamp)
    place = outlet(scheme, outlet_name, actor, stamp) if outlet_name else None
    transaction = _transaction(
        scheme, customer, actor, stamp, points=points, monetary=money,
        kind=kind if kind is not None else (REDEEM if points < 0 else PURCHASE), balance_after=after, when=when,
        value=None if sale is None else f"{sale:.2f}", currency=currency or "EUR", place=place,
        external_ref=external_ref, description=description, coupons=[cc["coupon"] for cc in coupons])
    _store(fake, scheme, transaction)
    follow_points(fake, scheme, customer, actor)
    for cc in coupons:
        _use(fake, scheme, cc, actor)
    return transaction


def change_balance(fake: FakeLoyale, scheme: Scheme, customer_id: str, actor: str, *, points: Any = None,
                   monetary: Any = None, points_delta: Any = None, monetary_delta: Any = None) -> dict[str, Any]:
    """A balance change by a transaction (stored, topic 2): absolute values and/or deltas."""
    for label, raw in (("points", points), ("monetary", monetary), ("points_delta", points_delta),
                       ("monetary_delta", monetary_delta)):
        _numeric(label, raw)
    _, customer = fake.require_customer(scheme, customer_id)
    old = customer.get("balance") if isinstance(customer.get("balance"), dict) else {}
    old_points, old_money = number_or_zero(old.get("pointsValue")), number_or_zero(old.get("monetaryValue"))
    new_points = points if points is not None else old_points + (points_delta or 0)
    new_money = monetary if monetary is not None else old_money + (monetary_delta or 0)
    stamp = format_datetime(fake.now())
    delta, money = new_points - old_points, round(new_money - old_money, 6)
    _move_balance(fake, scheme, customer, actor, delta, money, stamp)
    customer["balance"] = {"pointsValue": new_points, "monetaryValue": new_money}   # exact, as asked
    _store(fake, scheme, _transaction(
        scheme, customer, actor, stamp, points=delta, monetary=money, kind=PURCHASE if delta >= 0 else REDEEM,
        balance_after=new_points, when=stamp, value=None, currency="EUR", place=None, external_ref=None,
        description=None))
    follow_points(fake, scheme, customer, actor)
    return customer


def transfer(fake: FakeLoyale, scheme: Scheme, source_id: str, target_id: str, points: Any, actor: str
             ) -> dict[str, Any]:
    """Move points between two customers: a transaction on each side (topic 2 each), one topic-10 event."""
    amount = _numeric("points", points, required=True)
    assert amount is not None
    _, source = fake.require_customer(scheme, source_id)
    _, target = fake.require_customer(scheme, target_id)
    stamp = format_datetime(fake.now())
    halves = []
    for customer, delta in ((source, -amount), (target, amount)):
        after = _move_balance(fake, scheme, customer, actor, delta, 0, stamp)
        halves.append(_transaction(scheme, customer, actor, stamp, points=delta, monetary=0, kind=PURCHASE,
                                   balance_after=after, when=stamp, value=None, currency="EUR", place=None,
                                   external_ref=None, description="Transfer of points", send_points=True))
    sent, received = halves
    for half in halves:
        half["sourceTransactionId"], half["targetTransactionId"] = sent["id"], received["id"]
        _store(fake, scheme, half)
    payload = {"sourceCustomerId": source, "targetCustomerId": target, "createdDate": stamp,
               "updatedDate": stamp, "createdBy": actor, "updatedBy": actor}
    fake.emit(scheme, TOPIC_TRANSFER, payload, str(source.get("id")),
              f"Target Customer Id: {target.get('id')}, Source Customer Id: {source.get('id')}")
    for customer in (source, target):
        follow_points(fake, scheme, customer, actor)
    return {"source": source, "target": target}


# ---- levels ------------------------------------------------------------------------------------------


def assign_levels(scheme: Scheme, customer: dict[str, Any], level_ids: Sequence[str], stamp: str) -> None:
    """Hold exactly `level_ids`; a level held before keeps when it was reached."""
    cid = str(customer.get("id"))
    before = {d.get("levelId"): d for d in customer.get("detailedLevels") or [] if isinstance(d, dict)}
    customer["Levels"] = [{"customerId": cid, "levelId": i} for i in level_ids]
    customer["detailedLevels"] = [
        before[i] if i in before else {"levelId": i, "tierId": str(uuid.uuid4()), "schemeId": scheme.id,
                                       "createdDate": stamp, "updatedDate": stamp}
        for i in level_ids]


def set_levels(fake: FakeLoyale, scheme: Scheme, customer_id: str, level_ids: Any, actor: str) -> dict[str, Any]:
    known = {lv["id"] for lv in scheme.levels}
    if not isinstance(level_ids, list) or not all(isinstance(i, str) and i in known for i in level_ids):
        raise ControlError(400, f"level_ids must be a list of this scheme's level ids: {sorted(known)}")
    _, customer = fake.require_customer(scheme, customer_id)
    assign_levels(scheme, customer, level_ids, format_datetime(fake.now()))
    fake.touch(scheme, customer, actor)
    fake.emit_customer(scheme, TOPIC_UPDATE, customer)
    return customer


def level_for(scheme: Scheme, points: float) -> str | None:
    """The highest level whose `pointsThreshold` the balance reaches."""
    reached = [lv for lv in scheme.levels if isinstance(lv.get("pointsThreshold"), int | float)
               and lv["pointsThreshold"] <= points]
    return max(reached, key=lambda lv: lv["pointsThreshold"])["id"] if reached else None


def follow_points(fake: FakeLoyale, scheme: Scheme, customer: dict[str, Any], actor: str) -> bool:
    """Knob `levels_follow_points`: move the customer to the level their balance reaches (topic 1)."""
    if not fake.knobs.levels_follow_points:
        return False
    balance = customer.get("balance") if isinstance(customer.get("balance"), dict) else {}
    target = level_for(scheme, number_or_zero(balance.get("pointsValue")))
    wanted = [target] if target else []
    held = [lv.get("levelId") for lv in customer.get("Levels") or [] if isinstance(lv, dict)]
    if held == wanted:
        return False
    assign_levels(scheme, customer, wanted, format_datetime(fake.now()))
    fake.touch(scheme, customer, actor)
    fake.emit_customer(scheme, TOPIC_UPDATE, customer)
    return True


# ---- coupons -----------------------------------------------------------------------------------------


def define_coupon(fake: FakeLoyale, scheme: Scheme, actor: str, *, name: Any, uses: Any = 1, description: Any = None,
                  valid_from: Any = None, valid_to: Any = None, external_reference: Any = None) -> dict[str, Any]:
    """A coupon of the scheme (`CouponResultView`)."""
    if not isinstance(name, str) or not name.strip():
        raise ControlError(400, "name must be a non-empty string")
    if isinstance(uses, bool) or not isinstance(uses, int) or uses < 1:
        raise ControlError(400, "uses must be a positive integer")
    stamp = format_datetime(fake.now())
    until = _stamp("valid_to", valid_to, "") or None
    coupon = {
        "id": str(uuid.uuid4()), "schemeId": scheme.id, "name": name, "description": _text("description", description),
        "valid": True, "initialNumberOfUses": uses, "from": _stamp("valid_from", valid_from, stamp), "to": until,
        "until": until, "imageUrl": None, "updatedDate": stamp, "createdDate": stamp, "outletId": [],
        "externalReference": _text("external_reference", external_reference), "platform": None,
        "isDyanmic": False, "dynamicDays": None, "createdBy": actor, "updatedBy": actor,
    }
    scheme.coupons[coupon["id"]] = coupon
    scheme.changed()
    return coupon


def issue_coupon(fake: FakeLoyale, scheme: Scheme, customer_id: str, actor: str, *, coupon_id: Any = None,
                 name: Any = None, uses: Any = 1) -> dict[str, Any]:
    """Link a coupon to a customer (topic 6): the scheme's coupon `coupon_id`, or a new one named `name`."""
    _, customer = fake.require_customer(scheme, customer_id)
    if coupon_id is not None:
        coupon = scheme.coupons.get(str(coupon_id))
        if coupon is None:
            raise ControlError(404, f"unknown coupon {coupon_id!r} in scheme {scheme.id}")
    else:
        coupon = define_coupon(fake, scheme, actor, name=name, uses=uses)
    stamp = format_datetime(fake.now())
    cc = {
        "coupon": dict(coupon), "id": str(uuid.uuid4()), "customerId": str(customer.get("id")),
        "usesLeft": coupon["initialNumberOfUses"], "favorite": False,
        "barCode": f"{fake.rng.getrandbits(40):013d}", "rewardId": None, "createdDate": stamp, "updatedDate": stamp,
        "couponId": coupon["id"], "from": coupon["from"] or stamp, "to": coupon["to"], "isUsed": False,
        "createdBy": actor, "updatedBy": actor, "isValid": True, "customer": basic_customer(customer),
    }
    scheme.customer_coupons[cc["id"]] = cc
    scheme.changed()
    fake.emit(scheme, TOPIC_COUPON_LINK, cc, cc["customerId"], f"Customer Coupon Id: {cc['id']}")
    return cc


def _customer_coupon(scheme: Scheme, cc_id: str, customer_id: str | None = None) -> dict[str, Any]:
    cc = scheme.customer_coupons.get(cc_id)
    if cc is None or (customer_id is not None and cc["customerId"] != customer_id):
        raise ControlError(404, f"unknown customer coupon {cc_id!r}" + (f" of customer {customer_id}"
                                                                         if customer_id else ""))
    return cc


def _use(fake: FakeLoyale, scheme: Scheme, cc: dict[str, Any], actor: str) -> dict[str, Any]:
    cc["usesLeft"] -= 1
    cc["isUsed"] = cc["usesLeft"] <= 0
    cc["isValid"] = not cc["isUsed"]
    cc["updatedDate"] = fake.next_stamp(cc.get("updatedDate"))
    cc["updatedBy"] = actor
    scheme.changed()
    fake.emit(scheme, TOPIC_COUPON_USE, cc, cc["customerId"], f"Customer Coupon Id: {cc['id']}")
    return cc


def use_coupon(fake: FakeLoyale, scheme: Scheme, customer_coupon_id: str, actor: str) -> dict[str, Any]:
    """One use of a customer's coupon (topic 7); refused when no use is left."""
    cc = _customer_coupon(scheme, customer_coupon_id)
    if cc["usesLeft"] <= 0:
        raise ControlError(409, f"customer coupon {customer_coupon_id} has no use left")
    return _use(fake, scheme, cc, actor)
