"""The fake Loyale's Sieve implementation, tested as pure functions (no server)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.loyale.sieve import (
    FieldSet,
    FilterTerm,
    SieveError,
    SortTerm,
    compile_filters,
    page_window,
    parse_filters,
    parse_sorts,
    sort_records,
)

FIELDS = FieldSet(
    {"id": "guid", "email": "string", "firstName": "string", "lastName": "string", "updatedDate": "datetime",
     "marketingSub": "bool", "deleted": "bool", "gender": "number", "pointsValue": "number"}
)

PEOPLE = [
    {"id": "00000000-0000-4000-8000-000000000001", "email": "jane@x.com", "firstName": "Jane", "lastName": "Doe",
     "updatedDate": "2024-03-01T12:30:00.123456Z", "marketingSub": True, "gender": 1, "pointsValue": 10},
    {"id": "00000000-0000-4000-8000-000000000002", "email": "JOHN@x.com", "firstName": "John", "lastName": "Borg",
     "updatedDate": "2024-03-01T12:30:00Z", "marketingSub": False, "gender": 0, "pointsValue": 2.5},
    {"id": "00000000-0000-4000-8000-000000000003", "email": None, "firstName": "Zoë", "lastName": "Janssen",
     "updatedDate": "2023-12-31T23:59:59.999999Z", "marketingSub": True, "gender": 3, "pointsValue": 0},
    {"id": "00000000-0000-4000-8000-000000000004", "email": "a,b|c@x.com", "firstName": "Ann", "lastName": "Vella",
     "updatedDate": "not a date", "marketingSub": "yes", "gender": "2", "pointsValue": None},
]


def matching(filters: str, strict: bool = False) -> list[str]:
    compiled = compile_filters(parse_filters(filters), FIELDS, strict=strict)
    if compiled.predicate is None:
        return [p["firstName"] for p in PEOPLE]
    return [p["firstName"] for p in PEOPLE if compiled.predicate(p)]


def test_parse_splits_terms_names_values_and_escapes() -> None:
    terms = parse_filters(r"(firstName|lastName)@=*ja, email==a\,b\|c@x.com|x , gender>=1")
    assert terms == [
        FilterTerm(("firstName", "lastName"), "@=*", ("ja",)),
        FilterTerm(("email",), "==", ("a,b|c@x.com", "x")),
        FilterTerm(("gender",), ">=", ("1",)),
    ]
    # longest operator wins at a position; `null` is the null value and `\null` the string
    assert parse_filters("a!@=*x,b!=*y,c<=z,d==null,e==\\null,f") == [
        FilterTerm(("a",), "!@=*", ("x",)),
        FilterTerm(("b",), "!=*", ("y",)),
        FilterTerm(("c",), "<=", ("z",)),
        FilterTerm(("d",), "==", (None,)),
        FilterTerm(("e",), "==", ("null",)),
        FilterTerm(("f",), "", None),
    ]
    assert parse_sorts("updatedDate, -id") == [SortTerm("updatedDate", False), SortTerm("id", True)]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("firstName==Jane", ["Jane"]),
        ("firstName!=Jane", ["John", "Zoë", "Ann"]),
        ("firstName@=o", ["John", "Zoë"]),
        ("firstName_=J", ["Jane", "John"]),
        ("firstName!@=o", ["Jane", "Ann"]),
        ("firstName!_=J", ["Zoë", "Ann"]),
        ("firstName!@=*O", ["Jane", "Ann"]),
        ("firstName!_=*j", ["Zoë", "Ann"]),
        ("email==john@x.com", []),
        ("email==*john@X.COM", ["John"]),
        ("email@=*JOHN", ["John"]),
        ("lastName_=*ja", ["Zoë"]),
        ("firstName!=*JANE", ["John", "Zoë", "Ann"]),
        ("email==jane@x.com|JOHN@x.com", ["Jane", "John"]),
        ("(firstName|lastName)@=Jan", ["Jane", "Zoë"]),
        ("email==null", ["Zoë"]),
        ("email!=null", ["Jane", "John", "Ann"]),
        ("email@=x.com", ["Jane", "John", "Ann"]),  # a null email never matches a string operator
        ("email!@=zzz", ["Jane", "John", "Ann"]),  # ... negated or not
        (r"email==a\,b\|c@x.com", ["Ann"]),
        ("FIRSTNAME==Jane", ["Jane"]),  # property names are case-insensitive
        ("firstName==Jane,marketingSub==true", ["Jane"]),  # comma = AND
        ("marketingSub==false", ["John"]),
        ("marketingSub==True", ["Jane", "Zoë"]),  # hostile "yes" is not a bool, so it matches neither
        ("gender>=1", ["Jane", "Zoë"]),  # hostile "2" is not a number
        ("gender<1", ["John"]),
        ("pointsValue>2", ["Jane", "John"]),
        ("pointsValue<=0", ["Zoë"]),
        ("id==00000000-0000-4000-8000-000000000002", ["John"]),
        ("id==00000000-0000-4000-8000-000000000002".upper().replace("ID", "id"), ["John"]),
        ("nosuchfield==1,firstName==Jane", ["Jane"]),  # unknown names are ignored
        ("(nosuchfield|firstName)==Jane", ["Jane"]),
    ],
)
def test_operators(filters: str, expected: list[str]) -> None:
    assert matching(filters) == expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("updatedDate>=2024-03-01T12:30:00Z", ["Jane", "John"]),
        ("updatedDate>2024-03-01T12:30:00Z", ["Jane"]),  # .123456 is after :00
        ("updatedDate>2024-03-01T12:30:00.123456Z", []),
        ("updatedDate>=2024-03-01T12:30:00.123456", ["Jane"]),  # naive = UTC
        ("updatedDate<2024-01-01", ["Zoë"]),
        ("updatedDate>=2024-03-01T14:30:00+02:00", ["Jane", "John"]),
        ("updatedDate==2024-03-01T12:30:00.000Z", ["John"]),
    ],
)
def test_datetime_comparisons_are_typed(filters: str, expected: list[str]) -> None:
    # as strings, "2024-03-01T12:30:00Z" > "2024-03-01T12:30:00.123456Z" ('Z' > '.'): typed compare is needed
    assert matching(filters) == expected


def test_unknown_names_and_bad_values() -> None:
    with pytest.raises(SieveError):
        matching("nosuchfield==1", strict=True)
    with pytest.raises(SieveError):
        matching("firstName", strict=True)
    for bad in ("updatedDate>=yesterday", "marketingSub==1", "gender>=abc", "id==42", "updatedDate@=2024",
                "marketingSub>true", "gender==*1"):
        with pytest.raises(SieveError):
            matching(bad)
    assert matching("firstName") == ["Jane", "John", "Zoë", "Ann"]  # a term without operator is skipped


def test_sorting_is_typed_stable_and_multi_key() -> None:
    def names(sorts: str) -> list[str]:
        return [p["firstName"] for p in sort_records(PEOPLE, parse_sorts(sorts), FIELDS, strict=False)]

    # the hostile date counts as null: first ascending, last descending
    assert names("updatedDate") == ["Ann", "Zoë", "John", "Jane"]
    assert names("-updatedDate") == ["Jane", "John", "Zoë", "Ann"]
    assert names("marketingSub,-firstName") == ["Ann", "John", "Zoë", "Jane"]
    assert names("nosuch") == ["Jane", "John", "Zoë", "Ann"]
    with pytest.raises(SieveError):
        sort_records(PEOPLE, parse_sorts("nosuch"), FIELDS, strict=True)


def test_page_window_follows_sieve() -> None:
    assert page_window(125, 3, 50, 100, clamp=False) == page_window(125, 3, 50, 100, clamp=True)
    window = page_window(125, 3, 50, 100, clamp=False)
    assert (window.start, window.stop, window.total_pages) == (100, 125, 3)
    assert page_window(125, 4, 50, 100, clamp=False).start == 125  # past the end: empty
    # PageSize above the cap: 100 rows, but page 2 starts at row 500 (Sieve) unless clamped
    quirky = page_window(1000, 2, 500, 100, clamp=False)
    assert (quirky.start, quirky.stop, quirky.total_pages) == (500, 600, 2)
    clamped = page_window(1000, 2, 500, 100, clamp=True)
    assert (clamped.start, clamped.stop, clamped.total_pages) == (100, 200, 10)


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|")


@settings(max_examples=200, deadline=None)
@given(emails=st.lists(_text, min_size=1, max_size=6), wanted=st.lists(_text, min_size=1, max_size=3))
def test_or_of_escaped_values_is_set_membership(emails: list[str], wanted: list[str]) -> None:
    """`email==a|b` with escaped values selects exactly the records whose email is one of them."""
    wanted = [w.strip() for w in wanted]
    if any(w.lower() in ("null", "\\null") or w == "" for w in wanted):
        return
    if any(any(op in w for op in ("=", "<", ">")) for w in wanted) or wanted[0].startswith("*"):
        return  # operators inside values need their own escape; "==*x" is Sieve's case-insensitive "=="
    records = [{"email": e} for e in emails]
    compiled = compile_filters(parse_filters("email==" + "|".join(_escape(w) for w in wanted)),
                               FieldSet({"email": "string"}), strict=True)
    assert compiled.predicate is not None
    assert [r["email"] for r in records if compiled.predicate(r)] == [e for e in emails if e in wanted]
