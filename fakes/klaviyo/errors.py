"""Klaviyo's JSON:API error envelope, as observed live (see the module docstring of `fakes.klaviyo`)."""

from __future__ import annotations

import uuid
from typing import Any

JSONAPI = "application/vnd.api+json"

TITLES = {
    "invalid": "Invalid input.",
    "not_found": "Not found.",
    "duplicate_profile": "Conflict.",
    "throttled": "Request was throttled.",
    "not_authenticated": "Authentication credentials were not provided.",
    "authentication_failed": "Incorrect authentication credentials.",
    "permission_denied": "You do not have permission to perform this action.",
    "method_not_allowed": "Method not allowed.",
    "unsupported_media_type": "Unsupported media type.",
    "request_too_large": "Request entity too large.",
    "error": "A server error occurred.",
    "service_unavailable": "Service unavailable.",
}

RATE_LIMIT_DOCS = "https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling#rate-limits"


def error_item(
    status: int,
    code: str,
    detail: str,
    *,
    pointer: str | None = None,
    parameter: str | None = None,
    meta: dict[str, Any] | None = None,
    links: dict[str, Any] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    source = {"parameter": parameter} if parameter is not None else {"pointer": pointer or "/data/"}
    return {
        "id": str(uuid.uuid4()),
        "status": status,
        "code": code,
        "title": title or TITLES.get(code, "Error."),
        "detail": detail,
        "source": source,
        "links": links or {},
        "meta": meta or {},
    }


class ApiError(Exception):
    """Raised by handlers; rendered as `{"errors": [...]}` with the first item's status."""

    def __init__(self, status: int, items: list[dict[str, Any]], headers: dict[str, str] | None = None):
        super().__init__(items[0]["detail"] if items else str(status))
        self.status = status
        self.items = items
        self.headers = headers or {}

    @classmethod
    def one(cls, status: int, code: str, detail: str, **kw: Any) -> ApiError:
        headers = kw.pop("headers", None)
        return cls(status, [error_item(status, code, detail, **kw)], headers)


def invalid(detail: str, *, pointer: str | None = None, parameter: str | None = None) -> ApiError:
    return ApiError.one(400, "invalid", detail, pointer=pointer, parameter=parameter)


def not_found(detail: str) -> ApiError:
    return ApiError.one(404, "not_found", detail)


def duplicate(owner_id: str, pointer: str = "/data/attributes") -> ApiError:
    return ApiError.one(
        409,
        "duplicate_profile",
        "A profile already exists with one of these identifiers.",
        pointer=pointer,
        meta={"duplicate_profile_id": owner_id},
    )


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
