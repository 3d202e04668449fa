"""Profiles: the model, validation of write payloads, the identity index and JSON:API rendering."""

from __future__ import annotations

import functools
import random
import re
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import phonenumbers

from fakes.klaviyo.errors import error_item

IDENTIFIERS = ("email", "phone_number", "external_id")
SCALARS = ("email", "phone_number", "external_id", "first_name", "last_name", "organization", "locale",
           "title", "image")
LOCATION = ("address1", "address2", "city", "country", "latitude", "longitude", "region", "zip", "timezone",
            "ip")
WRITABLE = (*SCALARS, "location", "properties")
ATTRIBUTE_ORDER = (*SCALARS, "created", "updated", "last_event_date", "location", "properties")
SUPPRESSION_REASONS = ("HARD_BOUNCE", "INVALID_EMAIL", "SPAM_COMPLAINT", "UNSUBSCRIBE", "USER_SUPPRESSED")
PUBLIC_BASE = "https://a.klaviyo.com"

EMAIL_DETAIL = "Invalid email address"
PHONE_DETAIL = "Invalid phone number format (Example of a valid format: +12345678901)"
REGION_DETAIL = "Phone number is valid but is not in a supported region for this account."
UNSET_DETAIL = "Unset must be a string or an array of strings (the property keys to unset)."

_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """ISO-8601 with `+00:00`, as Klaviyo renders; microseconds kept so `updated` orders every change."""
    return None if ts is None else ts.astimezone(UTC).isoformat(timespec="microseconds")


def email_key(email: str) -> str:
    """Index key: emails match case-insensitively (an assumption; see the package docstring)."""
    return email.strip().lower()


def is_valid_email(value: str) -> bool:
    return len(value) <= 254 and _EMAIL.match(value) is not None


@functools.lru_cache(maxsize=65536)
def is_e164(value: str) -> bool:
    if not _E164.match(value):
        return False
    try:
        return phonenumbers.is_possible_number(phonenumbers.parse(value, None))
    except phonenumbers.NumberParseException:
        return False


@functools.lru_cache(maxsize=65536)
def phone_region(value: str) -> str | None:
    """The ISO region of an E.164 phone (`phonenumbers`), or None when it has none."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(value, None))
    except phonenumbers.NumberParseException:
        return None


def unsupported_region(value: Any, regions: list[str] | tuple[str, ...]) -> bool:
    return bool(regions) and isinstance(value, str) and is_e164(value) and phone_region(value) in regions


class UlidGenerator:
    """26-char Crockford ULIDs, strictly increasing, so creation order is id order."""

    def __init__(self, seed: int | None = None):
        self._rng = random.Random(seed)
        self._last_ms = -1
        self._last_rand = 0

    def new(self) -> str:
        ms = max(int(time.time() * 1000), self._last_ms)
        if ms == self._last_ms:
            self._last_rand += 1
        else:
            self._last_ms, self._last_rand = ms, self._rng.getrandbits(79)
        value = (ms << 80) | self._last_rand
        return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


@dataclass(slots=True)
class Profile:
    id: str
    scalars: dict[str, Any]
    location: dict[str, Any]
    properties: dict[str, Any]
    created: datetime
    updated: datetime
    last_event_date: datetime | None = None
    consent: str = "NEVER_SUBSCRIBED"
    consent_timestamp: datetime | None = None
    suppressions: list[dict[str, Any]] = field(default_factory=list)
    subscriptions_updated: datetime | None = None

    @property
    def can_receive_email_marketing(self) -> bool:
        # Suppressed profiles cannot receive email marketing "independent of their consent status".
        return not self.suppressions and self.consent != "UNSUBSCRIBED"


# ---------------------------------------------------------------------------------------------
# Validation of write payloads: pure, returns error items (JSON:API) so several can be reported.


def validate_attributes(attrs: Any, prefix: str, *, allow_kx: bool = False,
                        unsupported_regions: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Type and format checks of `data.attributes`; `prefix` is the pointer of the attributes object.
    A phone from one of `unsupported_regions` is refused like Klaviyo refuses it."""
    if not isinstance(attrs, dict):
        return [error_item(400, "invalid", "Attributes must be an object.", pointer=prefix)]
    errors: list[dict[str, Any]] = []
    for name, value in attrs.items():
        pointer = f"{prefix}/{name}"
        if name == "_kx" and allow_kx:
            continue
        if name not in WRITABLE:
            errors.append(error_item(400, "invalid", f"'{name}' is not a valid field for the resource 'profile'.",
                                     pointer=pointer))
        elif name == "location":
            errors += _validate_location(value, pointer)
        elif name == "properties":
            if value is not None and not isinstance(value, dict):
                errors.append(error_item(400, "invalid", "Properties must be an object.", pointer=pointer))
        elif value is not None and not isinstance(value, str):
            errors.append(error_item(400, "invalid", f"'{name}' must be a string.", pointer=pointer))
        elif name == "email" and value is not None and not is_valid_email(value):
            errors.append(error_item(400, "invalid", EMAIL_DETAIL, pointer=pointer))
        elif name == "phone_number" and value is not None and not is_e164(value):
            errors.append(error_item(400, "invalid", PHONE_DETAIL, pointer=pointer))
        elif name == "phone_number" and unsupported_region(value, unsupported_regions):
            errors.append(error_item(400, "invalid", REGION_DETAIL, pointer=pointer))
    return errors


def _validate_location(value: Any, pointer: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [error_item(400, "invalid", "Location must be an object.", pointer=pointer)]
    errors = []
    for key, sub in value.items():
        if key not in LOCATION:
            errors.append(error_item(400, "invalid", f"'{key}' is not a valid field for 'location'.",
                                     pointer=f"{pointer}/{key}"))
        elif sub is not None and not (isinstance(sub, str) or (
                key in ("latitude", "longitude") and isinstance(sub, int | float) and not isinstance(sub, bool))):
            errors.append(error_item(400, "invalid", f"'{key}' must be a string.", pointer=f"{pointer}/{key}"))
    return errors


def validate_meta(meta: Any, prefix: str, unset_pointer: str) -> list[dict[str, Any]]:
    """`meta.patch_properties` checks. `unset_pointer` mirrors the live (odd) pointer of that error."""
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return [error_item(400, "invalid", "Meta must be an object.", pointer=prefix)]
    patch = meta.get("patch_properties")
    if patch is None:
        return []
    if not isinstance(patch, dict):
        return [error_item(400, "invalid", "patch_properties must be an object.",
                           pointer=f"{prefix}/patch_properties")]
    errors = []
    for op in ("append", "unappend"):
        if patch.get(op) is not None and not isinstance(patch[op], dict):
            errors.append(error_item(400, "invalid", f"{op.capitalize()} must be an object.",
                                     pointer=f"{prefix}/patch_properties/{op}"))
    unset = patch.get("unset")
    if unset is not None and not (isinstance(unset, str) or (
            isinstance(unset, list) and all(isinstance(k, str) for k in unset))):
        errors.append(error_item(400, "invalid", UNSET_DETAIL, pointer=unset_pointer))
    return errors


def identifiers_in(attrs: dict[str, Any]) -> dict[str, str]:
    """The non-empty identifier values a payload carries."""
    return {f: attrs[f] for f in IDENTIFIERS if isinstance(attrs.get(f), str) and attrs[f] != ""}


# ---------------------------------------------------------------------------------------------
# Applying changes: each helper reports whether anything actually changed (drives `updated`).


def _apply_patch_properties(props: dict[str, Any], patch: dict[str, Any]) -> bool:
    changed = False
    for key, value in (patch.get("append") or {}).items():
        values = value if isinstance(value, list) else [value]
        current = props.get(key)
        base = [] if current is None else (list(current) if isinstance(current, list) else [current])
        props[key] = base + values
        changed = changed or bool(values) or current is None
    for key, value in (patch.get("unappend") or {}).items():
        current = props.get(key)
        if isinstance(current, list):
            drop = value if isinstance(value, list) else [value]
            kept = [v for v in current if v not in drop]
            if kept != current:
                props[key] = kept
                changed = True
    unset = patch.get("unset")
    for key in [unset] if isinstance(unset, str) else (unset or []):
        if key in props:
            del props[key]
            changed = True
    return changed


def apply_changes(profile: Profile, attrs: dict[str, Any], meta: dict[str, Any] | None, *,
                  ignore_nulls: bool) -> bool:
    """Merge validated attributes into `profile`: omitted = unchanged, null = cleared (unless
    `ignore_nulls`, the bulk-import rule), `properties` and `location` merged key by key."""
    changed = False
    for name in SCALARS:
        if name in attrs:
            value = attrs[name]
            if (value is None and ignore_nulls) or profile.scalars.get(name) == value:
                continue
            profile.scalars[name] = value
            changed = True
    if "location" in attrs:
        loc = attrs["location"]
        if loc is None:
            if not ignore_nulls and any(v is not None for v in profile.location.values()):
                profile.location = dict.fromkeys(LOCATION)
                changed = True
        else:
            for key, value in loc.items():
                if (value is None and ignore_nulls) or profile.location.get(key) == value:
                    continue
                profile.location[key] = value
                changed = True
    if "properties" in attrs:
        props = attrs["properties"]
        if props is None:
            if not ignore_nulls and profile.properties:
                profile.properties = {}
                changed = True
        else:
            for key, value in props.items():
                if (value is None and ignore_nulls) or (key in profile.properties
                                                        and profile.properties[key] == value):
                    continue
                profile.properties[key] = value
                changed = True
    patch = (meta or {}).get("patch_properties")
    if patch:
        changed = _apply_patch_properties(profile.properties, patch) or changed
    return changed


class ProfileStore:
    """One account's profiles with O(1) identifier lookups and id order for paging."""

    def __init__(self, ids: UlidGenerator):
        self._ids = ids
        self.profiles: dict[str, Profile] = {}
        #: Ids in ascending order: ULIDs are generated increasing and profiles are never deleted.
        self.order: list[str] = []
        self.index: dict[str, dict[str, str]] = {f: {} for f in IDENTIFIERS}
        #: Fake-clock time of each profile's last API write, for `read_lag_s` (seeds are not writes).
        self.written: dict[str, float] = {}

    @staticmethod
    def key(name: str, value: str) -> str:
        return email_key(value) if name == "email" else value

    def owner(self, name: str, value: str) -> str | None:
        return self.index[name].get(self.key(name, value))

    def owners(self, idents: dict[str, str]) -> list[str]:
        """Distinct owners of the given identifiers, in email, phone, external_id order."""
        out: list[str] = []
        for name, value in idents.items():
            pid = self.owner(name, value)
            if pid is not None and pid not in out:
                out.append(pid)
        return out

    def conflict(self, profile_id: str | None, attrs: dict[str, Any]) -> str | None:
        """The id of another profile owning one of the identifiers `attrs` would set."""
        for name, value in identifiers_in(attrs).items():
            owner = self.owner(name, value)
            if owner is not None and owner != profile_id:
                return owner
        return None

    def create(self, attrs: dict[str, Any], meta: dict[str, Any] | None = None, *,
               at: datetime | None = None) -> Profile:
        ts = at or now_utc()
        profile = Profile(
            id=self._ids.new(),
            scalars=dict.fromkeys(SCALARS),
            location=dict.fromkeys(LOCATION),
            properties={},
            created=ts,
            updated=ts,
        )
        apply_changes(profile, attrs, meta, ignore_nulls=True)
        self.profiles[profile.id] = profile
        self.order.append(profile.id)
        self._index(profile, {})
        return profile

    def update(self, profile: Profile, attrs: dict[str, Any], meta: dict[str, Any] | None, *,
               ignore_nulls: bool) -> bool:
        before = {f: profile.scalars.get(f) for f in IDENTIFIERS}
        changed = apply_changes(profile, attrs, meta, ignore_nulls=ignore_nulls)
        if changed:
            profile.updated = max(now_utc(), profile.updated)
            self._index(profile, before)
        return changed

    def delete(self, profile_id: str) -> Profile:
        """Remove a profile (the source of a merge): its identifiers are free again."""
        profile = self.profiles.pop(profile_id)
        i = bisect_left(self.order, profile_id)
        if i < len(self.order) and self.order[i] == profile_id:
            del self.order[i]
        else:
            self.order.remove(profile_id)
        for name in IDENTIFIERS:
            value = profile.scalars.get(name)
            if value not in (None, "") and self.index[name].get(self.key(name, value)) == profile_id:
                del self.index[name][self.key(name, value)]
        self.written.pop(profile_id, None)
        return profile

    def _index(self, profile: Profile, before: dict[str, Any]) -> None:
        for name in IDENTIFIERS:
            old, new = before.get(name), profile.scalars.get(name)
            if old not in (None, "") and self.index[name].get(self.key(name, old)) == profile.id:
                del self.index[name][self.key(name, old)]
            if new not in (None, ""):
                self.index[name][self.key(name, new)] = profile.id


# ---------------------------------------------------------------------------------------------
# Rendering


def email_marketing(p: Profile) -> dict[str, Any]:
    return {
        "can_receive_email_marketing": p.can_receive_email_marketing,
        "consent": p.consent,
        "consent_timestamp": iso(p.consent_timestamp),
        "last_updated": iso(p.subscriptions_updated),
        "method": None,
        "method_detail": "",
        "custom_method_detail": None,
        "double_optin": None,
        "suppression": [{"reason": s["reason"], "timestamp": iso(s["timestamp"])} for s in p.suppressions],
        "list_suppressions": [],
    }


def subscriptions(p: Profile) -> dict[str, Any]:
    sms = {"consent": "NEVER_SUBSCRIBED", "consent_timestamp": None, "method": None, "method_detail": "",
           "last_updated": None}
    return {
        "email": {"marketing": email_marketing(p)},
        "sms": {
            "marketing": {"can_receive_sms_marketing": False, **sms},
            "transactional": {"can_receive_sms_transactional": False, **sms},
        },
        "mobile_push": {"marketing": {"can_receive_push_marketing": False, "consent": "NEVER_SUBSCRIBED",
                                      "consent_timestamp": None}},
    }


PREDICTIVE = ("historic_clv", "predicted_clv", "total_clv", "historic_number_of_orders",
              "predicted_number_of_orders", "average_days_between_orders", "average_order_value",
              "churn_probability", "expected_date_of_next_order", "ranked_channel_affinity")


def attributes(p: Profile) -> dict[str, Any]:
    out: dict[str, Any] = dict(p.scalars)
    out["created"] = iso(p.created)
    out["updated"] = iso(p.updated)
    out["last_event_date"] = iso(p.last_event_date)
    out["location"] = dict(p.location)
    out["properties"] = dict(p.properties)
    return out


def sparse(attrs: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Keep only the named (possibly dotted) attributes, e.g. `email`, `location.city`."""
    out: dict[str, Any] = {}
    for path in fields:
        parts = path.split(".")
        src: Any = attrs
        for part in parts:
            if not isinstance(src, dict) or part not in src:
                break
            src = src[part]
        else:
            dst = out
            for part in parts[:-1]:
                dst = dst.setdefault(part, {})
            dst[parts[-1]] = src
    return out


def render_profile(p: Profile, *, fields: list[str] | None = None,
                   additional: tuple[str, ...] = ()) -> dict[str, Any]:
    attrs = attributes(p)
    if "subscriptions" in additional:
        attrs["subscriptions"] = subscriptions(p)
    if "predictive_analytics" in additional:
        attrs["predictive_analytics"] = dict.fromkeys(PREDICTIVE)
    if fields:
        attrs = sparse(attrs, [f for f in fields if f != "id"])
    base = f"{PUBLIC_BASE}/api/profiles/{p.id}"
    return {
        "type": "profile",
        "id": p.id,
        "attributes": attrs,
        "relationships": {
            rel: {"links": {"self": f"{base}/relationships/{rel}/", "related": f"{base}/{rel}/"}}
            for rel in ("lists", "segments", "push-tokens", "conversations")
        },
        "links": {"self": f"{base}/"},
    }


def full_state(p: Profile, account_id: str) -> dict[str, Any]:
    """What `GET /_fake/profiles` shows: everything, regardless of sparse fieldsets."""
    marketing = email_marketing(p)
    return {
        "id": p.id,
        "account_id": account_id,
        "attributes": attributes(p),
        "subscriptions": {"email": {"marketing": {
            k: marketing[k]
            for k in ("can_receive_email_marketing", "consent", "consent_timestamp", "suppression")
        }}},
    }
