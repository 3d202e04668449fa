"""Properties of the pure mapping and merge policy that hold for any input (hypothesis).

What "any input" means here: a Loyale record is a dict of JSON values. JSON can carry control characters,
lone surrogates (a JS client that cut an emoji in half), NaN/Infinity (Python's json reads them), integers
of hundreds of digits, strings of any length and keys nobody expected. The properties:

  (a) a plan never sends a null, anywhere in the body, and the body is strict, UTF-8 encodable JSON;
  (b) with merge off (skip or fill_empty) a non-empty Klaviyo value is never changed;
  (c) applying a plan's writes to the profile and planning again writes nothing (idempotence);
  (d) parsing raises only pydantic's ValidationError, and only when the record has no usable id;
      mapping raises only InvalidCustomer; a hostile value in any other field drops only that field.
"""

from __future__ import annotations

import copy
import json
import math
import unicodedata
from typing import Any

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.builders import loyale_payload
from worker.mapping import MAX_TEXT_CHARS, InvalidCustomer, map_customer, to_attributes
from worker.merge import Match, Memory, Plan, Policy, is_empty, plan_sync, same
from worker.models import SUPPRESSION_USER, KlaviyoProfile, LoyaleCustomer, parse_customer
from worker.outcomes import Outcome

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies: hostile JSON-like values -----------------------------------------------------------------

ODD_CHARS = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u200b", "\u202e", "\ufeff", "\ud83d", "\udc00", "🎉",
             "é", "İ", "٣", "\n", "\t", " "]
CHARS = st.one_of(st.characters(exclude_categories=()), st.sampled_from(ODD_CHARS))
ODD_STRINGS = [
    "", " ", "null", "None", "true", "TRUE", "yes", "1", "0", "-1", "NaN", "Infinity", "-inf", "1e999", "1,200",
    "0x10", "١٢٣", "2026-02-30", "30/12/1990", "12/31/1990 10:00 PM", "1990-05-01T00:00:00.1234567Z",
    "2026-01-01T00:00:00+25:00", "0000-00-00", "9999-12-31T23:59:59.9999999Z", "1990/05/01", "01.05.1990",
    "2026-W01", "20260101", "jane@example.com", "JANE@EXAMPLE.COM", "a@b", "@", "+356", "00356", "79123456",
    "+1 (415) 555-2671", "\ud83d", "👩\u200d👩\u200d👧", "x" * 300, "🎉" * 300,
]
TEXT = st.one_of(
    st.text(CHARS, max_size=30),
    st.sampled_from(ODD_STRINGS),
    st.builds(lambda ch, n: ch * n, CHARS, st.integers(200, 12_000)),   # huge strings
)
NUMBERS = st.one_of(
    st.integers(), st.integers(-(10**400), 10**400), st.floats(),        # floats: NaN and +-inf included
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 10**19, 2**63]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(CHARS, max_size=6), inner, max_size=3)), max_leaves=6)

ADDITIONAL_FIELD = st.one_of(
    st.fixed_dictionaries({}, optional={"key": st.one_of(TEXT, JSON), "value": JSON, "internal": JSON,
                                        "unknown": JSON}),
    st.fixed_dictionaries({"key": st.sampled_from(["email", "$first_name", "external_id", "id", "Levels",
                                                   "properties", "location.city", "a.b", "$", " $x ", ""]),
                           "value": JSON, "internal": st.sampled_from([False, None, "false", 0])}),
    JSON,
)
#: Every key the parser knows, with values of any JSON shape; the list-valued ones also get lists.
KNOWN_KEYS = ["email", "firstName", "lastName", "dob", "areaCode", "mobileNumber", "addressLine1", "addressLine2",
              "town", "state", "postCode", "country", "profileImageUrl", "marketingSub", "deleted", "onHold",
              "updatedDate", "updatedBy", "points_balance", "monetary_balance"]
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {key: JSON for key in KNOWN_KEYS}
FIELD_VALUES.update({
    "levelNames": st.one_of(JSON, st.lists(SCALARS, max_size=4)),
    "tags": st.one_of(JSON, st.lists(SCALARS, max_size=4)),
    "additionalCustomerFields": st.one_of(JSON, st.lists(ADDITIONAL_FIELD, max_size=4)),
})
UNKNOWN = st.dictionaries(st.text(CHARS, max_size=12).filter(lambda k: k not in FIELD_VALUES and k != "id"), JSON,
                          max_size=3)


IDS = st.one_of(st.text(CHARS, min_size=1, max_size=12), st.integers(), JSON)


@st.composite
def raw_records(draw: st.DrawFn) -> dict[str, Any]:
    """Any dict a producer or a webhook could hand the worker: known keys with any values, unknown keys."""
    record = draw(st.fixed_dictionaries({}, optional={"id": IDS, **FIELD_VALUES}))
    record.update(draw(UNKNOWN))
    return record


@st.composite
def hostile_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A good customer (id c-1, a valid email) with hostile values in every other field."""
    overrides = draw(st.fixed_dictionaries({}, optional={k: v for k, v in FIELD_VALUES.items() if k != "email"}))
    payload = loyale_payload(**overrides)
    payload.update(draw(UNKNOWN))
    return payload


def usable_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool) and bool(str(value).strip())


# --- helpers: what a body is, and what Klaviyo does with it -------------------------------------------------


def nulls(node: Any, where: str = "") -> list[str]:
    """Paths of every None (and non-finite float, which JSON cannot carry) inside a body."""
    if node is None or (isinstance(node, float) and not math.isfinite(node)):
        return [where or "/"]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in nulls(v, f"{where}/{k}")]
    if isinstance(node, list | tuple):
        return [p for i, v in enumerate(node) for p in nulls(v, f"{where}/{i}")]
    return []


def assert_sendable(attributes: dict[str, Any]) -> None:
    """No null anywhere, and strict JSON that encodes as UTF-8 (what KlaviyoClient puts on the wire)."""
    assert nulls(attributes) == [], attributes
    json.dumps({"data": {"attributes": attributes}}, allow_nan=False, ensure_ascii=False).encode("utf-8")


def set_path(attributes: dict[str, Any], path: str, value: Any) -> None:
    if path.startswith(("location.", "properties.")):
        group, name = path.split(".", 1)
        if not isinstance(attributes.get(group), dict):
            attributes[group] = {}
        attributes[group][name] = value
    else:
        attributes[path] = value


def applied(profile: KlaviyoProfile | None, plan: Plan) -> KlaviyoProfile:
    """The profile as Klaviyo holds it after the plan's writes: the body's top-level fields replace, its
    `location` and `properties` merge key by key, a suppression adds USER_SUPPRESSED, an unsuppression
    lifts only that one."""
    attributes = copy.deepcopy(profile.attributes) if profile else {}
    for name, value in plan.attributes.items():
        if name in ("location", "properties"):
            for key, inner in value.items():
                set_path(attributes, f"{name}.{key}", inner)
        else:
            attributes[name] = value
    reasons = list(profile.suppression_reasons) if profile else []
    if plan.suppress_email and SUPPRESSION_USER not in reasons:
        reasons.append(SUPPRESSION_USER)
    if plan.unsuppress_email:
        reasons = [r for r in reasons if r != SUPPRESSION_USER]
    attributes["subscriptions"] = {"email": {"marketing": {"suppression": [{"reason": r} for r in reasons]}}}
    return KlaviyoProfile(id=profile.id if profile else "01KCREATED0000000000000000", attributes=attributes)


def match_for(profile: KlaviyoProfile | None, customer: LoyaleCustomer, email: str | None) -> Match:
    """What `worker.pipeline.lookup_many` finds when this is the only profile: by email (case-insensitively, as
    Klaviyo matches), then by external_id."""
    if profile is None:
        return Match()
    by_email = profile if email and profile.email == email else None
    by_xid = profile if profile.external_id == customer.id else None
    return Match(by_email=by_email, by_external_id=by_xid)


def leaves(attributes: dict[str, Any]) -> dict[str, Any]:
    """Flat `path -> value` of a profile's attributes (subscriptions left out: consent is not a field)."""
    out: dict[str, Any] = {}
    for name, value in attributes.items():
        if name in ("location", "properties") and isinstance(value, dict):
            out.update({f"{name}.{k}": v for k, v in value.items()})
        elif name != "subscriptions":
            out[name] = value
    return out


# --- strategies: a customer, the Klaviyo profile it meets, the tenant --------------------------------------

OTHER_VALUES = st.one_of(st.text(max_size=12), st.integers(-5, 5000), st.floats(allow_nan=False, allow_infinity=False),
                         st.lists(st.text(max_size=5), max_size=3), st.booleans())
POLICIES = st.sampled_from([Policy(True, "skip"), Policy(True, "fill_empty"), Policy(False, "skip"),
                            Policy(False, "fill_empty")])
REASONS = st.lists(st.sampled_from(["USER_SUPPRESSED", "HARD_BOUNCE", "UNSUBSCRIBE", "SPAM_COMPLAINT"]),
                   max_size=2, unique=True)


def variant_of(value: Any) -> st.SearchStrategy[Any]:
    """A value Klaviyo could hold that means the same as ours (1200 vs 1200.0, an email in capitals)."""
    options = [st.just(value)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        options.append(st.just(float(value)))
    if isinstance(value, str) and "@" in value:
        options.append(st.just(value.upper()))
    return st.one_of(options)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[LoyaleCustomer, Any, KlaviyoProfile | None, Policy, Memory]:
    raw = draw(hostile_payloads())
    raw.update(draw(st.fixed_dictionaries({}, optional={
        "email": st.sampled_from(["Jane@Example.com", "jane@example.com", None, ""]),
        "marketingSub": st.sampled_from([True, True, True, False, None]),
        "deleted": st.sampled_from([False, False, True]),
        "id": st.sampled_from(["c-1", "c-2", 42]),
    })))
    customer, _ = parse_customer(raw)
    try:
        mapped = map_customer(customer, draw(st.sampled_from([None, "MT", "GB"])))
    except InvalidCustomer:
        reject()  # no email and no phone: nothing to plan (the property tests above cover it)
    profile = None
    if draw(st.integers(0, 4)):  # mostly an existing profile
        attributes: dict[str, Any] = {}
        for path, new in mapped.fields.items():
            state = draw(st.sampled_from(["absent", "null", "empty", "same", "other"]))
            if state == "null":
                set_path(attributes, path, None)
            elif state == "empty":
                set_path(attributes, path, draw(st.sampled_from(["", [], {}])))
            elif state == "same":
                set_path(attributes, path, draw(variant_of(new)))
            elif state == "other":
                set_path(attributes, path, draw(OTHER_VALUES))
        attributes["email"] = draw(st.sampled_from([mapped.email, (mapped.email or "").upper() or None, None,
                                                    "someone.else@example.com"]))
        attributes["external_id"] = draw(st.sampled_from([customer.id, None, "", "another-loyale-customer"]))
        for key, value in draw(st.dictionaries(st.text(min_size=1, max_size=8), OTHER_VALUES, max_size=3)).items():
            set_path(attributes, f"properties.{key}", value)   # properties outside the mapping
        attributes["subscriptions"] = {"email": {"marketing": {
            "suppression": [{"reason": r} for r in draw(REASONS)]}}}
        profile = KlaviyoProfile(id="01KEXISTING000000000000000", attributes=attributes)
    memory = Memory(suppressed_by_us=draw(st.booleans()))
    return customer, mapped, profile, draw(POLICIES), memory


# --- (d) parsing and mapping never crash ------------------------------------------------------------------


@FAST
@given(raw_records())
def test_parsing_and_mapping_raise_only_the_documented_errors(raw):
    try:
        customer, warnings = parse_customer(raw)
    except ValidationError:
        assert not usable_id(raw.get("id")), "a record with a usable id must parse; bad values are dropped"
        return
    assert usable_id(raw.get("id")), f"a record without a usable id parsed as {customer.id!r}"
    assert all(isinstance(w, str) for w in warnings)
    for region in (None, "MT"):
        try:
            mapped = map_customer(customer, region)
        except InvalidCustomer as exc:
            assert str(exc)
            continue
        assert_sendable(to_attributes(mapped.fields))


@FAST
@given(hostile_payloads())
def test_a_hostile_value_drops_only_its_own_field(payload):
    customer, warnings = parse_customer(payload)
    mapped = map_customer(customer, "MT")
    assert mapped.fields["email"] == "jane@example.com"
    assert mapped.fields["external_id"] == "c-1"
    assert mapped.fields["organization"] == "Loyale"
    assert_sendable(to_attributes(mapped.fields))
    for path, value in mapped.fields.items():
        texts = value if isinstance(value, list) else [value]
        for text in (t for t in texts if isinstance(t, str)):
            assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text), (path, text)
            assert text == text.strip() and text, (path, text)
            if path in ("first_name", "last_name") or path.startswith("location."):
                assert len(text) <= MAX_TEXT_CHARS, path
    assert all(isinstance(w, str) for w in warnings + mapped.warnings)


# --- (a) (b) (c) the merge policy ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(worlds())
def test_plans_send_no_null_keep_klaviyo_values_with_merge_off_and_are_idempotent(world):
    customer, mapped, profile, policy, memory = world
    match = match_for(profile, customer, mapped.email)
    plan = plan_sync(customer, mapped, match, policy, memory)
    found = match.by_email or match.by_external_id

    # (a) nothing null is ever sent, and what is sent is valid JSON
    assert_sendable(plan.attributes)
    assert all(c.new is not None for c in plan.changes)
    for email in (plan.suppress_email, plan.unsuppress_email):
        assert email is None or (isinstance(email, str) and email)
    if plan.write is None:
        assert plan.changes == ()

    after = applied(found, plan) if plan.writes_anything else found

    # (b) merge off: an existing non-empty Klaviyo value never changes
    if not policy.merge_customers and found is not None:
        assert plan.overwrites == ()
        before_leaves, after_leaves = leaves(found.attributes), leaves(after.attributes)
        for path, old in before_leaves.items():
            if not is_empty(old):
                assert after_leaves.get(path) == old, (path, old, after_leaves.get(path), plan.reason)
        if policy.existing_profiles == "skip":
            assert plan.write is None

    # merge on (and any create): an opted-in customer's profile ends up holding every mapped field
    if plan.outcome == Outcome.CREATED or (policy.merge_customers and customer.opted_in and plan.outcome in (
            Outcome.UPDATED, Outcome.UNCHANGED, Outcome.UNSUPPRESSED)):
        differ = [p for p, v in mapped.fields.items()
                  if not (same(after.value(p), v) or (p == "email" and after.email == v))]
        assert differ == [], (plan.outcome, differ)

    # (c) planning again against the result writes nothing
    again_memory = Memory(
        last_synced=customer.updated_date,
        suppressed_by_us=True if plan.suppress_email else False if plan.unsuppress_email else memory.suppressed_by_us,
    )
    again = plan_sync(customer, mapped, match_for(after, customer, mapped.email), policy, again_memory)
    assert not again.writes_anything, (plan.outcome, plan.reason, again.outcome, again.reason, again.changes)
    assert again.outcome in (Outcome.UNCHANGED, Outcome.SKIPPED_EXISTING, Outcome.SKIPPED_NO_CONSENT,
                             Outcome.CONFLICT), again.outcome


@FAST
@given(hostile_payloads(), st.sampled_from(["JANE@EXAMPLE.COM", "Jane@Example.com", "jane@EXAMPLE.com"]))
def test_an_email_differing_only_in_case_is_not_a_change(payload, klaviyo_email):
    """`same` promises emails compare case-insensitively: a profile holding every mapped value, its email
    in other capitals, is unchanged with merge on and has nothing to report as kept with merge off."""
    customer, _ = parse_customer({**payload, "marketingSub": True, "deleted": False, "onHold": False})
    mapped = map_customer(customer, "MT")
    attributes: dict[str, Any] = {}
    for path, value in mapped.fields.items():
        set_path(attributes, path, value)
    attributes["email"] = klaviyo_email
    profile = KlaviyoProfile(id="01KEXISTING000000000000000", attributes=attributes)
    match = Match(by_email=profile, by_external_id=profile)
    on = plan_sync(customer, mapped, match, Policy(True), Memory())
    assert (on.outcome, on.changes) == (Outcome.UNCHANGED, ())
    off = plan_sync(customer, mapped, match, Policy(False, "fill_empty"), Memory())
    assert (off.outcome, off.kept) == (Outcome.UNCHANGED, ())
