"""Synthetic Loyale customers and levels for the fake Loyale server.

Everything here is a pure function of its arguments (seed, n, levels, ...): no clock, no global RNG,
no I/O, so a seed reproduces the same scheme byte for byte. Dates are spread over a fixed window that
ends at `BASE_TIME`, well in the past, so a fake whose clock is "now" only ever moves them forward.

The variety is deliberate: the sync must survive real data, so the generator mixes consent values,
missing and malformed emails, emails differing only in case, phones in many formats (and some garbage),
non-ASCII names (accents, CJK, emoji), internal and public additional fields, levels, tags and balances.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import random
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

# The generator's fixed "present": synthetic customers were created and last updated before this.
BASE_TIME = datetime(2024, 6, 1, tzinfo=UTC)
_WINDOW_START = datetime(2019, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1)

DEFAULT_LEVEL_NAMES = ("Bronze", "Silver", "Gold", "Platinum")
TAG_NAMES = ("VIP", "Newsletter", "Staff", "Wholesale", "Birthday Club", "Café Regular")
ADDITIONAL_FIELDS = (
    # (key, name, internal, value maker index)
    ("WordpressCustomerId", "Wordpress Customer Id", False),
    ("FavouriteStore", "Favourite Store", False),
    ("ShoeSize", "Shoe Size", False),
    ("CrmSegment", "CRM Segment", True),
    ("PosNote", "POS Note", True),
)
_STORES = ("Valletta", "Sliema", "St Julian's", "Mdina", "Gżira", "Online")

_FIRST_NAMES = (
    "Jane", "John", "Maria", "Joseph", "Sarah", "Matthew", "Emma", "Liam", "Olivia", "Noah", "Luca",
    "Giulia", "Karl", "Aisha", "Mohammed", "Ana", "David", "Rebecca", "Thomas", "Chiara",
    # accents and other Latin-script letters
    "José", "Zoë", "Chloé", "Łukasz", "Søren", "Björn", "Renée", "Siân", "Şule", "Đorđe", "Ñusta",
)
_LAST_NAMES = (
    "Doe", "Borg", "Camilleri", "Vella", "Farrugia", "Galea", "Smith", "Jones", "Brown", "Rossi",
    "Murphy", "Kelly", "Schmidt", "Fischer", "Martin", "Bernard", "Walsh", "Taylor", "Wilson", "Grech",
    "Müller", "García", "Ó Briain", "O'Neill", "Nguyễn", "Żammit", "van der Berg", "Kowalski", "Ødegaard",
)
_CJK_FIRST = ("小明", "さくら", "민준", "伟", "芳")
_CJK_LAST = ("王", "李", "田中", "김", "陈")
_EMOJI_FIRST = ("Anna 🌸", "Max 🚀", "Lina ✨", "🦄")
_DOMAINS = (
    "gmail.com", "yahoo.com", "outlook.com", "icloud.com", "hotmail.co.uk", "brand.com.mt", "example.org",
    "maltanet.net", "web.de",
)
_TOWNS = (
    ("Valletta", "VLT 1000", "Malta", None), ("Sliema", "SLM 1549", "Malta", None),
    ("London", "SW1A 1AA", "United Kingdom", "Greater London"), ("Dublin", "D02 X285", "Ireland", "Leinster"),
    ("San Francisco", "94103", "United States", "CA"), ("München", "80331", "Germany", "Bayern"),
    ("Milano", "20121", "IT", "Lombardia"), ("Kraków", "31-042", "PL", None),
)
_STREETS = ("Main St", "Triq il-Kbira", "High Street", "Republic Street", "Hauptstraße", "Via Roma", "Ul. Długa")
_PLATFORMS = ("iOS", "Android", "Web", "POS", "Shopify", None)


def format_datetime(value: datetime) -> str:
    """ISO-8601 UTC with microseconds and a `Z`, the way Loyale serialises its stamps."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def parse_datetime(text: str) -> datetime:
    """Parse an ISO-8601 stamp, with or without `Z`/offset/fraction; a naive stamp is taken as UTC."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_UUID_CLEAR = ~((0xF << 76) | (0xC << 60))
_UUID_SET = (0x4 << 76) | (0x8 << 60)


def _uuid(rng: random.Random) -> str:
    """A version-4 UUID string from the seeded RNG (faster than building `uuid.UUID` objects)."""
    h = f"{(rng.getrandbits(128) & _UUID_CLEAR) | _UUID_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _stamp(microseconds: int) -> str:
    return (_EPOCH + timedelta(microseconds=microseconds)).isoformat(timespec="microseconds") + "Z"


@functools.lru_cache(maxsize=1024)
def _ascii_slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def generate_levels(seed: int, scheme_id: str, count: int | None = None) -> list[dict[str, Any]]:
    """3 or 4 levels of a scheme (Bronze, Silver, ...), deterministic by seed. Fields besides
    id/name/schemeId are UNCONFIRMED guesses at Loyale's Level view."""
    rng = random.Random(f"levels:{seed}:{scheme_id}")
    count = count if count is not None else rng.choice((3, 4))
    created = _stamp(int((_WINDOW_START - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000))
    levels = []
    for index, name in enumerate(DEFAULT_LEVEL_NAMES[:count]):
        levels.append(
            {
                "id": _uuid(rng),
                "name": name,
                "schemeId": scheme_id,
                "description": f"{name} members",
                "pointsThreshold": index * 1000,
                "hidden": False,
                "createdDate": created,
                "updatedDate": created,
                "createdBy": "System",
                "updatedBy": "System",
            }
        )
    return levels


class _Picker:
    """Fast draws from a seeded `random.Random` (`choice`/`randrange`/`sample` are ~10x slower)."""

    __slots__ = ("rand",)

    def __init__(self, rng: random.Random) -> None:
        self.rand = rng.random

    def below(self, k: int) -> int:
        return int(self.rand() * k)

    def pick(self, seq: tuple[Any, ...] | list[Any]) -> Any:
        return seq[int(self.rand() * len(seq))]

    def distinct(self, seq: tuple[Any, ...] | list[Any], k: int) -> list[Any]:
        pool = list(seq)
        return [pool.pop(int(self.rand() * len(pool))) for _ in range(min(k, len(pool)))]


def _phone(p: _Picker) -> tuple[str | None, str | None]:
    """(areaCode, mobileNumber) in one of the shapes seen in real loyalty data."""
    roll = p.rand()
    digits = p.below(10**8)
    if roll < 0.35:
        return "+356", f"{p.pick(('79', '99', '77'))}{digits % 10**6:06d}"
    if roll < 0.45:
        return "356", f"99{digits % 10**6:06d}"
    if roll < 0.55:
        return "+44", f"07700 9{digits % 10**5:05d}"
    if roll < 0.62:
        return "", f"+1 (415) 555-{digits % 10**4:04d}"
    if roll < 0.68:
        return None, f"00353 87 {digits % 1000:03d} {digits // 1000 % 10**4:04d}"
    if roll < 0.76:
        return "+353", f"87{digits % 10**7:07d}"
    if roll < 0.84:
        return "+39", f"347 {digits % 1000:03d} {digits // 1000 % 10**4:04d}"
    if roll < 0.92:
        return "+49", f"0151-{digits:08d}"
    if roll < 0.97:
        return "+356", f"2{digits % 10**7:07d}"  # a Maltese landline: valid, but not a mobile
    return p.pick((("", "12"), ("+356", "n/a"), (None, "0000"), ("+1", "555-CALL-NOW"), ("+", "-")))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Cyclic GC passes over 100k fresh dicts would cost more than building them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def generate_customers(
    seed: int,
    n: int,
    levels: list[dict[str, Any]],
    *,
    scheme_id: str | None = None,
    scheme_name: str = "Fake Scheme",
) -> list[dict[str, Any]]:
    """`n` synthetic CustomerResultView dicts, deterministic by (seed, n, levels, scheme_id).

    Rough shares: 15% marketingSub=false, 8% no phone, 2% no email, 6% mixed-case email, 1% email with
    surrounding spaces, 0.3% malformed email, 0.3% email equal to an earlier one but for case, 1% deleted,
    1.5% onHold, 85% with dob, 80% with an address, 30% with a profile image.
    """
    with _gc_paused():
        return _generate_customers(seed, n, levels, scheme_id, scheme_name)


def _generate_customers(
    seed: int, n: int, levels: list[dict[str, Any]], scheme_id: str | None, scheme_name: str
) -> list[dict[str, Any]]:
    scheme_id = scheme_id or (levels[0]["schemeId"] if levels else str(uuid.UUID(int=seed % 2**128)))
    rng = random.Random(f"customers:{seed}:{scheme_id}")
    p = _Picker(rng)
    rand, pick, below = p.rand, p.pick, p.below
    window = int((BASE_TIME - _WINDOW_START).total_seconds() * 1_000_000)
    window_start = int((_WINDOW_START - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)
    year_us = 365 * 24 * 3600 * 1_000_000
    # A few bulk imports: many customers share one exact updatedDate (ties matter for paging).
    bulk_stamps = [window_start + below(window) for _ in range(5)]
    scheme_view = {
        "id": scheme_id, "name": scheme_name, "currency": "EUR", "description": None, "website": None,
        "color": None, "imageUrl": None, "pointRedemptionPerCurrency": 100, "inLoyale": True, "hidden": False,
        "rounding": 0, "billingStatus": 1, "franchises": [],
        "createdDate": _stamp(window_start), "updatedDate": _stamp(window_start),
    }
    emails: list[str] = []
    customers: list[dict[str, Any]] = []
    for index in range(n):
        cid = _uuid(rng)
        roll = rand()
        if roll < 0.03:
            first, last = pick(_CJK_FIRST), pick(_CJK_LAST)
        elif roll < 0.045:
            first, last = pick(_EMOJI_FIRST), pick(_LAST_NAMES)
        else:
            first, last = pick(_FIRST_NAMES), pick(_LAST_NAMES)

        roll = rand()
        email: str | None
        if roll < 0.02:
            email = None
        elif roll < 0.023 and emails:
            email = pick(emails).upper()  # differs from another customer's only in case
        elif roll < 0.026:
            email = pick(("jane.doe@", "no-at-sign.example.com", "two@@example.com", "sp ace@x.com"))
        else:
            local = f"{_ascii_slug(first) or 'user'}.{_ascii_slug(last) or 'member'}{index}"
            domain = pick(_DOMAINS)
            sub = rand()
            if sub < 0.06:
                email = f"{local.title()}@{domain.capitalize()}"
            elif sub < 0.07:
                email = f"  {local}@{domain} "
            elif sub < 0.075:
                email = f"{local}+loyalty@{domain}"
            else:
                email = f"{local}@{domain}"
            emails.append(email)

        if rand() < 0.08:
            area, mobile = pick(((None, None), ("", ""), ("+356", None), (None, "")))
        else:
            area, mobile = _phone(p)

        created_us = window_start + below(window)
        roll = rand()
        if roll < 0.05:
            updated_us = max(created_us, pick(bulk_stamps))
        elif roll < 0.35:
            updated_us = created_us
        else:
            updated_us = created_us + below(min(year_us, window_start + window - created_us))
        created, updated = _stamp(created_us), _stamp(updated_us)

        has_address = rand() < 0.8
        town, post, country, state = pick(_TOWNS)
        points = below(20_000) if rand() < 0.9 else 0
        held = p.distinct(levels, pick((0, 1, 1, 2)))
        tags = p.distinct(TAG_NAMES, pick((0, 0, 1, 2)))
        fields = p.distinct(ADDITIONAL_FIELDS, pick((0, 0, 1, 2, 3)))
        created_by = pick(("System", "System", "admin@brand.test"))
        dob_year = 1940 + below(66)
        customers.append(
            {
                "id": cid,
                "email": email,
                "firstName": first,
                "lastName": last,
                "name": f"{first} {last}",
                "dob": f"{dob_year}-{1 + below(12):02d}-{1 + below(28):02d}T00:00:00Z"
                if rand() < 0.85
                else None,
                "gender": below(4),
                "areaCode": area,
                "mobileNumber": mobile,
                "addressLine1": f"{1 + below(199)} {pick(_STREETS)}" if has_address else None,
                "addressLine2": f"Flat {1 + below(29)}" if has_address and rand() < 0.3 else None,
                "town": town if has_address else None,
                "state": state if has_address else None,
                "postCode": post if has_address else None,
                "country": country if has_address else None,
                "marketingSub": rand() >= 0.15,
                "barCode": f"{below(10**12):012d}",
                "createdBy": created_by,
                "updatedBy": created_by,
                "detailedLevels": [
                    {"levelId": lv["id"], "tierId": _uuid(rng), "schemeId": scheme_id,
                     "createdDate": created, "updatedDate": created}
                    for lv in held
                ],
                "schemes": [scheme_view],  # shared: mutations replace the list, never edit it
                "createdDate": created,
                "updatedDate": updated,
                "lastConnectedDate": updated if rand() < 0.6 else None,
                "lastTransactionDate": updated if points and rand() < 0.7 else None,
                "Levels": [{"customerId": cid, "levelId": lv["id"]} for lv in held],
                "alerts": [],
                "additionalCustomerFields": [
                    {
                        "id": _uuid(rng), "customerId": cid, "schemeId": scheme_id, "name": name, "key": key,
                        "value": _field_value(p, key, index), "internal": internal,
                        "createdDate": created, "updatedDate": created,
                        "createdBy": created_by, "updatedBy": created_by,
                    }
                    for key, name, internal in fields
                ],
                "profileImageUrl": f"https://cdn.loyale.test/profiles/{cid}.jpg" if rand() < 0.3 else None,
                "onHold": rand() < 0.015,
                "deleted": rand() < 0.01,
                "emailVerified": rand() < 0.7,
                "mobileNumberVerified": rand() < 0.4,
                "signUpPlatform": pick(_PLATFORMS),
                "externalRefId": f"EXT-{index:07d}" if rand() < 0.2 else None,
                "balance": {"pointsValue": points, "monetaryValue": round(points / 100, 2)},
                "tags": tags,
            }
        )
    return customers


def _field_value(p: _Picker, key: str, index: int) -> str:
    if key == "WordpressCustomerId":
        return str(1000 + index)
    if key == "FavouriteStore":
        return p.pick(_STORES)
    if key == "ShoeSize":
        return str(35 + p.below(12))
    if key == "CrmSegment":
        return p.pick(("A", "B", "churn-risk"))
    return p.pick(("prefers cash", "called about refund", ""))
