"""Loyale customer -> Klaviyo profile fields, exactly as DESIGN.md's table. Pure: no I/O.

The result is flat: `{"email": ..., "location.city": ..., "properties.Levels": [...]}`. Flat paths make
the merge policy a per-field comparison and give the journal one entry per overwritten field. A field
Loyale has no value for is simply absent, so no `null` can ever be sent from here.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from worker.models import LoyaleCustomer, parse_datetime

ORGANIZATION = "Loyale"
#: Longest text we send for a name or address line. Klaviyo's own limit is not documented; beyond
#: this a value is almost certainly junk, so it is cut and a warning says so.
MAX_TEXT_CHARS = 255
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
EMAIL = re.compile(rf"^[^@\s\"(),:;<>\[\]\\]+@{_LABEL}(?:\.{_LABEL})+$")

LOCATION = {
    "address_line1": "location.address1",
    "address_line2": "location.address2",
    "town": "location.city",
    "state": "location.region",
    "post_code": "location.zip",
    "country": "location.country",
}
#: JSON numbers are doubles in Klaviyo; a larger integer would be stored rounded, so it is not sent.
MAX_EXACT_INT = 2**53

#: Property names we own; an additional field with one of these keys would collide and is skipped.
OWN_PROPERTIES = {"Birthday", "LoyalePointBalance", "LoyaleMonetaryBalance", "Levels", "Tags"}


class InvalidCustomer(ValueError):
    """Raised when a customer cannot be sent at all (no email and no phone, malformed email)."""


@dataclass(frozen=True)
class MappedProfile:
    fields: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    #: Owned properties Loyale confirms are empty now (`Levels` from a `levelNames: []`, `Tags` from a
    #: `tags: []`): with Merge Customers on these may be unset in Klaviyo. An owned property that is
    #: neither in `fields` nor here is unknown (levels that could not be read, a balance Loyale did not
    #: send) and must be left untouched.
    cleared: frozenset[str] = frozenset()

    @property
    def email(self) -> str | None:
        return self.fields.get("email")


def clean_text(value: str | None, name: str, warnings: list[str], limit: int = MAX_TEXT_CHARS) -> str | None:
    """Strip control characters and surrounding space; cut over-long text; '' becomes None."""
    if value is None:
        return None
    # Cs: a lone surrogate (an emoji cut in half upstream) cannot be encoded as UTF-8 to send.
    text = "".join(ch for ch in value if unicodedata.category(ch) not in ("Cc", "Cs")).strip()
    if len(text) > limit:
        warnings.append(f"{name}: {len(text)} characters, cut to {limit}")
        text = text[:limit].rstrip()
    return text or None


def normalise_email(value: str | None) -> str | None:
    """Trimmed and lower-cased; raises InvalidCustomer if it is not an email address."""
    if value is None or not value.strip():
        return None
    email = value.strip().lower()
    if len(email) > 254 or not EMAIL.match(email) or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in email):
        raise InvalidCustomer("malformed email address")
    return email


def normalise_phone(
    area_code: str | None, mobile: str | None, default_region: str | None
) -> tuple[str | None, str | None]:
    """Loyale's areaCode + mobileNumber -> (E.164 or None, warning or None).

    Loyale stores the country code and the number apart, in many shapes: "+356"/"356"/"00356" and
    "79123456", "+44" and "07700 900123" (a national trunk 0), or the whole number in mobileNumber.
    """
    number = (mobile or "").strip()
    area = (area_code or "").strip()
    if not number and not area:
        return None, None
    if not re.search(r"\d", number):
        return None, "phone dropped: mobileNumber has no digits"
    candidates: list[tuple[str, str | None]] = []
    if number.startswith("+"):
        candidates.append((number, None))
    elif number.startswith("00"):
        candidates.append(("+" + number[2:], None))
    area_digits = re.sub(r"\D", "", area)
    if area_digits.startswith("00"):
        area_digits = area_digits[2:]
    if area_digits:
        candidates.append((f"+{area_digits}{number}", None))
        region = phonenumbers.region_code_for_country_code(int(area_digits)) if len(area_digits) <= 3 else None
        if region and region != "ZZ":
            candidates.append((number, region))
    elif default_region:
        candidates.append((number, default_region))
    for text, region in candidates:
        try:
            parsed = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), None
    if not area_digits and not default_region and not number.startswith(("+", "00")):
        return None, "phone dropped: no country code (set the tenant's default_phone_region to use such numbers)"
    return None, "phone dropped: not a valid phone number"


def birthday(value: str | None) -> str | None:
    """Loyale's dob -> "YYYY-MM-DD", which Klaviyo recognises as a date property; None if unparseable."""
    parsed = parse_datetime(value)
    return parsed.date().isoformat() if parsed is not None else None


def phone_region(phone: str) -> str | None:
    """The region code (ISO 3166, "IT") of an E.164 phone, or None when it names no single region."""
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(phone))
    except phonenumbers.NumberParseException:
        return None
    return region if region and region != "ZZ" else None


def map_customer(customer: LoyaleCustomer, default_phone_region: str | None = None) -> MappedProfile:
    """The Klaviyo fields for a Loyale customer; raises InvalidCustomer if nothing can be sent."""
    warnings: list[str] = []
    fields: dict[str, Any] = {}

    email = normalise_email(customer.email)
    phone, phone_warning = normalise_phone(customer.area_code, customer.mobile_number, default_phone_region)
    if phone_warning:
        warnings.append(phone_warning)
    if email is None and phone is None:
        # Say why the phone was unusable: "set the tenant's default_phone_region" is often the fix.
        raise InvalidCustomer("no email and no usable phone number" + (f" ({phone_warning})" if phone_warning else ""))

    def put(path: str, value: Any) -> None:
        if value is not None and value != "" and value != []:
            fields[path] = value

    put("email", email)
    put("external_id", customer.id)
    put("phone_number", phone)
    put("first_name", clean_text(customer.first_name, "firstName", warnings))
    put("last_name", clean_text(customer.last_name, "lastName", warnings))
    put("image", clean_text(customer.profile_image_url, "profileImageUrl", warnings, limit=2048))
    put("organization", ORGANIZATION)
    for attr, path in LOCATION.items():
        put(path, clean_text(getattr(customer, attr), attr, warnings))

    if customer.dob:
        day = birthday(customer.dob)
        if day is None:
            warnings.append("dob: not a date, Birthday not sent")
        put("properties.Birthday", day)
    if customer.points_balance is not None:
        put("properties.LoyalePointBalance", _number(customer.points_balance))
    if customer.monetary_balance is not None:
        put("properties.LoyaleMonetaryBalance", _number(customer.monetary_balance))
    cleared: set[str] = set()
    if not customer.levels_unknown:   # unknown (the producer logged why): Levels stays as Klaviyo has it
        levels = [n for n in (clean_text(v, "level", warnings) for v in customer.level_names) if n]
        put("properties.Levels", levels)
        if not customer.level_names:   # Loyale's own empty list, not names we cleaned away
            cleared.add("properties.Levels")
    tags = [n for n in (clean_text(v, "tag", warnings) for v in customer.tags) if n]
    put("properties.Tags", tags)
    if not customer.tags and "tags" in customer.model_fields_set:
        cleared.add("properties.Tags")

    for extra in customer.additional_fields:
        if extra.internal:
            continue  # internal fields are the brand's own bookkeeping, never marketing data
        key = clean_text(extra.key, "additional field key", warnings, limit=100)
        if key is None:
            continue
        if key in OWN_PROPERTIES or key.startswith("$"):
            warnings.append(f"additional field {key!r} skipped: the name is reserved")
            continue
        value = extra.value
        if isinstance(value, str):
            value = clean_text(value, f"additional field {key}", warnings, limit=2048)
        elif isinstance(value, float) and not math.isfinite(value):
            warnings.append(f"additional field {key!r} skipped: {value} is not a finite number")
            value = None
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INT:
            warnings.append(f"additional field {key!r} skipped: the number is too large for Klaviyo to store exactly")
            value = None
        elif not isinstance(value, int | float | bool):
            value = None  # objects and lists from Loyale are not profile property values
        put(f"properties.{key}", value)
    return MappedProfile(fields=fields, warnings=warnings, cleared=frozenset(cleared))


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def to_attributes(fields: dict[str, Any]) -> dict[str, Any]:
    """Flat paths -> Klaviyo's nested `attributes` object."""
    attributes: dict[str, Any] = {}
    for path, value in fields.items():
        if path.startswith(("location.", "properties.")):
            group, name = path.split(".", 1)
            attributes.setdefault(group, {})[name] = value
        else:
            attributes[path] = value
    return attributes
