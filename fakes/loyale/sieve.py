"""Sieve-style `Filters` / `Sorts` / paging, as Loyale's list endpoints speak them (pure functions).

Loyale documents its query language as the Sieve README (Biarity/Sieve); this module follows Sieve's
own parser: terms split on unescaped commas, a term's operator is the first unescaped operator in it
(longest alternative first), names and values split on unescaped `|`, `(a|b)` groups names, `\\,`
`\\|` `\\\\` and `\\<operator>` are escapes, `null` is the null value and `\\null` the string "null".

Semantics we chose where Sieve's depend on the database (EF Core) and Loyale's are unknown:
- strings compare ordinally and case-sensitively unless the operator ends in `*` (Sieve upper-cases
  both sides); a SQL Server case-insensitive collation would behave differently (UNCONFIRMED);
- null: `==null` matches missing/null, `!=` matches null fields, ordering and string operators never
  match a null field, negated or not (SQL three-valued logic);
- a stored value of the wrong type (hostile test data) counts as null for its field.
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fakes.loyale_data import parse_datetime

FieldType = Literal["string", "guid", "datetime", "bool", "number"]
Record = Mapping[str, Any]
Predicate = Callable[[Record], bool]

_OPERATORS = r"(!@=\*|!_=\*|!=\*|!@=|!_=|==\*|@=\*|_=\*|==|!=|>=|<=|>|<|@=|_=)"
_OPERATOR_RE = re.compile(r"(?<!\\)" + _OPERATORS)
_ESCAPED_OPERATOR_RE = re.compile(r"\\" + _OPERATORS)


class SieveError(ValueError):
    """A query Sieve would reject (unknown name in strict mode, a value it cannot convert, ...)."""


@dataclass(frozen=True)
class FilterTerm:
    names: tuple[str, ...]
    operator: str  # "" when the term has none
    values: tuple[str | None, ...] | None  # None when the term has no operator/value part


@dataclass(frozen=True)
class SortTerm:
    name: str
    descending: bool


def split_unescaped(text: str, sep: str) -> list[str]:
    """Split on `sep` unless it is escaped by a backslash; escapes stay in the parts."""
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def unescape_value(raw: str) -> str | None:
    """A filter value as Sieve sees it: `null` is None, `\\null` is "null", escapes are removed."""
    raw = raw.strip()
    if raw.lower() == "null":
        return None
    if raw.lower() == "\\null":
        return raw[1:]
    raw = _ESCAPED_OPERATOR_RE.sub(lambda m: m.group(1), raw)
    out: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] in ",|\\":
            out.append(raw[i + 1])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out).strip()


def parse_filter_term(raw: str) -> FilterTerm:
    text = raw.strip()
    if text.startswith("("):
        close = text.rfind(")")
        if close > 0:
            text = text[1:close].replace("(", "").replace(")", "") + text[close + 1 :]
    pieces = _OPERATOR_RE.split(text)
    names = tuple(n.strip() for n in split_unescaped(pieces[0], "|") if n.strip())
    if len(pieces) < 3:
        return FilterTerm(names=names, operator="", values=None)
    # Like Sieve, anything after a second unescaped operator is dropped (`a==b==c` means a==b).
    values = tuple(unescape_value(v) for v in split_unescaped(pieces[2], "|"))
    return FilterTerm(names=names, operator=pieces[1], values=values)


def parse_filters(filters: str | None) -> list[FilterTerm]:
    if not filters or not filters.strip():
        return []
    return [parse_filter_term(part) for part in split_unescaped(filters, ",") if part.strip()]


def parse_sorts(sorts: str | None) -> list[SortTerm]:
    if not sorts:
        return []
    terms = []
    for part in sorts.split(","):
        part = part.strip()
        if part:
            terms.append(SortTerm(name=part.lstrip("-").strip(), descending=part.startswith("-")))
    return terms


class FieldSet:
    """The filterable/sortable properties of one resource; names match case-insensitively (Sieve's
    default `CaseSensitive: false`)."""

    def __init__(self, fields: Mapping[str, FieldType]) -> None:
        self.fields = dict(fields)
        self._by_lower = {name.lower(): name for name in fields}

    def resolve(self, name: str) -> str | None:
        return self._by_lower.get(name.strip().lower())


# ---- typed coercion -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 18)
def _parse_stored_datetime(text: str) -> datetime | None:
    try:
        return parse_datetime(text)
    except ValueError:
        return None


def coerce_stored(ftype: FieldType, value: Any) -> Any:
    """A stored value as the typed column would hold it; anything that does not fit is None."""
    if value is None:
        return None
    if ftype == "string":
        return value if isinstance(value, str) else None
    if ftype == "guid":
        return value.lower() if isinstance(value, str) else None
    if ftype == "datetime":
        if isinstance(value, str):
            return _parse_stored_datetime(value)
        return value if isinstance(value, datetime) else None
    if ftype == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if isinstance(value, float) and math.isnan(value) else value


def convert_value(ftype: FieldType, raw: str | None) -> Any:
    """A filter value converted to the property's type, or SieveError (what .NET's converters do)."""
    if raw is None:
        return None
    try:
        if ftype == "string":
            return raw
        if ftype == "guid":
            return str(uuid.UUID(raw))
        if ftype == "datetime":
            return parse_datetime(raw)
        if ftype == "bool":
            lowered = raw.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError(f"{raw!r} is not a valid value for Boolean")
            return lowered == "true"
        number = float(raw)
        if math.isnan(number):
            raise ValueError("NaN")
        return int(number) if number.is_integer() and "." not in raw else number
    except ValueError as exc:
        raise SieveError(f"Cannot convert {raw!r} to {ftype}: {exc}") from exc


# ---- filtering -------------------------------------------------------------------------------------

_BASE_KIND = {
    "==": "eq", "!=": "ne", "<": "lt", ">": "gt", ">=": "ge", "<=": "le",
    "@=": "contains", "!@=": "contains", "_=": "starts", "!_=": "starts",
}


def _make_test(field: str, ftype: FieldType, operator: str, raw: str | None) -> Predicate:
    base = operator.rstrip("*")
    insensitive = operator.endswith("*")
    kind = _BASE_KIND[base]
    negated = base in ("!@=", "!_=")
    if ftype != "string" and (insensitive or kind in ("contains", "starts")):
        raise SieveError(f"Operator {operator} is not defined for {field} ({ftype})")
    if ftype in ("bool", "guid") and kind in ("lt", "gt", "ge", "le"):
        raise SieveError(f"Operator {operator} is not defined for {field} ({ftype})")
    want = convert_value(ftype, raw)
    if want is None and kind in ("contains", "starts"):
        raise SieveError(f"Operator {operator} needs a value")
    if insensitive and want is not None:
        want = want.upper()

    def get(record: Record) -> Any:
        value = coerce_stored(ftype, record.get(field))
        if insensitive and value is not None:
            value = value.upper()
        return value

    if kind == "eq":
        return lambda r: get(r) == want
    if kind == "ne":
        return lambda r: get(r) != want
    if kind in ("contains", "starts"):
        def string_test(r: Record) -> bool:
            value = get(r)
            if value is None:
                return False  # NULL LIKE ... is unknown, and NOT(unknown) is unknown too
            hit = (want in value) if kind == "contains" else value.startswith(want)
            return hit != negated

        return string_test
    if want is None:
        return lambda r: False
    compare = {
        "lt": lambda a: a < want, "gt": lambda a: a > want,
        "ge": lambda a: a >= want, "le": lambda a: a <= want,
    }[kind]

    def ordered(r: Record) -> bool:
        value = get(r)
        return value is not None and compare(value)

    return ordered


@dataclass
class CompiledFilters:
    predicate: Predicate | None  # None: nothing to filter on
    fields_used: frozenset[str]  # canonical names that took part (e.g. "deleted")
    equality: dict[str, tuple[str, ...]]  # field -> values of plain `==` terms on a single name


def compile_filters(terms: Sequence[FilterTerm], fields: FieldSet, *, strict: bool) -> CompiledFilters:
    """AND of terms, OR within a term across names and values. Unknown names are skipped (Sieve's
    default) unless `strict`; a value that cannot be converted raises SieveError either way."""
    term_tests: list[list[Predicate]] = []
    used: set[str] = set()
    equality: dict[str, tuple[str, ...]] = {}
    for term in terms:
        if term.values is None:
            if strict:
                raise SieveError(f"Filter term {','.join(term.names)!r} has no operator or value")
            continue
        tests: list[Predicate] = []
        resolved: list[str] = []
        for name in term.names:
            field = fields.resolve(name)
            if field is None:
                if strict:
                    raise SieveError(f"Property {name!r} is not filterable")
                continue
            resolved.append(field)
            for value in term.values:
                tests.append(_make_test(field, fields.fields[field], term.operator, value))
        if not tests:
            continue
        used.update(resolved)
        term_tests.append(tests)
        if term.operator == "==" and len(resolved) == 1 and None not in term.values:
            equality[resolved[0]] = tuple(v for v in term.values if v is not None)
    if not term_tests:
        return CompiledFilters(None, frozenset(used), equality)

    def predicate(record: Record) -> bool:
        for tests in term_tests:
            for test in tests:
                if test(record):
                    break
            else:
                return False
        return True

    return CompiledFilters(predicate, frozenset(used), equality)


# ---- sorting and paging ----------------------------------------------------------------------------


def sort_records(
    records: list[Record], sorts: Sequence[SortTerm], fields: FieldSet, *, strict: bool
) -> list[Record]:
    """Stable multi-key sort; nulls first ascending (EF/SQL Server order), last descending."""
    keys: list[tuple[str, FieldType, bool]] = []
    for term in sorts:
        field = fields.resolve(term.name)
        if field is None:
            if strict:
                raise SieveError(f"Property {term.name!r} is not sortable")
            continue
        keys.append((field, fields.fields[field], term.descending))
    result = list(records)
    for field, ftype, descending in reversed(keys):
        def key(record: Record, field: str = field, ftype: FieldType = ftype) -> tuple[Any, ...]:
            value = coerce_stored(ftype, record.get(field))
            return (0,) if value is None else (1, value)

        result.sort(key=key, reverse=descending)
    return result


@dataclass(frozen=True)
class PageWindow:
    start: int
    stop: int
    total_pages: int


def page_window(total: int, page: int, page_size: int, max_page_size: int, *, clamp: bool) -> PageWindow:
    """Sieve's paging: skip (page-1)*PageSize, take min(PageSize, max). Unless `clamp`, the skip uses
    the *requested* size, so PageSize=500 with a cap of 100 silently skips rows between pages, as
    Sieve does (whether Loyale's API does too is UNCONFIRMED)."""
    taken = min(page_size, max_page_size)
    stride = taken if clamp else page_size
    start = (page - 1) * stride
    total_pages = math.ceil(total / stride) if stride else 0
    return PageWindow(start=min(start, total), stop=min(start + taken, total), total_pages=total_pages)
