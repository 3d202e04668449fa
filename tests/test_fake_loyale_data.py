"""The synthetic customer generator: deterministic, varied like real loyalty data, and fast."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pytest

from fakes.loyale_data import generate_customers, generate_levels

SCHEME = "8f4089bc-91b6-4078-8403-cfd07b285cdb"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
VIEW_KEYS = {
    "id", "email", "firstName", "lastName", "name", "dob", "gender", "areaCode", "mobileNumber", "addressLine1",
    "addressLine2", "town", "state", "postCode", "country", "marketingSub", "barCode", "createdBy", "updatedBy",
    "detailedLevels", "schemes", "createdDate", "updatedDate", "lastConnectedDate", "lastTransactionDate",
    "Levels", "alerts", "additionalCustomerFields", "profileImageUrl", "onHold", "deleted", "emailVerified",
    "mobileNumberVerified", "signUpPlatform", "externalRefId", "balance", "tags",
}


@pytest.fixture(scope="module")
def levels() -> list[dict]:
    return generate_levels(7, SCHEME)


@pytest.fixture(scope="module")
def people(levels: list[dict]) -> list[dict]:
    return generate_customers(7, 5000, levels, scheme_id=SCHEME)


def share(people: list[dict], test) -> float:
    return sum(1 for p in people if test(p)) / len(people)


def test_deterministic_by_seed(levels: list[dict], people: list[dict]) -> None:
    assert generate_customers(7, 5000, levels, scheme_id=SCHEME) == people
    other = generate_customers(8, 5000, levels, scheme_id=SCHEME)
    assert {p["id"] for p in other}.isdisjoint({p["id"] for p in people})
    assert generate_levels(7, SCHEME) == levels
    assert 3 <= len(levels) <= 4 and all(lv["schemeId"] == SCHEME for lv in levels)


def test_shape_is_a_customer_result_view(levels: list[dict], people: list[dict]) -> None:
    level_ids = {lv["id"] for lv in levels}
    assert len({p["id"] for p in people}) == len(people)
    for p in people:
        assert set(p) == VIEW_KEYS
        assert STAMP.match(p["createdDate"]) and STAMP.match(p["updatedDate"])
        assert p["updatedDate"] >= p["createdDate"]
        assert p["name"] == f"{p['firstName']} {p['lastName']}"
        assert set(p["balance"]) == {"pointsValue", "monetaryValue"}
        assert len(p["Levels"]) <= 2 and {lv["levelId"] for lv in p["Levels"]} <= level_ids
        assert [lv["levelId"] for lv in p["detailedLevels"]] == [lv["levelId"] for lv in p["Levels"]]
        assert all(lv["customerId"] == p["id"] for lv in p["Levels"])
        assert len(p["tags"]) <= 2 and len(p["additionalCustomerFields"]) <= 3
        for f in p["additionalCustomerFields"]:
            assert f["customerId"] == p["id"] and f["schemeId"] == SCHEME and isinstance(f["internal"], bool)
        assert p["schemes"][0]["id"] == SCHEME


def test_realistic_variety(people: list[dict]) -> None:
    assert 0.12 <= share(people, lambda p: p["marketingSub"] is False) <= 0.18
    assert 0.06 <= share(people, lambda p: not p["mobileNumber"]) <= 0.12
    assert 0.01 <= share(people, lambda p: p["email"] is None) <= 0.03
    assert 0.03 <= share(people, lambda p: p["email"] and p["email"] != p["email"].lower()) <= 0.12
    assert share(people, lambda p: p["email"] and p["email"] != p["email"].strip()) > 0
    assert share(people, lambda p: p["email"] and "@" not in p["email"][1:-1]) > 0
    lowered = Counter(p["email"].strip().lower() for p in people if p["email"])
    assert any(n > 1 for n in lowered.values()), "some emails differ only in case"
    assert 0 < share(people, lambda p: p["deleted"]) < 0.03
    assert 0 < share(people, lambda p: p["onHold"]) < 0.04
    assert share(people, lambda p: p["dob"]) > 0.75
    assert share(people, lambda p: p["addressLine1"]) > 0.7
    assert 0.2 < share(people, lambda p: p["profileImageUrl"]) < 0.4
    assert share(people, lambda p: p["tags"]) > 0.3 and share(people, lambda p: p["Levels"]) > 0.3
    fields = [f for p in people for f in p["additionalCustomerFields"]]
    assert {f["internal"] for f in fields} == {True, False}
    # names: accents, CJK and emoji
    names = [p["firstName"] + p["lastName"] for p in people]
    assert any(any(unicodedata.combining(c) or c in "ëéøłżñ" for c in n) for n in names)
    assert any(any("\u4e00" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" for c in n) for n in names)
    assert any(any(ord(c) >= 0x1F300 for c in n) for n in names)
    # phones in many shapes
    phones = Counter()
    for p in people:
        area, number = p["areaCode"], p["mobileNumber"] or ""
        if area == "+356" and re.fullmatch(r"\d{8}", number):
            phones["+356 local"] += 1
        elif area == "356":
            phones["356 without plus"] += 1
        elif area == "+44" and number.startswith("07700 "):
            phones["UK trunk zero"] += 1
        elif not area and number.startswith("+1 ("):
            phones["number carries the country"] += 1
        elif number.startswith("00353"):
            phones["00 prefix"] += 1
        elif number in ("12", "n/a", "0000", "555-CALL-NOW", "-"):
            phones["garbage"] += 1
    assert len(phones) == 6 and min(phones.values()) >= 5, phones
    # some customers share one exact updatedDate (bulk imports): paging must break ties by id
    assert Counter(p["updatedDate"] for p in people).most_common(1)[0][1] > 10

