"""What every `/api` handler shares: the request, its context, the reply, body and query checks, and
cursor paging. Handlers of each resource (`api` for profiles and jobs, `events` for events and
metrics) build on these."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from fakes.klaviyo.errors import JSONAPI, ApiError, invalid
from fakes.klaviyo.profiles import ProfileStore
from fakes.klaviyo.spec import Operation
from fakes.klaviyo.state import Account, FakeKlaviyo

KB = 1024
#: The body was not JSON (kept apart from a JSON `null`).
NO_JSON = object()

T = TypeVar("T")


@dataclass
class ApiRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    #: scheme://host of the request, for collection links a client can follow back to the fake.
    base_url: str
    json: Any = NO_JSON


@dataclass
class Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    account_id: str | None = None


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    """`payload` None = no body at all (Klaviyo's bare 202 for events)."""
    if payload is None:
        return Reply(status, b"", list((headers or {}).items()))
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Reply(status, body, [("content-type", JSONAPI), *(headers or {}).items()])


def error_reply(err: ApiError, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(err.status, {"errors": err.items}, {**err.headers, **(headers or {})})


def normalize_path(path: str) -> str:
    return path.rstrip("/") or "/"


@dataclass
class Ctx:
    fake: FakeKlaviyo
    account: Account
    req: ApiRequest
    params: dict[str, str]
    query: dict[str, str]
    op: Operation

    @property
    def store(self) -> ProfileStore:
        return self.account.store

    def body_json(self, limit: int) -> Any:
        ctype = self.req.headers.get("content-type", "")
        media = ctype.split(";")[0].strip().lower()
        if media not in ("application/json", JSONAPI):
            raise ApiError.one(415, "unsupported_media_type", f'Unsupported media type "{ctype}" in request.')
        encoding = self.req.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ApiError.one(415, "unsupported_media_type",
                               f'Unsupported content encoding "{encoding}" (the fake reads plain bodies only).')
        if len(self.req.body) > limit:
            raise ApiError.one(413, "request_too_large",
                               f"Request body of {len(self.req.body)} bytes exceeds the maximum allowed "
                               f"payload size of {size_text(limit)}.")
        if self.req.json is not NO_JSON:
            return self.req.json
        try:
            return json.loads(self.req.body)
        except ValueError as exc:
            raise invalid(f"JSON parse error - {exc}", pointer="/") from None


def size_text(limit: int) -> str:
    return f"{limit // (KB * KB)}MB" if limit >= KB * KB else f"{limit // KB}KB"


def require_data(body: Any, resource_type: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise invalid("The request body must be a JSON:API document with a 'data' object.", pointer="/data")
    data = body["data"]
    if data.get("type") != resource_type:
        raise invalid(f"'{data.get('type')}' is not a valid type; expected '{resource_type}'.",
                      pointer="/data/type")
    return data


def require_attributes(data: dict[str, Any]) -> dict[str, Any]:
    attrs = data.get("attributes")
    if not isinstance(attrs, dict):
        raise invalid("This field is required.", pointer="/data/attributes")
    return attrs


def csv_param(query: dict[str, str], name: str) -> list[str]:
    raw = query.get(name)
    return [v.strip() for v in raw.split(",") if v.strip()] if raw else []


def page_size(query: dict[str, str], default: int = 20, maximum: int = 100) -> int:
    raw = query.get("page[size]")
    if raw is None:
        return default
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= maximum:
        raise invalid(f"Page size must be an integer between 1 and {maximum}; got '{raw}'.", parameter="page[size]")
    return size


def check_include(query: dict[str, str], allowed: tuple[str, ...]) -> list[str]:
    """The `include` values (empty when none), each checked against `allowed`."""
    values = csv_param(query, "include")
    for v in values:
        if v not in allowed:
            raise invalid(f"'{v}' is not an allowed include parameter for this resource.", parameter="include")
    return values


def encode_cursor(kind: str, sort: str, key: list[Any]) -> str:
    raw = json.dumps({"d": kind, "s": sort, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str, sort: str) -> tuple[str, list[Any]]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        if raw["d"] in ("next", "prev") and raw["s"] == sort and isinstance(raw["k"], list):
            return raw["d"], raw["k"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        pass
    raise invalid("Invalid page cursor.", parameter="page[cursor]")


def collection_link(ctx: Ctx, cursor: str | None) -> str:
    params = [(k, v) for k, v in ctx.req.query if k != "page[cursor]"]
    if cursor is not None:
        params.append(("page[cursor]", cursor))
    path = normalize_path(ctx.req.path) + "/"
    return f"{ctx.req.base_url}{path}" + (f"?{urlencode(params)}" if params else "")


def page_sorted(items: list[T], key: Callable[[T], list[Any]], descending: bool,
                cursor: tuple[str, list[Any]] | None, size: int) -> tuple[list[T], bool, bool]:
    """(page, has_prev, has_next) of `items` sorted by `key`, from a next/prev cursor's key."""
    items.sort(key=key, reverse=descending)
    keys = [key(p) for p in items]

    def after(k: list[Any], ref: list[Any]) -> bool:
        return k < ref if descending else k > ref

    if cursor is None:
        return items[:size], False, len(items) > size
    kind, ref = cursor
    if kind == "next":
        start = next((i for i, k in enumerate(keys) if after(k, ref)), len(items))
        return items[start:start + size], start > 0, start + size < len(items)
    end = next((i for i, k in enumerate(keys) if not after(ref, k)), len(items))
    start = max(0, end - size)
    return items[start:end], start > 0, end < len(items)


def paged_links(ctx: Ctx, page: list[T], key: Callable[[T], list[Any]], sort: str, has_prev: bool,
                has_next: bool) -> dict[str, Any]:
    """`links` of a collection page: self, and next/prev cursors built from the page's edge keys."""
    links: dict[str, Any] = {"self": collection_link(ctx, ctx.query.get("page[cursor]"))}
    if has_next and page:
        links["next"] = collection_link(ctx, encode_cursor("next", sort, key(page[-1])))
    if has_prev and page:
        links["prev"] = collection_link(ctx, encode_cursor("prev", sort, key(page[0])))
    return links
