"""Typed client for the Klaviyo endpoints the sync uses (JSON:API, pinned `revision`).

One `httpx.Client` per process is passed in (explicit timeouts, pooled connections, shared by every
tenant); each `KlaviyoClient` adds one tenant's key. Every response is mapped to what the caller
should do (see `worker.errors`): data, a retry, a stop for the tenant, or a per-customer rejection.
Before each request the optional `gate` is asked for permission (the cluster-wide rate limiter); it
raises `Deferred` when the request must wait.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from worker.errors import DuplicateProfile, RecordRejected, RetryableError, TenantFatalError, Throttled
from worker.events import LoyaltyEvent, bulk_entries, event_body
from worker.models import KlaviyoProfile
from worker.retry import parse_retry_after

JSONAPI = "application/vnd.api+json"
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504, 520, 522, 524})
#: Filter values Klaviyo accepts in one `any(...)`; lookups are chunked to this size.
MAX_FILTER_VALUES = 100
MAX_SUPPRESSION_EMAILS = 100
MAX_BULK_PROFILES = 10_000
#: `POST /api/event-bulk-create-jobs`: "Accepts up to 1,000 events per request. The maximum allowed
#: payload size is 5MB." (spec, bulk_create_events)
MAX_BULK_EVENTS = 1000
MAX_BULK_EVENT_BYTES = 5 * 1024 * 1024

# Endpoint names used for rate limiting and request counting (operation, not concrete path).
GET_PROFILES = "GET /api/profiles"
CREATE_PROFILE = "POST /api/profiles"
UPDATE_PROFILE = "PATCH /api/profiles/{id}"
BULK_IMPORT = "POST /api/profile-bulk-import-jobs"
GET_BULK_IMPORT = "GET /api/profile-bulk-import-jobs/{job_id}"
GET_IMPORT_ERRORS = "GET /api/profile-bulk-import-jobs/{id}/import-errors"
SUPPRESS = "POST /api/profile-suppression-bulk-create-jobs"
UNSUPPRESS = "POST /api/profile-suppression-bulk-delete-jobs"
GET_ACCOUNTS = "GET /api/accounts"
GET_PROFILE = "GET /api/profiles/{id}"
GET_SUPPRESS_JOB = "GET /api/profile-suppression-bulk-create-jobs/{job_id}"
GET_UNSUPPRESS_JOB = "GET /api/profile-suppression-bulk-delete-jobs/{job_id}"
CREATE_EVENT = "POST /api/events"
BULK_CREATE_EVENTS = "POST /api/event-bulk-create-jobs"
#: The endpoints of loyalty events (scope `events:write`): a key without it stops the events, not the tenant.
EVENT_ENDPOINTS = frozenset({CREATE_EVENT, BULK_CREATE_EVENTS})

Gate = Callable[[str], None]
RequestHook = Callable[[str, int], None]


@dataclass(frozen=True)
class BulkImportJob:
    """A bulk import job as Klaviyo reports it. The spec makes `completed_count` and `failed_count`
    nullable: None means Klaviyo has not said, never "none failed"."""

    id: str
    status: str
    total_count: int | None = None
    completed_count: int | None = None
    failed_count: int | None = None

    @property
    def done(self) -> bool:
        return self.status in ("complete", "cancelled")

    @property
    def counts_add_up(self) -> bool:
        """Every row is accounted for as completed or failed (only then can rows be confirmed)."""
        total, completed, failed = self.total_count, self.completed_count, self.failed_count
        return (self.status == "complete" and total is not None and completed is not None and failed is not None
                and completed + failed == total)


@dataclass(frozen=True)
class ImportError_:
    """One row Klaviyo could not import (`import-errors`), with the payload it came from."""

    code: str
    detail: str
    pointer: str | None
    original_payload: dict[str, Any]

    @property
    def attributes(self) -> dict[str, Any]:
        """The row's profile attributes, whether Klaviyo echoes the whole row or only its attributes."""
        inner = self.original_payload.get("attributes")
        return inner if isinstance(inner, dict) else self.original_payload

    @property
    def identifiers(self) -> set[str]:
        """What names the row in `original_payload`: `id:`, `email:`, `phone:`, `xid:` keys (see
        `row_identifiers`); the spec's default pointer is `/data`, so this is how a row is found."""
        attrs = self.attributes
        profile_id = self.original_payload.get("id") or attrs.get("id")
        return row_identifiers(attrs, profile_id if isinstance(profile_id, str) else None)

    @property
    def about_phone(self) -> bool:
        """The error is about the phone number (an unsupported region, an invalid number)."""
        return "phone_number" in (self.pointer or "") or "phone" in self.detail.lower()


def row_identifiers(attributes: dict[str, Any], profile_id: str | None = None) -> set[str]:
    """The identifiers a bulk import row carries, as comparable keys."""
    found: set[str] = set()
    if profile_id:
        found.add(f"id:{profile_id}")
    email = attributes.get("email")
    if isinstance(email, str) and email.strip():
        found.add(f"email:{email.strip().lower()}")
    phone = attributes.get("phone_number")
    if isinstance(phone, str) and phone.strip():
        found.add(f"phone:{phone.strip()}")
    xid = attributes.get("external_id")
    if isinstance(xid, str | int) and str(xid).strip():
        found.add(f"xid:{str(xid).strip()}")
    return found


def _object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (for members Klaviyo may leave out)."""
    return value if isinstance(value, dict) else {}


def _first_error(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        first = body["errors"][0]
        if isinstance(first, dict):
            return first
    return {}


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds to wait after a 429: the Retry-After header, else the "available in N seconds" detail."""
    header = parse_retry_after(response.headers.get("Retry-After"))
    if header is not None:
        return header
    try:
        detail = str(_first_error(response.json()).get("detail") or "")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return parse_retry_after(None, detail)


def filter_value(value: str | list[str]) -> str:
    """A quoted filter value (or list of them), compact as Klaviyo's own SDK sends it
    (`["a@x.com","b@x.com"]`, no spaces). Non-ASCII text is sent as itself, not as `\\uXXXX`
    escapes: a filter parser that does not decode JSON escapes would look for the letters `u00f1`."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def raise_for_klaviyo(response: httpx.Response, tenant: str) -> None:
    """Map a non-2xx answer to the error that says what the caller should do."""
    status = response.status_code
    if status < 400:
        return
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    error = _first_error(body)
    code = str(error.get("code") or "")
    detail = str(error.get("detail") or error.get("title") or response.reason_phrase or "")
    source = _object(error.get("source"))
    pointer = source.get("pointer") or source.get("parameter")
    if status == 429:
        wait = retry_after_s(response)
        raise Throttled(f"Klaviyo throttled the request (429); retry in {wait}s", retry_after_s=wait)
    if status in RETRYABLE_STATUSES or status >= 500:
        raise RetryableError(f"Klaviyo answered {status}: {detail[:200]}")
    if status in (401, 403) and not error:
        # Not Klaviyo's JSON: a CDN page (e.g. a Cloudflare challenge) in front of the API. The key
        # may be fine, so this is retried rather than stopping the tenant.
        raise RetryableError(f"Klaviyo answered {status} with a non-JSON page (likely a CDN block); retrying")
    if status == 401:
        raise TenantFatalError(
            tenant,
            f"Klaviyo rejected the private API key ({code or 401}: {detail}). Create a new private key in "
            "Klaviyo (Settings > API Keys) and update the tenant's klaviyo_private_key", status,
        )
    if status == 403:
        raise TenantFatalError(
            tenant,
            f"the Klaviyo private API key lacks a scope this sync needs ({code or 403}: {detail}). It needs "
            "profiles:read, profiles:write, subscriptions:write, lists:write and, for loyalty events, "
            "events:write; `loyale-sync verify` shows which are missing. Scopes cannot be added to a key: "
            "create a new one", status,
        )
    if status == 410:
        raise TenantFatalError(tenant, f"Klaviyo retired the API revision in use (410): {detail}; "
                                       "set SYNC_KLAVIYO_REVISION to a current revision")
    if status == 409 and code == "duplicate_profile":
        meta = _object(error.get("meta"))
        raise DuplicateProfile(detail, meta.get("duplicate_profile_id"), pointer)
    items = _object(body).get("errors")
    every = [RecordRejected(status, str(e.get("code") or status), str(e.get("detail") or "")[:500],
                            _object(e.get("source")).get("pointer"))
             for e in (items if isinstance(items, list) else []) if isinstance(e, dict)]
    raise RecordRejected(status, code or str(status), detail[:500], pointer, every or None)


class KlaviyoClient:
    """One tenant's view of Klaviyo. `http` is shared; `gate` and `on_request` are optional hooks."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        tenant: str,
        base_url: str,
        private_key: SecretStr,
        revision: str,
        gate: Gate | None = None,
        on_request: RequestHook | None = None,
    ) -> None:
        self._http = http
        self.tenant = tenant
        self._base = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"Klaviyo-API-Key {private_key.get_secret_value()}",
            "revision": revision,
            "Accept": JSONAPI,
        }
        self._gate = gate
        self._on_request = on_request

    # --- transport -------------------------------------------------------------------------------

    def _request(self, endpoint: str, method: str, path: str, *, params: dict[str, Any] | None = None,
                 body: Any = None) -> Any:
        if self._gate is not None:
            self._gate(endpoint)
        headers = dict(self._headers)
        content = None
        if body is not None:
            headers["Content-Type"] = JSONAPI
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        url = path if path.startswith("http") else f"{self._base}{path}"
        try:
            response = self._http.request(method, url, params=params, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            self._count(endpoint, 0)
            raise RetryableError(f"Klaviyo did not answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            self._count(endpoint, 0)
            raise RetryableError(f"connection to Klaviyo failed ({type(exc).__name__}: {exc})") from exc
        self._count(endpoint, response.status_code)
        raise_for_klaviyo(response, self.tenant)
        if not response.content:
            return None
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RetryableError(f"Klaviyo answered {response.status_code} with a body that is not JSON") from exc

    def _count(self, endpoint: str, status: int) -> None:
        if self._on_request is not None:
            self._on_request(endpoint, status)

    @staticmethod
    def _data(body: Any) -> Any:
        if not isinstance(body, dict) or "data" not in body:
            raise RetryableError("Klaviyo answered without a JSON:API `data` member")
        return body["data"]

    # A 2xx answer of an unexpected shape is treated like an unreadable one: retried, never a crash.

    @staticmethod
    def _list(data: Any) -> list[Any]:
        if data is None:
            return []
        if not isinstance(data, list):
            raise RetryableError(f"Klaviyo answered with a `data` that is not a list ({type(data).__name__})")
        return data

    @staticmethod
    def _resource(data: Any, kind: str) -> dict[str, Any]:
        """A JSON:API resource object with an id (and, if any, attributes that are an object)."""
        ident = data.get("id") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(ident, str | int) or isinstance(ident, bool) or ident == "":
            raise RetryableError(f"Klaviyo answered with a {kind} without an id")
        if not isinstance(data.get("attributes"), dict | None):
            raise RetryableError(f"Klaviyo answered with a {kind} {data['id']} whose attributes are not an object")
        return data

    @classmethod
    def _profile(cls, data: Any) -> KlaviyoProfile:
        return KlaviyoProfile.from_resource(cls._resource(data, "profile"))

    @staticmethod
    def _next(body: Any) -> str:
        links = body.get("links") if isinstance(body, dict) else None
        url = links.get("next") if isinstance(links, dict) else None
        return url if isinstance(url, str) else ""

    # --- profiles --------------------------------------------------------------------------------

    def find_profiles(self, filter_expr: str, *, page_size: int = 100) -> Iterator[KlaviyoProfile]:
        """Every profile matching a Klaviyo filter expression (with its subscriptions), following `links.next`."""
        params: dict[str, Any] | None = {"filter": filter_expr, "page[size]": page_size,
                                         "additional-fields[profile]": "subscriptions"}
        url = "/api/profiles"
        while url:
            body = self._request(GET_PROFILES, "GET", url, params=params)
            for resource in self._list(self._data(body)):
                yield self._profile(resource)
            url = self._next(body)
            params = None  # `next` is a full URL carrying the cursor and every parameter

    def find_one(self, field: str, value: str) -> KlaviyoProfile | None:
        """The profile whose identifier `field` (email, external_id, phone_number) equals `value`."""
        found = list(self.find_profiles(f"equals({field},{filter_value(value)})", page_size=1))
        return found[0] if found else None

    def find_many(self, field: str, values: list[str]) -> list[KlaviyoProfile]:
        """Profiles whose `field` is any of `values` (chunked into lookups of 100)."""
        profiles: list[KlaviyoProfile] = []
        for start in range(0, len(values), MAX_FILTER_VALUES):
            chunk = values[start:start + MAX_FILTER_VALUES]
            profiles.extend(self.find_profiles(f"any({field},{filter_value(chunk)})", page_size=100))
        return profiles

    def create_profile(self, attributes: dict[str, Any]) -> KlaviyoProfile:
        body = {"data": {"type": "profile", "attributes": attributes}}
        return self._profile(self._data(self._request(CREATE_PROFILE, "POST", "/api/profiles", body=body)))

    def get_profile(self, profile_id: str) -> KlaviyoProfile | None:
        """The profile with this id (a read by id, not a filter), or None if Klaviyo has no such profile."""
        try:
            body = self._request(GET_PROFILE, "GET", f"/api/profiles/{profile_id}",
                                 params={"additional-fields[profile]": "subscriptions"})
        except RecordRejected as exc:
            if exc.status == 404:
                return None
            raise
        return self._profile(self._data(body))

    def update_profile(self, profile_id: str, attributes: dict[str, Any],
                       unset: list[str] | None = None) -> KlaviyoProfile:
        """PATCH the profile; `unset` removes these `properties` keys (`meta.patch_properties.unset`),
        the documented way to clear a property without sending null."""
        data: dict[str, Any] = {"type": "profile", "id": profile_id, "attributes": attributes}
        if unset:
            data["meta"] = {"patch_properties": {"unset": unset}}
        body = {"data": data}
        return self._profile(
            self._data(self._request(UPDATE_PROFILE, "PATCH", f"/api/profiles/{profile_id}", body=body)))

    # --- suppression -----------------------------------------------------------------------------

    def _suppression_job(self, endpoint: str, job_type: str, emails: list[str]) -> list[str]:
        job_ids: list[str] = []
        for start in range(0, len(emails), MAX_SUPPRESSION_EMAILS):
            chunk = emails[start:start + MAX_SUPPRESSION_EMAILS]
            body = {"data": {"type": job_type, "attributes": {"profiles": {"data": [
                {"type": "profile", "attributes": {"email": email}} for email in chunk]}}}}
            answer = self._request(endpoint, "POST", endpoint.split(" ", 1)[1], body=body)
            data = answer.get("data") if isinstance(answer, dict) else None
            job_ids.append(str(data["id"]) if isinstance(data, dict) and data.get("id") else "")
        return job_ids

    def suppress(self, emails: list[str]) -> list[str]:
        """Suppress email marketing for these addresses (reason USER_SUPPRESSED), 100 per request.
        Returns the job ids ("" where Klaviyo named none): the jobs apply minutes to hours later."""
        return self._suppression_job(SUPPRESS, "profile-suppression-bulk-create-job", emails)

    def unsuppress(self, emails: list[str]) -> list[str]:
        """Lift USER_SUPPRESSED suppressions (Klaviyo never lifts bounces or unsubscribes this way)."""
        return self._suppression_job(UNSUPPRESS, "profile-suppression-bulk-delete-job", emails)

    def suppression_job_status(self, action: str, job_id: str) -> str:
        """The status of a suppress (`action` "suppress") or unsuppress job: queued, processing,
        complete or cancelled."""
        endpoint = GET_SUPPRESS_JOB if action == "suppress" else GET_UNSUPPRESS_JOB
        path = endpoint.split(" ", 1)[1].replace("{job_id}", job_id)
        data = self._resource(self._data(self._request(endpoint, "GET", path)), "suppression job")
        return str((data.get("attributes") or {}).get("status") or "queued")

    # --- bulk import -----------------------------------------------------------------------------

    def start_bulk_import(self, rows: list[dict[str, Any]]) -> BulkImportJob:
        """Submit up to 10,000 profile rows (`{"type": "profile", "attributes": ...}`) as one job."""
        body = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": rows}}}}
        return self._job(self._data(self._request(BULK_IMPORT, "POST", "/api/profile-bulk-import-jobs", body=body)))

    def bulk_import_job(self, job_id: str) -> BulkImportJob:
        return self._job(self._data(self._request(GET_BULK_IMPORT, "GET", f"/api/profile-bulk-import-jobs/{job_id}")))

    def import_errors(self, job_id: str) -> list[ImportError_]:
        errors: list[ImportError_] = []
        url = f"/api/profile-bulk-import-jobs/{job_id}/import-errors"
        params: dict[str, Any] | None = {"page[size]": 100}
        while url:
            body = self._request(GET_IMPORT_ERRORS, "GET", url, params=params)
            for item in self._list(self._data(body)):
                if not isinstance(item, dict):
                    continue
                attrs = _object(item.get("attributes"))
                source = _object(attrs.get("source"))
                payload = attrs.get("original_payload")
                errors.append(ImportError_(
                    code=str(attrs.get("code") or ""), detail=str(attrs.get("detail") or attrs.get("title") or ""),
                    pointer=source.get("pointer") if isinstance(source.get("pointer"), str) else None,
                    original_payload=payload if isinstance(payload, dict) else {},
                ))
            url = self._next(body)
            params = None
        return errors

    @classmethod
    def _job(cls, data: Any) -> BulkImportJob:
        data = cls._resource(data, "bulk import job")
        attrs = data.get("attributes") or {}

        def count(name: str) -> int | None:
            value = attrs.get(name)
            try:
                return int(float(value)) if value is not None and not isinstance(value, bool) else None
            except (TypeError, ValueError, OverflowError):
                return None

        return BulkImportJob(
            id=str(data["id"]), status=str(attrs.get("status") or "queued"),
            total_count=count("total_count"), completed_count=count("completed_count"),
            failed_count=count("failed_count"),
        )

    # --- events ----------------------------------------------------------------------------------

    def create_event(self, event: LoyaltyEvent, profile_id: str) -> None:
        """`POST /api/events`: one event of the profile `profile_id` (named by id only). Klaviyo answers
        202 once the event is valid and queued; it records an event once per (profile, metric,
        unique_id), so sending one again is harmless."""
        self._request(CREATE_EVENT, "POST", "/api/events", body=event_body(event, profile_id))

    def create_event_bulk_job(self, events: list[tuple[str, LoyaltyEvent]]) -> None:
        """`POST /api/event-bulk-create-jobs`: (profile id, event) pairs in one request, at most
        `MAX_BULK_EVENTS` and `MAX_BULK_EVENT_BYTES` (`bulk_event_chunks` splits a longer list). Klaviyo
        answers 202 with no job to poll. A repeated unique_id fails the whole request (spec), so only
        events never sent before belong here."""
        body = {"data": {"type": "event-bulk-create-job",
                         "attributes": {"events-bulk-create": {"data": bulk_entries(events)}}}}
        if len(events) > MAX_BULK_EVENTS or _size(body) > MAX_BULK_EVENT_BYTES:
            raise ValueError(f"{len(events)} events ({_size(body)} bytes) exceed one event bulk job; "
                             "split them with bulk_event_chunks")
        self._request(BULK_CREATE_EVENTS, "POST", "/api/event-bulk-create-jobs", body=body)

    # --- account ---------------------------------------------------------------------------------

    def account(self) -> dict[str, Any]:
        """The account the key belongs to (`GET /api/accounts`: 1/s, 15/min; call it rarely)."""
        data = self._data(self._request(GET_ACCOUNTS, "GET", "/api/accounts"))
        if not isinstance(data, list) or not data:
            raise RetryableError("Klaviyo returned no account for this key")
        return dict(self._resource(data[0], "account"))

    # --- scope probes (`loyale-sync verify`) ---------------------------------------------------------

    def permitted(self, endpoint: str) -> bool:
        """Whether the key may call `endpoint` (a key of `SCOPE_PROBES`), asked with a request that
        changes nothing: Klaviyo checks a key's scopes before it reads the request, so a 403 means the
        scope is missing and anything past that check (2xx, or the 400/404 the probe is built to get)
        means it is held. 401, 429, 5xx and transport errors raise as for any other request."""
        method, path, params, body = SCOPE_PROBES[endpoint]
        try:
            self._request(endpoint, method, path, params=params, body=body)
        except TenantFatalError as exc:
            if exc.status == 403:
                return False
            raise
        except RecordRejected:
            return True
        return True


def _size(body: Any) -> int:
    """Bytes of `body` as `_request` sends it."""
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())


#: What a bulk job's envelope and a profile's entry add to its events' own bytes (generous).
_JOB_OVERHEAD_BYTES = 1024
_ENTRY_OVERHEAD_BYTES = 256


def bulk_event_chunks(events: list[tuple[str, LoyaltyEvent]], max_events: int = MAX_BULK_EVENTS,
                      max_bytes: int = MAX_BULK_EVENT_BYTES) -> list[list[tuple[str, LoyaltyEvent]]]:
    """(profile id, event) pairs in the fewest event bulk jobs Klaviyo takes: at most `max_events`
    events and `max_bytes` bytes each, a profile's events kept together where they fit."""
    chunks: list[list[tuple[str, LoyaltyEvent]]] = []
    current: list[tuple[str, LoyaltyEvent]] = []
    used = _JOB_OVERHEAD_BYTES
    for pair in sorted(events, key=lambda p: p[0]):   # stable: each profile's events stay in order
        size = _size(bulk_entries([pair])) + _ENTRY_OVERHEAD_BYTES
        if current and (len(current) >= max_events or used + size > max_bytes):
            chunks.append(current)
            current, used = [], _JOB_OVERHEAD_BYTES
        current.append(pair)
        used += size
    if current:
        chunks.append(current)
    return chunks


#: A profile id that cannot exist: ULIDs carry their creation time, and this one is from 1970.
NO_SUCH_PROFILE = "00000000000000000000000000"
NO_SUCH_JOB = "00000000000000000000000000"
#: endpoint -> (method, path, query, body) of a request that tells whether the key holds the endpoint's
#: scopes and never changes data: reads, a PATCH of a profile that cannot exist with nothing in it, and
#: jobs with no profiles or no events (refused by validation; even if accepted, they would name no one).
SCOPE_PROBES: dict[str, tuple[str, str, dict[str, Any] | None, Any]] = {
    GET_PROFILES: ("GET", "/api/profiles", {"page[size]": 1, "fields[profile]": "email"}, None),
    UPDATE_PROFILE: ("PATCH", f"/api/profiles/{NO_SUCH_PROFILE}",
                     None, {"data": {"type": "profile", "id": NO_SUCH_PROFILE, "attributes": {}}}),
    BULK_IMPORT: ("POST", "/api/profile-bulk-import-jobs", None,
                  {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": []}}}}),
    GET_BULK_IMPORT: ("GET", f"/api/profile-bulk-import-jobs/{NO_SUCH_JOB}", None, None),
    UNSUPPRESS: ("POST", "/api/profile-suppression-bulk-delete-jobs", None,
                 {"data": {"type": "profile-suppression-bulk-delete-job", "attributes": {"profiles": {"data": []}}}}),
    BULK_CREATE_EVENTS: ("POST", "/api/event-bulk-create-jobs", None, {"data": {
        "type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": []}}}}),
}
