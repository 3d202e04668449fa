"""Klaviyo's `filter=` mini-language, for the subset the fake supports on `GET /api/profiles`.

Grammar (https://developers.klaviyo.com/en/docs/filtering_):

    filters   := condition ("," condition)*          -- comma = AND
    condition := "and(" filters ")" | op "(" field "," value ")"
    value     := "..." | '...' | "[" value ("," value)* "]" | bare   -- bare: datetime, number, true/false/null

Pure functions: `parse_filter` returns conditions or raises `FilterError` with a message fit for
the 400 `detail`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

IDENTIFIER_FIELDS = ("id", "email", "phone_number", "external_id")
DATETIME_FIELDS = ("created", "updated")
SUPPRESSION_REASON = "subscriptions.email.marketing.suppression.reason"

#: field -> operators the fake evaluates.
SUPPORTED: dict[str, tuple[str, ...]] = {
    **{f: ("equals", "any") for f in IDENTIFIER_FIELDS},
    **{f: ("greater-than", "less-than") for f in DATETIME_FIELDS},
    SUPPRESSION_REASON: ("equals",),
}

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


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class Condition:
    op: str
    field: str
    value: Any


def parse_filter(text: str, *, max_any_values: int = 0) -> list[Condition]:
    parser = _Parser(text)
    conditions = parser.conditions()
    if parser.pos != len(text):
        raise FilterError(f"Invalid filter provided: unexpected {text[parser.pos:parser.pos + 10]!r}")
    return [_check(c, max_any_values) for c in conditions]


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


def _check(cond: Condition, max_any_values: int) -> Condition:
    if cond.field in NOT_MODELLED:
        raise FilterError(f"Filtering on '{cond.field}' is valid in Klaviyo but not modelled by the fake")
    ops = SUPPORTED.get(cond.field)
    if ops is None:
        raise FilterError(f"'{cond.field}' is not a valid field for the resource 'profile'.")
    if cond.op not in ops:
        raise FilterError(f"'{cond.op}' is not a valid operator for filter field '{cond.field}'.")
    if cond.op == "any":
        if not isinstance(cond.value, list) or not all(isinstance(v, str) for v in cond.value):
            raise FilterError(f"'any' on '{cond.field}' needs a list of strings")
        if max_any_values and len(cond.value) > max_any_values:
            raise FilterError(f"'any' accepts at most {max_any_values} values")
        return cond
    if cond.op == "equals":
        if not isinstance(cond.value, str):
            raise FilterError(f"'equals' on '{cond.field}' needs a string value")
        return cond
    value = cond.value
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
