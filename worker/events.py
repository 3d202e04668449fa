"""Loyalty events: Loyale's facts (a transaction, a customer's coupon, a level change, a points
transfer, joining or leaving the scheme) as Klaviyo events. Pure: no I/O, no Klaviyo client.

Every event carries
  metric     one of `METRICS` (`Loyale Points Earned`, ...), the name flows are built on;
  time       Loyale's own timestamp of the fact (never the time we send it), so Klaviyo orders a
             customer's events as Loyale did;
  unique_id  built from Loyale's own id of the fact (the transaction's id, the customer coupon's id,
             the customer + level + the time the level was reached...): Klaviyo records an event once
             per (profile, metric, unique_id), so a webhook delivered twice, a retried task or a
             catch-up pass that reads the same transaction again never makes a second event;
  value      where the fact is money (a transaction's monetary value), with its currency when given.

A fact that cannot be an event (no id to make it unique, no timestamp, zero points, a transaction on
hold) is `NoEvent` with the reason, never an event made up from defaults. Which facts Loyale sends is
in ../shared/reference/loyale-api.md (topics 2, 6, 7, 10, 0, 3); what is UNCONFIRMED there is read
the safe way round and named where it is read.

The profile is named by its Klaviyo id only (`event_body`, `bulk_entries`): an event that names an
email or a phone creates a profile when none holds it, and consent decides who has a profile
(`worker.event_sync`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.models import parse_datetime

POINTS_EARNED = "Loyale Points Earned"
POINTS_SPENT = "Loyale Points Spent"
LEVEL_REACHED = "Loyale Level Reached"
LEVEL_LOST = "Loyale Level Lost"
COUPON_ISSUED = "Loyale Coupon Issued"
COUPON_USED = "Loyale Coupon Used"
POINTS_TRANSFERRED = "Loyale Points Transferred"
JOINED_SCHEME = "Loyale Joined Scheme"
LEFT_SCHEME = "Loyale Left Scheme"
METRICS = (POINTS_EARNED, POINTS_SPENT, LEVEL_REACHED, LEVEL_LOST, COUPON_ISSUED, COUPON_USED,
           POINTS_TRANSFERRED, JOINED_SCHEME, LEFT_SCHEME)

#: Loyale's `LoyaleTransactionType` (docs.loyale.io/reference/enums), for the `Transaction Type` property.
TRANSACTION_TYPES = {0: "Purchase", 1: "PositiveAdjustment", 2: "NegativeAdjustment", 3: "Redeem", 4: "Refund",
                     5: "TopUp", 6: "OnHold"}
REDEEM, ON_HOLD = 3, 6


@dataclass(frozen=True)
class LoyaltyEvent:
    """One event for one Loyale customer, ready to be sent once the customer's profile id is known."""

    metric: str
    customer_id: str
    unique_id: str
    time: datetime
    properties: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    value: float | None = None
    value_currency: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As it travels on the queue (`from_json` reads it back)."""
        data: dict[str, Any] = {"metric": self.metric, "customer_id": self.customer_id, "unique_id": self.unique_id,
                                "time": self.time.isoformat(), "properties": self.properties}
        if self.value is not None:
            data["value"] = self.value
        if self.value_currency:
            data["value_currency"] = self.value_currency
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoyaltyEvent | None:
        """The event a message carries, or None if it is not one (a message of another version)."""
        time = parse_datetime(data.get("time"))
        metric, customer_id, unique_id = data.get("metric"), data.get("customer_id"), data.get("unique_id")
        if time is None or metric not in METRICS or not isinstance(customer_id, str) or not isinstance(unique_id, str):
            return None
        properties = data.get("properties")
        return cls(metric, customer_id, unique_id, time, dict(properties) if isinstance(properties, dict) else {},
                   _number(data.get("value")), _text(data.get("value_currency")))


@dataclass(frozen=True)
class NoEvent:
    """A fact that makes no event, and why."""

    reason: str


Derived = LoyaltyEvent | NoEvent


# --- reading Loyale's values ----------------------------------------------------------------------

def _number(value: Any) -> float | None:
    """A finite number from a JSON number or a numeric string; None for anything else."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, int | float) else float(str(value).strip())
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _plain(number: float) -> int | float:
    """120.0 -> 120: points read as Loyale wrote them, not as floats."""
    return int(number) if number.is_integer() and abs(number) < 2 ** 53 else number


def _stamp(raw: Mapping[str, Any], *names: str) -> datetime | None:
    for name in names:
        if (moment := parse_datetime(raw.get(name))) is not None:
            return moment
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _currency(value: Any) -> str | None:
    text = _text(value)
    return text.upper() if text and len(text) == 3 and text.isalpha() else None


def _properties(**values: Any) -> dict[str, Any]:
    """Properties named as Klaviyo shows them ("Points Balance"), only those Loyale gave a value."""
    return {name.replace("_", " "): value for name, value in values.items() if value is not None and value != ""}


# --- transactions (topic 2, and the catch-up read of transactions) --------------------------------

def from_transaction(tx: Mapping[str, Any]) -> Derived:
    """`Loyale Points Earned` or `Loyale Points Spent` from a `TransactionResultView`.

    Spent: a negative `pointValue`, or a `Redeem` whatever its sign (the sign Loyale gives a redemption
    is UNCONFIRMED). Earned: a positive `pointValue`. No event: zero points, a transaction on hold (its
    points are not the customer's yet), a deleted one, and the two halves of a points transfer
    (`isSendPointsAction`: the transfer is its own event, from topic 10)."""
    tx_id, customer_id = _text(tx.get("id")), _text(tx.get("customerId"))
    if tx_id is None or customer_id is None:
        return NoEvent("a transaction without an id or a customerId")
    if tx.get("deleted") is True:
        return NoEvent(f"transaction {tx_id} is deleted")
    if tx.get("isSendPointsAction") is True:
        return NoEvent(f"transaction {tx_id} is part of a points transfer (sent as Loyale Points Transferred)")
    kind = tx.get("transactionType")
    kind = kind if isinstance(kind, int) and not isinstance(kind, bool) else None
    if kind == ON_HOLD:
        return NoEvent(f"transaction {tx_id} is on hold")
    points = _number(tx.get("pointValue"))
    if points is None or points == 0:
        return NoEvent(f"transaction {tx_id} moves no points")
    time = _stamp(tx, "transactionDate", "createdDate", "updatedDate")
    if time is None:
        return NoEvent(f"transaction {tx_id} has no date")
    spent = points < 0 or kind == REDEEM
    money = _number(tx.get("monetaryValue"))
    outlet = tx.get("outlet")
    coupons = [name for c in tx.get("couponsUsed") or [] if isinstance(c, dict) and (name := _text(c.get("name")))] \
        if isinstance(tx.get("couponsUsed"), list) else []
    properties = _properties(
        Points=_plain(abs(points)),
        Points_Balance=_plain(after) if (after := _number(tx.get("cachedResultantPointValue"))) is not None else None,
        Monetary_Value=abs(money) if money is not None else None,
        Sale_Value=_number(tx.get("value")),
        Currency=_currency(tx.get("saleCurrency")),
        Outlet_Id=_text(tx.get("outletId")),
        Outlet=_text(outlet.get("name")) if isinstance(outlet, dict) else None,
        Reference=_text(tx.get("externalRefId")),
        Description=_text(tx.get("description")),
        Transaction_Id=tx_id,
        Transaction_Type=TRANSACTION_TYPES.get(kind) if kind is not None else None,
        Coupons_Used=coupons or None,
    )
    return LoyaltyEvent(POINTS_SPENT if spent else POINTS_EARNED, customer_id, f"loyale-transaction-{tx_id}", time,
                        properties, abs(money) if money else None, _currency(tx.get("saleCurrency")))


# --- coupons (topics 6 and 7, and the catch-up read of customer coupons) --------------------------

def _coupon_properties(cc: Mapping[str, Any], cc_id: str, *, issued: bool = False) -> dict[str, Any]:
    coupon = _object(cc.get("coupon"))
    # When issued, a coupon has all its uses (a catch-up may read it after a use).
    uses_left = (_number(coupon.get("initialNumberOfUses")) if issued else None) or _number(cc.get("usesLeft"))
    valid_to = _stamp(cc, "to") or _stamp(coupon, "to", "until")
    valid_from = _stamp(cc, "from") or _stamp(coupon, "from")
    return _properties(
        Coupon_Id=_text(cc.get("couponId")) or _text(coupon.get("id")),
        Coupon_Name=_text(coupon.get("name")),
        Coupon_Description=_text(coupon.get("description")),
        Customer_Coupon_Id=cc_id,
        Coupon_Code=_text(cc.get("barCode")),
        Uses_Left=_plain(uses_left) if uses_left is not None else None,
        Valid_From=_iso(valid_from) if valid_from else None,
        Valid_To=_iso(valid_to) if valid_to else None,
    )


def _coupon(cc: Mapping[str, Any], *dates: str) -> tuple[str, str, datetime] | NoEvent:
    """The customer coupon's id, its customer and the first of `dates` it has, or why there are none."""
    cc_id, customer_id = _text(cc.get("id")), _text(cc.get("customerId"))
    if cc_id is None or customer_id is None:
        return NoEvent("a customer coupon without an id or a customerId")
    time = _stamp(cc, *dates)
    return NoEvent(f"customer coupon {cc_id} has no date") if time is None else (cc_id, customer_id, time)


def coupon_issued(cc: Mapping[str, Any]) -> Derived:
    """`Loyale Coupon Issued` from a `CustomerCouponResultView` (a coupon linked to the customer): once
    per customer coupon, at its `createdDate`."""
    read = _coupon(cc, "createdDate", "updatedDate")
    if isinstance(read, NoEvent):
        return read
    cc_id, customer_id, time = read
    return LoyaltyEvent(COUPON_ISSUED, customer_id, f"loyale-coupon-{cc_id}-issued", time,
                        _coupon_properties(cc, cc_id, issued=True))


def coupon_used(cc: Mapping[str, Any]) -> Derived:
    """`Loyale Coupon Used` from a `CustomerCouponResultView` after a use, at its `updatedDate`.

    A coupon may have several uses: each use is its own event, told apart by the uses left after it
    (or, when Loyale gives no `usesLeft`, by the time of the use)."""
    read = _coupon(cc, "updatedDate", "createdDate")
    if isinstance(read, NoEvent):
        return read
    cc_id, customer_id, time = read
    uses_left = _number(cc.get("usesLeft"))
    use = f"left-{_plain(uses_left)}" if uses_left is not None else f"at-{int(time.timestamp() * 1_000_000)}"
    return LoyaltyEvent(COUPON_USED, customer_id, f"loyale-coupon-{cc_id}-used-{use}", time,
                        _coupon_properties(cc, cc_id))


def coupon_was_used(cc: Mapping[str, Any]) -> bool:
    """Whether a customer coupon read from Loyale's list shows a use: `isUsed`, or fewer uses left than
    the coupon started with (the meaning of `isUsed` for a coupon of several uses is UNCONFIRMED)."""
    if cc.get("isUsed") is True:
        return True
    coupon = _object(cc.get("coupon"))
    left, initial = _number(cc.get("usesLeft")), _number(coupon.get("initialNumberOfUses"))
    return left is not None and initial is not None and left < initial


# --- points transfer (topic 10) ---------------------------------------------------------------------

def _side_id(side: Any) -> str | None:
    return _text(side.get("id")) if isinstance(side, dict) else _text(side)


def _balance(side: Any) -> int | float | None:
    balance = side.get("balance") if isinstance(side, dict) else None
    points = _number(balance.get("pointsValue")) if isinstance(balance, dict) else None
    return _plain(points) if points is not None else None


def from_transfer(payload: Mapping[str, Any]) -> list[Derived]:
    """`Loyale Points Transferred` for each side of a transfer (topic 10: `{sourceCustomerId,
    targetCustomerId}`, each a customer, and the transfer's dates). Loyale's payload does not carry how
    many points moved: the events say who sent, who received and, where given, the balance after."""
    source, target = _side_id(payload.get("sourceCustomerId")), _side_id(payload.get("targetCustomerId"))
    if source is None or target is None:
        return [NoEvent("a points transfer without both customers")]
    time = _stamp(payload, "createdDate", "updatedDate")
    if time is None:
        return [NoEvent(f"the transfer from {source} to {target} has no date")]
    stamp = int(time.timestamp() * 1_000_000)
    made: list[Derived] = []
    for me, other, side, direction in ((source, target, payload.get("sourceCustomerId"), "sent"),
                                       (target, source, payload.get("targetCustomerId"), "received")):
        made.append(LoyaltyEvent(
            POINTS_TRANSFERRED, me, f"loyale-transfer-{source}-{target}-{stamp}-{direction}", time,
            _properties(Direction=direction, Other_Customer_Id=other, Points_Balance=_balance(side))))
    return made


# --- joining and leaving the scheme (topics 0 and 3) ------------------------------------------------

def membership(customer: Mapping[str, Any], *, joined: bool, scheme_id: str | None = None) -> Derived:
    """`Loyale Joined Scheme` / `Loyale Left Scheme` from the customer a topic 0 / 3 webhook sends, at
    the customer's `updatedDate` in that payload (the moment of the change; a redelivery sends the
    same, so it makes the same unique id)."""
    customer_id = _text(customer.get("id"))
    if customer_id is None:
        return NoEvent("a customer without an id")
    time = _stamp(customer, "updatedDate", "createdDate")
    if time is None:
        return NoEvent(f"customer {customer_id}'s change of membership has no date")
    stamp = int(time.timestamp() * 1_000_000)
    return LoyaltyEvent(JOINED_SCHEME if joined else LEFT_SCHEME, customer_id,
                        f"loyale-{'joined' if joined else 'left'}-{customer_id}-{stamp}", time,
                        _properties(Scheme_Id=scheme_id))


# --- levels (from the profile sync: levels now vs levels last synced) -------------------------------

def level_changes(customer_id: str, before: Sequence[str] | None, now: Sequence[str],
                  reached_at: Mapping[str, datetime], changed_at: datetime | None) -> list[LoyaltyEvent]:
    """`Loyale Level Reached` for each level held now and not when last synced, `Loyale Level Lost` for
    each held then and not now. `before` None (never synced with known levels): no events, since a
    first sync cannot tell a level reached today from one held for years.

    A level reached is timed by when Loyale linked it (`reached_at`, from `detailedLevels`), else by the
    customer's `updatedDate` (`changed_at`); a level lost by `changed_at`. Its unique id is the
    customer, the level and that time: the same change seen twice is one event, a level lost and
    reached again later is a new one."""
    if before is None:
        return []
    held, had = list(dict.fromkeys(now)), set(before)
    events: list[LoyaltyEvent] = []
    for name in held:
        if name in had:
            continue
        time = reached_at.get(name) or changed_at
        if time is None:
            continue
        events.append(LoyaltyEvent(
            LEVEL_REACHED, customer_id, f"loyale-level-{customer_id}-{name}-reached-{int(time.timestamp() * 1e6)}",
            time, _properties(Level=name, Levels=held, Previous_Levels=list(before))))
    if changed_at is not None:
        for name in dict.fromkeys(before):
            if name not in held:
                events.append(LoyaltyEvent(
                    LEVEL_LOST, customer_id,
                    f"loyale-level-{customer_id}-{name}-lost-{int(changed_at.timestamp() * 1e6)}",
                    changed_at, _properties(Level=name, Levels=held, Previous_Levels=list(before))))
    return sorted(events, key=lambda e: e.time)


# --- Klaviyo's bodies -----------------------------------------------------------------------------

def _attributes(event: LoyaltyEvent) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "properties": event.properties,
        "time": _iso(event.time),
        "unique_id": event.unique_id,
        "metric": {"data": {"type": "metric", "attributes": {"name": event.metric}}},
    }
    if event.value is not None:
        attributes["value"] = event.value
        if event.value_currency:
            attributes["value_currency"] = event.value_currency
    return attributes


def _profile(profile_id: str) -> dict[str, Any]:
    """The profile by its Klaviyo id alone: no identifier that could make Klaviyo create one."""
    return {"data": {"type": "profile", "id": profile_id, "attributes": {}}}


def event_body(event: LoyaltyEvent, profile_id: str) -> dict[str, Any]:
    """The body of `POST /api/events` for one event of the profile `profile_id`."""
    return {"data": {"type": "event", "attributes": {**_attributes(event), "profile": _profile(profile_id)}}}


def bulk_entries(events: Iterable[tuple[str, LoyaltyEvent]]) -> list[dict[str, Any]]:
    """`events-bulk-create` entries for (profile id, event) pairs: one entry per profile, its events in
    time order (what `POST /api/event-bulk-create-jobs` takes in `events-bulk-create.data`)."""
    by_profile: dict[str, list[LoyaltyEvent]] = {}
    for profile_id, event in events:
        by_profile.setdefault(profile_id, []).append(event)
    return [{"type": "event-bulk-create", "attributes": {
                "profile": _profile(profile_id),
                "events": {"data": [{"type": "event", "attributes": _attributes(e)}
                                    for e in sorted(group, key=lambda e: e.time)]}}}
            for profile_id, group in by_profile.items()]
