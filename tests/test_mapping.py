"""The Loyale -> Klaviyo field mapping (DESIGN.md's table), as a pure function."""

from __future__ import annotations

import pytest

from tests.builders import loyale_payload
from worker.mapping import InvalidCustomer, map_customer, normalise_phone, to_attributes
from worker.models import parse_customer


def mapped(**overrides):
    customer, warnings = parse_customer(loyale_payload(**overrides))
    result = map_customer(customer, default_phone_region=None)
    return result.fields, warnings + result.warnings


def test_every_row_of_the_design_table_is_mapped():
    fields, warnings = mapped(addressLine2="Flat 2", state="Central", profileImageUrl="https://img.example/j.png")
    assert warnings == []
    assert fields == {
        "email": "jane@example.com",
        "external_id": "c-1",
        "phone_number": "+35679123456",
        "first_name": "Jane",
        "last_name": "Doe",
        "image": "https://img.example/j.png",
        "organization": "Loyale",
        "location.address1": "1 Main St",
        "location.address2": "Flat 2",
        "location.city": "Valletta",
        "location.region": "Central",
        "location.zip": "VLT 1000",
        "location.country": "Malta",
        "properties.Birthday": "1990-05-01",
        "properties.LoyalePointBalance": 1200,
        "properties.LoyaleMonetaryBalance": 12.5,
        "properties.Levels": ["Gold"],
        "properties.Tags": ["vip"],
        "properties.ShoeSize": "38",
    }


def test_nested_attributes_for_klaviyo():
    fields, _ = mapped()
    attributes = to_attributes(fields)
    assert attributes["location"]["city"] == "Valletta"
    assert attributes["properties"]["Levels"] == ["Gold"]
    assert attributes["email"] == "jane@example.com"


def test_missing_values_are_absent_never_null():
    fields, _ = mapped(firstName=None, lastName="", town="   ", dob=None, levelNames=[], tags=None,
                       points_balance=None, additionalCustomerFields=None)
    for absent in ("first_name", "last_name", "location.city", "properties.Birthday", "properties.Levels",
                   "properties.Tags", "properties.LoyalePointBalance"):
        assert absent not in fields
    assert None not in fields.values()


def test_internal_and_reserved_additional_fields_are_not_synced():
    fields, warnings = mapped(additionalCustomerFields=[
        {"key": "Secret", "value": "x", "internal": True},
        {"key": "Levels", "value": "hijack", "internal": False},
        {"key": "$email", "value": "x@y.z", "internal": False},
        {"key": "Colour", "value": "red", "internal": False},
    ])
    assert "properties.Secret" not in fields
    assert fields["properties.Levels"] == ["Gold"]
    assert "properties.$email" not in fields
    assert fields["properties.Colour"] == "red"
    assert any("'Levels' skipped" in w for w in warnings) and any("'$email' skipped" in w for w in warnings)


def test_an_integer_klaviyo_would_round_is_skipped_with_a_warning():
    fields, warnings = mapped(additionalCustomerFields=[
        {"key": "Visits", "value": 2**53, "internal": False},
        {"key": "Huge", "value": 10**300 + 1, "internal": False},
    ])
    assert fields["properties.Visits"] == 2**53
    assert "properties.Huge" not in fields
    assert any("'Huge' skipped" in w and "too large" in w for w in warnings)


@pytest.mark.parametrize(("area", "mobile", "region", "expected"), [
    ("+356", "79123456", None, "+35679123456"),
    ("356", "79123456", None, "+35679123456"),
    ("00356", "7912 3456", None, "+35679123456"),
    ("+44", "07911 123456", None, "+447911123456"),       # national trunk 0 after the country code
    ("", "+1 (415) 555-2671", None, "+14155552671"),
    ("", "00353 87 123 4567", None, "+353871234567"),
    ("", "79123456", "MT", "+35679123456"),                # local number, tenant's default region
])
def test_phones_are_normalised_to_e164(area, mobile, region, expected):
    assert normalise_phone(area, mobile, region) == (expected, None)


@pytest.mark.parametrize(("area", "mobile"), [("", "12"), ("", "n/a"), ("+356", "1"), ("", "79123456")])
def test_unusable_phone_is_dropped_with_a_warning_and_the_rest_syncs(area, mobile):
    fields, warnings = mapped(areaCode=area, mobileNumber=mobile)
    assert "phone_number" not in fields
    assert fields["email"] == "jane@example.com"
    assert any(w.startswith("phone dropped") for w in warnings)


def test_no_email_and_no_phone_is_invalid():
    customer, _ = parse_customer(loyale_payload(email=None, mobileNumber=None, areaCode=None))
    with pytest.raises(InvalidCustomer, match="no email and no usable phone"):
        map_customer(customer)


def test_phone_only_customer_is_mapped_without_email():
    fields, _ = mapped(email="  ")
    assert "email" not in fields and fields["phone_number"] == "+35679123456"


@pytest.mark.parametrize("email", ["jane@", "jane example@x.com", "jane@x", "a\x00b@x.com", "x" * 250 + "@a.com"])
def test_malformed_email_is_invalid(email):
    customer, _ = parse_customer(loyale_payload(email=email))
    with pytest.raises(InvalidCustomer, match="malformed email"):
        map_customer(customer)


def test_control_characters_are_stripped_and_long_names_cut():
    fields, warnings = mapped(firstName="Ja\x07ne\u200b 🎉", lastName="x" * 10_000)
    assert fields["first_name"] == "Jane\u200b 🎉"
    assert len(fields["last_name"]) == 255
    assert any("lastName: 10000 characters" in w for w in warnings)


def test_wrong_types_drop_only_that_field():
    fields, warnings = mapped(firstName={"not": "a name"}, lastName=42, points_balance="lots")
    assert "first_name" not in fields and fields["last_name"] == "42"
    assert "properties.LoyalePointBalance" not in fields
    assert fields["email"] == "jane@example.com"
    assert len(warnings) == 2


def test_odd_birthday_is_dropped_with_a_warning():
    fields, warnings = mapped(dob="last tuesday")
    assert "properties.Birthday" not in fields
    assert "dob: not a date, Birthday not sent" in warnings
    assert mapped(dob="1990/05/01")[0]["properties.Birthday"] == "1990-05-01"
