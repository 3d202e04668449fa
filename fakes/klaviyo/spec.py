"""What the fake reads from Klaviyo's OpenAPI file: rate limits and scopes per operation, and
(optionally) a request validator.

The spec is read at runtime from a path (never copied into the project). Without it the fake falls
back to a small built-in table for the operations it implements and says so in the log.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakes.klaviyo.ratelimit import Limit

log = logging.getLogger("fakes.klaviyo")

TIERS = {
    "XS": (Limit(1, 1.0), Limit(15, 60.0)),
    "M": (Limit(10, 1.0), Limit(150, 60.0)),
    "L": (Limit(75, 1.0), Limit(750, 60.0)),
    "XL": (Limit(350, 1.0), Limit(3500, 60.0)),
}

#: The operations the fake implements: (method, spec path template) -> (tier, scopes).
BUILTIN: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("GET", "/api/accounts"): ("XS", ("accounts:read",)),
    ("GET", "/api/profiles"): ("L", ("profiles:read",)),
    ("POST", "/api/profiles"): ("L", ("profiles:write",)),
    ("GET", "/api/profiles/{id}"): ("L", ("profiles:read",)),
    ("PATCH", "/api/profiles/{id}"): ("L", ("profiles:write",)),
    ("POST", "/api/profile-import"): ("L", ("profiles:write",)),
    ("POST", "/api/profile-bulk-import-jobs"): ("M", ("lists:write", "profiles:write")),
    ("GET", "/api/profile-bulk-import-jobs/{job_id}"): ("M", ("lists:read", "profiles:read")),
    ("GET", "/api/profile-bulk-import-jobs/{id}/import-errors"): ("M", ("profiles:read",)),
    ("POST", "/api/profile-suppression-bulk-create-jobs"): ("L", ("profiles:write", "subscriptions:write")),
    ("GET", "/api/profile-suppression-bulk-create-jobs/{job_id}"): ("L", ("subscriptions:read",)),
    ("POST", "/api/profile-suppression-bulk-delete-jobs"): ("L", ("subscriptions:write",)),
    ("GET", "/api/profile-suppression-bulk-delete-jobs/{job_id}"): ("L", ("subscriptions:read",)),
    ("GET", "/api/events"): ("XL", ("events:read",)),
    ("POST", "/api/events"): ("XL", ("events:write",)),
    ("GET", "/api/events/{id}"): ("M", ("events:read",)),
    ("POST", "/api/event-bulk-create-jobs"): ("M", ("events:write",)),
    ("GET", "/api/metrics"): ("M", ("metrics:read",)),
    ("GET", "/api/metrics/{id}"): ("M", ("metrics:read",)),
}

BUILTIN_SCOPES = frozenset(
    s
    for base in ("accounts", "profiles", "lists", "subscriptions", "segments", "events", "metrics", "push-tokens")
    for s in (f"{base}:read", f"{base}:write")
)

_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smhd])\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_rate(text: str) -> Limit:
    """`"75/s"` -> Limit(75, 1.0); `"750/m"` -> Limit(750, 60.0)."""
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"unrecognised rate limit {text!r}")
    return Limit(int(m.group(1)), _PERIODS[m.group(2)])


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    burst: Limit
    steady: Limit
    scopes: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


@dataclass
class SpecInfo:
    path: Path
    #: "spec" when read from the file, "builtin" after a fallback.
    source: str
    operations: dict[tuple[str, str], Operation]
    all_scopes: frozenset[str]
    raw: dict[str, Any] | None


def load_spec_info(path: Path) -> SpecInfo:
    raw: dict[str, Any] | None = None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("Klaviyo spec not readable at %s (%s): using the built-in rate-limit/scope table", path, exc)
    ops: dict[tuple[str, str], Operation] = {}
    scopes: set[str] = set(BUILTIN_SCOPES)
    for (method, template), (tier, builtin_scopes) in BUILTIN.items():
        burst, steady = TIERS[tier]
        op_scopes = builtin_scopes
        spec_op = (raw or {}).get("paths", {}).get(template, {}).get(method.lower()) if raw else None
        if spec_op:
            limits = spec_op.get("x-klaviyo-ratelimit") or {}
            if "burst" in limits and "steady" in limits:
                burst, steady = parse_rate(limits["burst"]), parse_rate(limits["steady"])
            op_scopes = tuple(spec_op.get("x-klaviyo-scopes") or builtin_scopes)
        elif raw is not None:
            log.warning("operation %s %s missing from the spec: using the built-in table", method, template)
        ops[(method, template)] = Operation(method, template, burst, steady, tuple(op_scopes))
    if raw is not None:
        for item in raw.get("paths", {}).values():
            for op in item.values():
                if isinstance(op, dict):
                    scopes.update(op.get("x-klaviyo-scopes") or ())
    return SpecInfo(path, "spec" if raw is not None else "builtin", ops, frozenset(scopes), raw)


class _Request:
    """The request protocol openapi-core expects."""

    def __init__(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                 body: bytes, content_type: str):
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.host_url = "https://a.klaviyo.com"
        self.path = path
        self.method = method.lower()
        self.body = body
        self.content_type = content_type
        self.parameters = RequestParameters(
            path={}, query=ImmutableMultiDict(query), header=Headers(headers), cookie=ImmutableMultiDict()
        )


def allow_null_in_nullable_oneof(schema: Any) -> Any:
    """Make `{nullable: true, oneOf: [...]}` (no `type`) accept null, in place.

    Klaviyo's spec writes nullable unions this way (e.g. `location.latitude`, `patch_properties.unset`),
    but OpenAPI 3.0.3 lets `nullable` act only next to `type`, so validators reject the null Klaviyo
    itself sends. A `{"enum": [null]}` branch says what the spec means.
    """
    if isinstance(schema, dict):
        union = schema.get("oneOf")
        if schema.get("nullable") is True and "type" not in schema and isinstance(union, list) \
                and {"enum": [None]} not in union:
            schema["oneOf"] = [*union, {"enum": [None]}]
        for value in schema.values():
            allow_null_in_nullable_oneof(value)
    elif isinstance(schema, list):
        for value in schema:
            allow_null_in_nullable_oneof(value)
    return schema


def build_openapi(raw: dict[str, Any]) -> Any:
    """openapi-core's `OpenAPI` for Klaviyo's spec (a copy, with nullable unions fixed)."""
    from openapi_core import Config, OpenAPI

    # The file is Klaviyo's published spec: checking the spec itself would only cost time.
    return OpenAPI.from_dict(allow_null_in_nullable_oneof(json.loads(json.dumps(raw))),
                             config=Config(spec_validator_cls=None))


class SpecValidator:
    """openapi-core over the loaded spec; built once (loading the 3 MB spec is the slow part)."""

    def __init__(self, raw: dict[str, Any]):
        self._api = build_openapi(raw)

    def request_error(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                      body: bytes, content_type: str) -> str | None:
        """None when the request satisfies the spec, else a readable reason."""
        # Klaviyo accepts `application/json` as well as the spec's only media type.
        if content_type.split(";")[0].strip().lower() == "application/json":
            content_type = "application/vnd.api+json"
        request = _Request(method, path.rstrip("/") or "/", query, headers, body, content_type)
        try:
            self._api.validate_request(request)
        except Exception as exc:  # openapi-core raises a family of errors; all count as violations
            return describe_validation_error(exc)
        return None


def describe_validation_error(exc: BaseException) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    seen: set[int] = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        parts.append(f"{type(cause).__name__}: {cause}")
        for sub in getattr(cause, "schema_errors", ()) or ():
            parts.append(getattr(sub, "message", str(sub)))
        cause = cause.__cause__ or cause.__context__
    return " | ".join(p for p in parts if p)[:2000]
