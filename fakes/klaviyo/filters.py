"""Klaviyo's `filter=` mini-language, for the fields the fake supports on each resource.

Grammar (https://developers.klaviyo.com/en/docs/filtering_):

    filters   := condition ("," condition)*          -- comma = AND
    condition := "and(" filters ")" | op "(" field ["," value] ")"   -- no value: `has(profile)`
    value     := "..." | '...' | "[" value ("," value)* "]" | bare   -- bare: datetime, number, true/false/null

Pure functions: `parse_filter` returns conditions or raises `FilterError` with a message fit for
the 400 `detail`. Each resource has a table field -> operator -> kind of value (the resource's
`x-klaviyo-filters` in the spec, as far as the fake answers them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

IDENTIFIER_FIELDS = ("id", "email", "phone_number", "external_id")
DATETIME_FIELDS = ("created", "updated")
SUPPRESSION_REASON = "subscriptions.email.marketing.suppression.reason"

#: Kinds of value: "str", "list" (of strings), "str|list", "datetime", "number", "none" (no value).
Rules = dict[str, dict[str, str]]

#: GET /api/profiles: field -> operator -> kind of value.
PROFILE_FILTERS: Rules = {
    **{f: {"equals": "str", "any": "list"} for f in IDENTIFIER_FIELDS},
    **{f: {"greater-than": "datetime", "less-than": "datetime"} for f in DATETIME_FIELDS},
    SUPPRESSION_REASON: {"equals": "str"},
}

_COMPARE = ("greater-or-equal", "greater-than", "less-or-equal", "less-than")
#: GET /api/events, all of the spec's `x-klaviyo-filters` (`metric_id` takes one id or a list).
EVENT_FILTERS: Rules = {
    "metric_id": {"equals": "str|list"},
    "profile_id": {"equals": "str"},
    "profile": {"has": "none"},
    "metric": {"has": "none"},
    "datetime": dict.fromkeys(_COMPARE, "datetime"),
    "timestamp": dict.fromkeys(_COMPARE, "number"),
}
#: GET /api/metrics.
METRIC_FILTERS: Rules = {"integration.name": {"equals": "str"}, "integration.category": {"equals": "str"}}

#: Valid in Klaviyo's spec but not modelled here: a clear 400 beats a silent wrong answer.
NOT_MODELLED = (
    "_kx",
    "subscriptions.email.marketing.list_suppressions.reason",
    "subscriptions.email.marketing.list_suppressions.timestamp",
    "subscriptions.email.marketing.list_suppressions.list_id",
    "subscriptions.email.marketing.suppression.timestamp",
)

_OP = re.compile(r"[a-z][a-z-]*")
_FIELD = re.compile(r"[A-Za-z_$][A-Za-z0-9_.$-]*")
_BARE = re.compile(r"[^,()\[\]\s]+")
#: The value of a condition written without one (`has(profile)`).
NO_VALUE = None


class FilterError(ValueError):
    pass


class _Missing:
    def __repr__(self) -> str:
        return "<no value>"


#: What the parser gives a condition written without a value, before `_check`.
_MISSING: Any = _Missing()


@dataclass(frozen=True)
class Condition:
    op: str
    field: str
    value: Any


def parse_filter(text: str, *, max_any_values: int = 0, rules: Rules | None = None, resource: str = "profile",
                 not_modelled: tuple[str, ...] = NOT_MODELLED) -> list[Condition]:
    """Conditions of `text`, checked against `rules` (default: the profile fields)."""
    parser = _Parser(text)
    conditions = parser.conditions()
    if parser.pos != len(text):
        raise FilterError(f"Invalid filter provided: unexpected {text[parser.pos:parser.pos + 10]!r}")
    table = PROFILE_FILTERS if rules is None else rules
    return [_check(c, max_any_values, table, resource, not_modelled) for c in conditions]


def parse_datetime(value: str) -> datetime:
    """ISO-8601 date or datetime; naive values are UTC, `Z` is accepted."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FilterError(f"Invalid datetime {value!r}") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _check(cond: Condition, max_any_values: int, rules: Rules, resource: str,
           not_modelled: tuple[str, ...]) -> Condition:
    if cond.field in not_modelled:
        raise FilterError(f"Filtering on '{cond.field}' is valid in Klaviyo but not modelled by the fake")
    ops = rules.get(cond.field)
    if ops is None:
        raise FilterError(f"'{cond.field}' is not a valid field for the resource '{resource}'.")
    kind = ops.get(cond.op)
    if kind is None:
        raise FilterError(f"'{cond.op}' is not a valid operator for filter field '{cond.field}'.")
    value = cond.value
    if kind == "none":
        if value is not _MISSING:
            raise FilterError(f"'{cond.op}' on '{cond.field}' takes no value")
        return Condition(cond.op, cond.field, NO_VALUE)
    if value is _MISSING:
        raise FilterError(f"'{cond.op}' on '{cond.field}' needs a value")
    is_list = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "list" or (kind == "str|list" and isinstance(value, list)):
        if not is_list:
            raise FilterError(f"'{cond.op}' on '{cond.field}' needs a list of strings")
        if max_any_values and len(value) > max_any_values:
            raise FilterError(f"'{cond.op}' accepts at most {max_any_values} values")
        return cond
    if kind in ("str", "str|list"):
        if not isinstance(value, str):
            raise FilterError(f"'{cond.op}' on '{cond.field}' needs a string value")
        return cond
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FilterError(f"'{cond.op}' on '{cond.field}' needs a number")
        return cond
    if isinstance(value, str):
        value = parse_datetime(value)
    if not isinstance(value, datetime):
        raise FilterError(f"'{cond.op}' on '{cond.field}' needs a datetime value")
    return Condition(cond.op, cond.field, value)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def conditions(self) -> list[Condition]:
        out = self.condition()
        while self._peek() == ",":
            self.pos += 1
            out += self.condition()
        return out

    def condition(self) -> list[Condition]:
        op = self._match(_OP, "an operator")
        self._expect("(")
        if op == "and":
            inner = self.conditions()
            self._expect(")")
            return inner
        if op in ("or", "not"):
            raise FilterError(f"The '{op}' operator is not supported by the fake")
        field = self._match(_FIELD, "a field name")
        if self._peek() == ")":
            self.pos += 1
            return [Condition(op, field, _MISSING)]
        self._expect(",")
        value = self.value()
        self._expect(")")
        return [Condition(op, field, value)]

    def value(self) -> Any:
        ch = self._peek()
        if ch in ('"', "'"):
            return self._string(ch)
        if ch == "[":
            self.pos += 1
            items: list[Any] = []
            if self._peek() == "]":
                self.pos += 1
                return items
            items.append(self.value())
            while self._peek() == ",":
                self.pos += 1
                items.append(self.value())
            self._expect("]")
            return items
        token = self._match(_BARE, "a value")
        return _bare(token)

    def _string(self, quote: str) -> str:
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if ch == quote:
                return "".join(out)
            out.append(ch)
        raise FilterError("Invalid filter provided: unterminated string")

    def _peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _expect(self, ch: str) -> None:
        if self._peek() != ch:
            raise FilterError(f"Invalid filter provided: expected {ch!r} at position {self.pos}")
        self.pos += 1

    def _match(self, pattern: re.Pattern[str], what: str) -> str:
        self._peek()
        m = pattern.match(self.text, self.pos)
        if not m:
            raise FilterError(f"Invalid filter provided: expected {what} at position {self.pos}")
        self.pos = m.end()
        return m.group(0)


def _bare(token: str) -> Any:
    if token in ("true", "false"):
        return token == "true"
    if token == "null":
        return None
    try:
        return parse_datetime(token) if re.match(r"\d{4}-\d{2}-\d{2}", token) else _number(token)
    except (FilterError, ValueError):
        raise FilterError(f"Invalid filter provided: unquoted value {token!r}") from None


def _number(token: str) -> int | float:
    return float(token) if any(c in token for c in ".eE") else int(token)
