"""The `/api/*` endpoints: routing, authentication, revision, scopes, rate limits and the handlers.

`dispatch` is synchronous on purpose: a request's checks and state changes run without an `await`
in between, so concurrent requests on the event loop never see half-applied writes.
"""

from __future__ import annotations

import functools
import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fakes.klaviyo import events_api, jobs
from fakes.klaviyo.context import (
    KB,
    ApiRequest,
    Ctx,
    Reply,
    check_include,
    collection_link,
    csv_param,
    decode_cursor,
    encode_cursor,
    error_reply,
    json_reply,
    page_size,
    page_sorted,
    paged_links,
    require_attributes,
    require_data,
    size_text,
)
from fakes.klaviyo.errors import (
    RATE_LIMIT_DOCS,
    ApiError,
    duplicate,
    error_item,
    invalid,
    not_found,
    plural,
)
from fakes.klaviyo.filters import IDENTIFIER_FIELDS, SUPPRESSION_REASON, Condition, FilterError, parse_filter
from fakes.klaviyo.profiles import (
    ATTRIBUTE_ORDER,
    IDENTIFIERS,
    PUBLIC_BASE,
    Profile,
    ProfileStore,
    email_key,
    identifiers_in,
    is_valid_email,
    iso,
    render_profile,
    validate_attributes,
    validate_meta,
)
from fakes.klaviyo.ratelimit import ceil_seconds, scaled
from fakes.klaviyo.state import BulkImportJob, FakeKlaviyo, KeyRecord, SuppressionJob

SINGLE_PROFILE_MAX = 100 * KB
BULK_MAX = 5 * KB * KB
BULK_ROW_MAX = 100 * KB
BULK_MAX_PROFILES = 10_000
SUPPRESSION_MAX_PROFILES = 100
_KEY = re.compile(r"^pk_[A-Za-z0-9]+$")
_REVISION = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(\.[A-Za-z0-9]+)?$")


# ---------------------------------------------------------------------------------------------
# Routing


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    #: (status, JSON body); a None body is an answer without one.
    handler: Callable[[Ctx], tuple[int, Any]]
    #: Query parameters the spec allows for this operation.
    params: frozenset[str]
    pattern: re.Pattern[str]


@functools.lru_cache(maxsize=512)
def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "/?$")


def match_route(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """(route, path params, path exists with another method)."""
    other_method = False
    for route in ROUTES:
        m = route.pattern.match(path)
        if m:
            if route.method == method:
                return route, m.groupdict(), False
            other_method = True
    return None, {}, other_method


# ---------------------------------------------------------------------------------------------
# Request context and checks shared by the handlers


def authenticate(fake: FakeKlaviyo, header: str | None) -> KeyRecord:
    scheme, _, credential = (header or "").strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "klaviyo-api-key" or not credential:
        raise ApiError.one(401, "not_authenticated",
                           "Missing or invalid authorization scheme. Please use Klaviyo-API-Key.")
    record = fake.keys.get(credential)
    if record is None or record.revoked or not _KEY.match(credential):
        raise ApiError.one(401, "authentication_failed", "Incorrect authentication credentials.")
    return record


def check_revision(value: str | None) -> None:
    if value is None or value.strip() == "":
        raise invalid("The 'revision' header is required (format: YYYY-MM-DD[.suffix]).", parameter="revision")
    m = _REVISION.match(value.strip())
    try:
        if not m:
            raise ValueError(value)
        date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        raise invalid(f"Invalid revision '{value}' (format: YYYY-MM-DD[.suffix]).", parameter="revision") from None


def check_query(route: Route, query: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in query:
        if name not in route.params:
            raise invalid(f"'{name}' is not a valid query parameter for this endpoint.", parameter=name)
        out[name] = value
    return out


_PROFILE_FIELD_ROOTS = {*ATTRIBUTE_ORDER, "id", "subscriptions", "predictive_analytics"}


def profile_view(query: dict[str, str]) -> tuple[list[str] | None, tuple[str, ...]]:
    additional = csv_param(query, "additional-fields[profile]")
    for v in additional:
        if v not in ("subscriptions", "predictive_analytics"):
            raise invalid(f"'{v}' is not a valid additional field for the resource 'profile'.",
                          parameter="additional-fields[profile]")
    fields = csv_param(query, "fields[profile]")
    for f in fields:
        if f.split(".")[0] not in _PROFILE_FIELD_ROOTS:
            raise invalid(f"'{f}' is not a valid field for the resource 'profile'.", parameter="fields[profile]")
    return fields or None, tuple(additional)


# ---------------------------------------------------------------------------------------------
# GET /api/profiles


_SORTS: dict[str, Callable[[Profile], list[Any]]] = {
    "id": lambda p: [p.id],
    # Fixed-width UTC ISO strings sort like the instants they name.
    "created": lambda p: [iso(p.created), p.id],
    "updated": lambda p: [iso(p.updated), p.id],
    "email": lambda p: [p.scalars["email"] is not None, p.scalars["email"] or "", p.id],
}


def _matches(p: Profile, c: Condition) -> bool:
    if c.field in IDENTIFIER_FIELDS:
        actual = p.id if c.field == "id" else p.scalars.get(c.field)
        if actual is None:
            return False
        wanted = [c.value] if c.op == "equals" else c.value
        if c.field == "email":
            return email_key(actual) in {email_key(w) for w in wanted}
        return actual in wanted
    if c.field == SUPPRESSION_REASON:
        return any(s["reason"] == c.value for s in p.suppressions)
    ts = p.created if c.field == "created" else p.updated
    return ts > c.value if c.op == "greater-than" else ts < c.value


def _candidates(store: ProfileStore, conditions: list[Condition]) -> list[Profile] | None:
    """Profiles an identifier condition narrows to via the index; None = no narrowing."""
    narrowed: set[str] | None = None
    for c in conditions:
        if c.field not in IDENTIFIER_FIELDS:
            continue
        values = [c.value] if c.op == "equals" else c.value
        if c.field == "id":
            ids = {v for v in values if v in store.profiles}
        else:
            ids = {pid for v in values if (pid := store.owner(c.field, v)) is not None}
        narrowed = ids if narrowed is None else narrowed & ids
    return None if narrowed is None else [store.profiles[i] for i in narrowed]


def list_profiles(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    q = ctx.query
    size = page_size(q)
    fields, additional = profile_view(q)
    included = check_include(q, ("conversations", "push-tokens"))
    try:
        conditions = parse_filter(q["filter"], max_any_values=ctx.fake.knobs.max_any_values) if q.get(
            "filter") else []
    except FilterError as exc:
        raise invalid(str(exc), parameter="filter") from None
    sort = q.get("sort", "id")
    field_name = sort.lstrip("-")
    if field_name not in _SORTS:
        raise invalid(f"'{sort}' is not a valid sort for the resource 'profile' in the fake.", parameter="sort")
    descending = sort.startswith("-")
    cursor = decode_cursor(q["page[cursor]"], sort) if q.get("page[cursor]") else None
    store = ctx.store

    visible = _visibility(ctx)
    candidates = _candidates(store, conditions)
    if candidates is None and sort == "id":
        page, has_prev, has_next = _page_by_id(store, conditions, cursor, size, visible)
    else:
        pool = candidates if candidates is not None else list(store.profiles.values())
        items = [p for p in pool if all(_matches(p, c) for c in conditions) and (visible is None or visible(p))]
        page, has_prev, has_next = page_sorted(items, _SORTS[field_name], descending, cursor, size)

    body: dict[str, Any] = {
        "data": [render_profile(p, fields=fields, additional=additional) for p in page],
        "links": paged_links(ctx, page, _SORTS[field_name], sort, has_prev, has_next),
    }
    if included:
        body["included"] = []
    return 200, body


def _visibility(ctx: Ctx) -> Callable[[Profile], bool] | None:
    """`read_lag_s`: a profile written less than that long ago (fake clock) is not listed yet. The
    simplest model of an eventually consistent index: hidden, not its previous version."""
    lag = ctx.fake.knobs.read_lag_s
    if lag <= 0:
        return None
    cutoff = ctx.fake.clock.time() - lag
    written = ctx.store.written
    return lambda p: written.get(p.id, cutoff) <= cutoff


def _page_by_id(store: ProfileStore, conditions: list[Condition], cursor: tuple[str, list[Any]] | None,
                size: int, visible: Callable[[Profile], bool] | None = None) -> tuple[list[Profile], bool, bool]:
    """Fast path: walk the id-ordered list from the cursor, testing conditions (O(page) unfiltered)."""
    order, profiles = store.order, store.profiles

    def ok(pid: str) -> bool:
        p = profiles[pid]
        return all(_matches(p, c) for c in conditions) and (visible is None or visible(p))

    if cursor is not None and cursor[0] == "prev":
        found: list[Profile] = []
        for i in range(bisect_left(order, cursor[1][0]) - 1, -1, -1):
            if ok(order[i]):
                found.append(profiles[order[i]])
                if len(found) > size:
                    break
        return list(reversed(found[:size])), len(found) > size, True
    start = bisect_right(order, cursor[1][0]) if cursor is not None else 0
    found = []
    for i in range(start, len(order)):
        if ok(order[i]):
            found.append(profiles[order[i]])
            if len(found) > size:
                break
    return found[:size], cursor is not None, len(found) > size


# ---------------------------------------------------------------------------------------------
# Single profiles


def _profile(ctx: Ctx, profile_id: str) -> Profile:
    p = ctx.store.profiles.get(profile_id)
    if p is None:
        raise not_found(f"A profile with id {profile_id} does not exist.")
    return p


def _one(ctx: Ctx, status: int, p: Profile) -> tuple[int, dict[str, Any]]:
    fields, additional = profile_view(ctx.query)
    resource = render_profile(p, fields=fields, additional=additional)
    return status, {"data": resource, "links": {"self": resource["links"]["self"]}}


def get_profile(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    profile_view(ctx.query)
    included = check_include(ctx.query, ("conversations", "lists", "push-tokens", "segments"))
    status, body = _one(ctx, 200, _profile(ctx, ctx.params["id"]))
    if included:
        body["included"] = []
    return status, body


def _validated(ctx: Ctx, data: dict[str, Any], *, allow_kx: bool, meta_allowed: bool
               ) -> tuple[dict[str, Any], Any]:
    attrs = require_attributes(data)
    errors = validate_attributes(attrs, "/data/attributes", allow_kx=allow_kx,
                                 unsupported_regions=ctx.fake.knobs.unsupported_phone_regions)
    meta = data.get("meta") if meta_allowed else None
    errors += validate_meta(meta, "/data/meta", "/data/attributes/meta/patch_properties/unset")
    if errors:
        raise ApiError(400, errors)
    return attrs, meta


def _identifier_required() -> ApiError:
    return invalid("One or more identifiers is required", pointer="/data/attributes")


def _keeps_identifier(p: Profile, attrs: dict[str, Any]) -> bool:
    return any((attrs[f] if f in attrs else p.scalars.get(f)) not in (None, "") for f in IDENTIFIERS)


def _written(ctx: Ctx, p: Profile) -> Profile:
    """Note a write for `read_lag_s`."""
    ctx.store.written[p.id] = ctx.fake.clock.time()
    return p


def _update(ctx: Ctx, p: Profile, attrs: dict[str, Any], meta: Any) -> None:
    if ctx.store.update(p, attrs, meta, ignore_nulls=False):
        _written(ctx, p)


def create_profile(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    data = require_data(ctx.body_json(SINGLE_PROFILE_MAX), "profile")
    attrs, _ = _validated(ctx, data, allow_kx=False, meta_allowed=False)
    profile_view(ctx.query)
    if not identifiers_in(attrs):
        raise _identifier_required()
    owner = ctx.store.conflict(None, attrs)
    if owner is not None:
        raise duplicate(owner)
    return _one(ctx, 201, _written(ctx, ctx.store.create(attrs)))


def update_profile(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    data = require_data(ctx.body_json(SINGLE_PROFILE_MAX), "profile")
    if not isinstance(data.get("id"), str):
        raise invalid("This field is required.", pointer="/data/id")
    if data["id"] != ctx.params["id"]:
        raise invalid("The id in the request body does not match the id in the URL.", pointer="/data/id")
    attrs, meta = _validated(ctx, data, allow_kx=False, meta_allowed=True)
    profile_view(ctx.query)
    p = _profile(ctx, ctx.params["id"])
    owner = ctx.store.conflict(p.id, attrs)
    if owner is not None:
        raise duplicate(owner)
    if not _keeps_identifier(p, attrs):
        raise _identifier_required()
    _update(ctx, p, attrs, meta)
    return _one(ctx, 200, p)


def import_profile(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    data = require_data(ctx.body_json(SINGLE_PROFILE_MAX), "profile")
    attrs, meta = _validated(ctx, data, allow_kx=True, meta_allowed=True)
    profile_view(ctx.query)
    store = ctx.store
    profile_id = data.get("id")
    if profile_id is not None:
        p = _profile(ctx, str(profile_id))
        if store.conflict(p.id, attrs) is not None:
            # Observed live (community thread 11971): an identifier owned by another profile
            # answers 404 for the id, not 409.
            raise not_found(f"A profile with id {profile_id} does not exist.")
        if not _keeps_identifier(p, attrs):
            raise _identifier_required()
        _update(ctx, p, attrs, meta)
        return _one(ctx, 200, p)
    idents = identifiers_in(attrs)
    if not idents:
        raise _identifier_required()
    owners = store.owners(idents)
    if len(owners) > 1:
        raise duplicate(owners[1])
    if owners:
        p = store.profiles[owners[0]]
        if not _keeps_identifier(p, attrs):
            raise _identifier_required()
        _update(ctx, p, attrs, meta)
        return _one(ctx, 200, p)
    return _one(ctx, 201, _written(ctx, store.create(attrs, meta)))


# ---------------------------------------------------------------------------------------------
# Bulk import jobs


def render_bulk_job(job: BulkImportJob) -> dict[str, Any]:
    base = f"{PUBLIC_BASE}/api/profile-bulk-import-jobs/{job.id}"
    completed, failed = jobs.render_counts(job)
    return {
        "type": "profile-bulk-import-job",
        "id": job.id,
        "attributes": {
            "status": job.status,
            "created_at": iso(job.created_at),
            "total_count": job.total_count,
            "completed_count": completed,
            "failed_count": failed,
            "completed_at": iso(job.completed_at),
            "expires_at": iso(job.created_at + timedelta(days=7)),
            "started_at": iso(job.started_at),
        },
        "relationships": {
            "lists": {"data": [{"type": "list", "id": i} for i in job.list_ids],
                      "links": {"self": f"{base}/relationships/lists/", "related": f"{base}/lists/"}},
            "profiles": {"links": {"self": f"{base}/relationships/profiles/", "related": f"{base}/profiles/"}},
            "import-errors": {"links": {"related": f"{base}/import-errors/"}},
        },
        "links": {"self": f"{base}/"},
    }


def create_bulk_job(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    body = ctx.body_json(BULK_MAX)
    data = require_data(body, "profile-bulk-import-job")
    attrs = data.get("attributes")
    profiles = attrs.get("profiles") if isinstance(attrs, dict) else None
    rows = profiles.get("data") if isinstance(profiles, dict) else None
    if not isinstance(rows, list) or not rows:
        raise invalid("At least one profile is required.", pointer="/data/attributes/profiles/data")
    if len(rows) > BULK_MAX_PROFILES:
        raise invalid(f"A maximum of {BULK_MAX_PROFILES} profiles may be imported per request; got {len(rows)}.",
                      pointer="/data/attributes/profiles/data")
    # A row can only exceed its own limit when the whole body does.
    check_row_size = len(ctx.req.body) > BULK_ROW_MAX
    knobs = ctx.fake.knobs
    # Observed live: a phone from an unsupported region refuses the whole request with the row's
    # pointer; `unsupported_phone_bulk_import_error` makes it an import error of that row instead.
    submit_regions = () if knobs.unsupported_phone_bulk_import_error else knobs.unsupported_phone_regions
    errors: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        prefix = f"/data/attributes/profiles/data/{i}"
        if not isinstance(row, dict):
            errors.append(error_item(400, "invalid", "Each profile must be an object.", pointer=prefix))
            continue
        if row.get("type") != "profile":
            errors.append(error_item(400, "invalid",
                                     f"'{row.get('type')}' is not a valid type; expected 'profile'.",
                                     pointer=f"{prefix}/type"))
        if check_row_size and len(json.dumps(row, separators=(",", ":")).encode()) > BULK_ROW_MAX:
            errors.append(error_item(400, "invalid", "A profile exceeds the maximum allowed size of "
                                     f"{size_text(BULK_ROW_MAX)}.", pointer=prefix))
            continue
        row_attrs = row.get("attributes")
        row_errors = validate_attributes(row_attrs, f"{prefix}/attributes", allow_kx=True,
                                         unsupported_regions=submit_regions)
        row_errors += validate_meta(row.get("meta"), f"{prefix}/meta", f"{prefix}/meta/patch_properties/unset")
        if not row_errors and row.get("id") is None and not identifiers_in(row_attrs):
            row_errors.append(error_item(400, "invalid", "One or more identifiers is required",
                                         pointer=f"{prefix}/attributes"))
        errors += row_errors
    if errors:
        raise ApiError(400, errors)
    rels = data.get("relationships") or {}
    lists = ((rels.get("lists") or {}).get("data") or []) if isinstance(rels, dict) else []
    job = jobs.new_bulk_job(ctx.fake, ctx.account, rows,
                            [str(item.get("id")) for item in lists if isinstance(item, dict)])
    return 202, {"data": render_bulk_job(job), "links": {"self": render_bulk_job(job)["links"]["self"]}}


def _bulk_job(ctx: Ctx, job_id: str) -> BulkImportJob:
    job = ctx.account.bulk_jobs.get(job_id)
    if job is None:
        raise not_found(f"A profile-bulk-import-job with id {job_id} does not exist.")
    return job


def get_bulk_job(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    included = check_include(ctx.query, ("lists",))
    job = _bulk_job(ctx, ctx.params["job_id"])
    jobs.advance_on_get(ctx.fake, ctx.account, job)
    resource = render_bulk_job(job)
    body: dict[str, Any] = {"data": resource, "links": {"self": resource["links"]["self"]}}
    if included:
        body["included"] = []
    return 200, body


def get_import_errors(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    size = page_size(ctx.query)
    job = _bulk_job(ctx, ctx.params["id"])
    start = 0
    if ctx.query.get("page[cursor]"):
        _, key = decode_cursor(ctx.query["page[cursor]"], "offset")
        start = int(key[0]) if key and isinstance(key[0], int) else 0
    page = job.errors[start:start + size]
    links: dict[str, Any] = {"self": collection_link(ctx, ctx.query.get("page[cursor]"))}
    if start + size < len(job.errors):
        links["next"] = collection_link(ctx, encode_cursor("next", "offset", [start + size]))
    if start > 0:
        links["prev"] = collection_link(ctx, encode_cursor("prev", "offset", [max(0, start - size)]))
    return 200, {"data": page, "links": links}


# ---------------------------------------------------------------------------------------------
# Suppression jobs (applied at once, or after `suppression_lag_s`; Klaviyo took hours)


_SUPPRESSION_TYPES = {"create": "profile-suppression-bulk-create-job", "delete": "profile-suppression-bulk-delete-job"}


def render_suppression_job(job: SuppressionJob) -> dict[str, Any]:
    resource_type = _SUPPRESSION_TYPES[job.kind]
    base = f"{PUBLIC_BASE}/api/{resource_type}s/{job.id}"
    return {
        "type": resource_type,
        "id": job.id,
        "attributes": {
            "status": job.status,
            "created_at": iso(job.created_at),
            "total_count": job.total_count,
            "completed_count": job.completed_count,
            "completed_at": iso(job.completed_at),
            "skipped_count": job.skipped_count,
        },
        "relationships": {
            rel: {"data": [], "links": {"self": f"{base}/relationships/{rel}/", "related": f"{base}/{rel}/"}}
            for rel in ("lists", "segments")
        },
        "links": {"self": f"{base}/"},
    }


def _suppression_emails(ctx: Ctx, kind: str) -> list[str]:
    data = require_data(ctx.body_json(BULK_MAX), _SUPPRESSION_TYPES[kind])
    rels = data.get("relationships")
    if isinstance(rels, dict) and (rels.get("list") or rels.get("segment")):
        raise invalid("Suppressing a list or segment is valid in Klaviyo but not modelled by the fake.",
                      pointer="/data/relationships")
    attrs = data.get("attributes")
    profiles = attrs.get("profiles") if isinstance(attrs, dict) else None
    rows = profiles.get("data") if isinstance(profiles, dict) else None
    if not isinstance(rows, list) or not rows:
        raise invalid("At least one profile is required.", pointer="/data/attributes/profiles/data")
    if len(rows) > SUPPRESSION_MAX_PROFILES:
        raise invalid(f"A maximum of {SUPPRESSION_MAX_PROFILES} profiles may be given per request; "
                      f"got {len(rows)}.", pointer="/data/attributes/profiles/data")
    errors, emails = [], []
    for i, row in enumerate(rows):
        pointer = f"/data/attributes/profiles/data/{i}/attributes/email"
        email = (row.get("attributes") or {}).get("email") if isinstance(row, dict) else None
        if not isinstance(email, str) or not is_valid_email(email):
            errors.append(error_item(400, "invalid", "Invalid email address", pointer=pointer))
        else:
            emails.append(email)
    if errors:
        raise ApiError(400, errors)
    return emails


def suppress(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    job = jobs.new_suppression_job(ctx.fake, ctx.account, "create", _suppression_emails(ctx, "create"))
    resource = render_suppression_job(job)
    return 202, {"data": resource, "links": {"self": resource["links"]["self"]}}


def unsuppress(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    job = jobs.new_suppression_job(ctx.fake, ctx.account, "delete", _suppression_emails(ctx, "delete"))
    resource = render_suppression_job(job)
    return 202, {"data": resource, "links": {"self": resource["links"]["self"]}}


def _get_suppression_job(ctx: Ctx, kind: str) -> tuple[int, dict[str, Any]]:
    job = ctx.account.suppression_jobs.get(ctx.params["job_id"])
    if job is None or job.kind != kind:
        raise not_found(f"A {_SUPPRESSION_TYPES[kind]} with id {ctx.params['job_id']} does not exist.")
    resource = render_suppression_job(job)
    return 200, {"data": resource, "links": {"self": resource["links"]["self"]}}


# ---------------------------------------------------------------------------------------------
# Accounts


def get_accounts(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    account_id = ctx.account.id
    resource = {
        "type": "account",
        "id": account_id,
        "attributes": {
            "test_account": False,
            "contact_information": {
                "default_sender_name": "Fake Brand",
                "default_sender_email": f"hello@{account_id.lower()}.example.com",
                "website_url": f"https://{account_id.lower()}.example.com",
                "organization_name": f"Fake Brand {account_id}",
                "street_address": {"address1": "1 Main St", "address2": None, "city": "Boston", "region": "MA",
                                   "country": "US", "zip": "02110"},
            },
            "industry": "Ecommerce",
            "timezone": "America/New_York",
            "preferred_currency": "USD",
            "public_api_key": account_id,
            "locale": "en-US",
        },
        "links": {"self": f"{PUBLIC_BASE}/api/accounts/{account_id}/"},
    }
    return 200, {"data": [resource], "links": {"self": collection_link(ctx, None)}}


# ---------------------------------------------------------------------------------------------
# Dispatch


def _route(method: str, template: str, handler: Callable[[Ctx], tuple[int, Any]],
           *params: str) -> Route:
    return Route(method, template, handler, frozenset(params), _pattern(template))


_PROFILE_VIEW = ("additional-fields[profile]", "fields[profile]")
_EVENT_VIEW = ("fields[attribution]", "fields[event]", "fields[metric]", "fields[profile]", "include")
ROUTES: list[Route] = [
    _route("GET", "/api/accounts", get_accounts, "fields[account]"),
    _route("GET", "/api/profiles", list_profiles, *_PROFILE_VIEW, "fields[conversation]", "fields[push-token]",
           "filter", "include", "page[cursor]", "page[size]", "sort"),
    _route("POST", "/api/profiles", create_profile, *_PROFILE_VIEW),
    _route("GET", "/api/profiles/{id}", get_profile, *_PROFILE_VIEW, "fields[conversation]", "fields[list]",
           "fields[push-token]", "fields[segment]", "include"),
    _route("PATCH", "/api/profiles/{id}", update_profile, *_PROFILE_VIEW),
    _route("POST", "/api/profile-import", import_profile, *_PROFILE_VIEW),
    _route("POST", "/api/profile-bulk-import-jobs", create_bulk_job),
    _route("GET", "/api/profile-bulk-import-jobs/{job_id}", get_bulk_job, "fields[list]",
           "fields[profile-bulk-import-job]", "include"),
    _route("GET", "/api/profile-bulk-import-jobs/{id}/import-errors", get_import_errors, "fields[import-error]",
           "page[cursor]", "page[size]"),
    _route("POST", "/api/profile-suppression-bulk-create-jobs", suppress),
    _route("GET", "/api/profile-suppression-bulk-create-jobs/{job_id}",
           lambda ctx: _get_suppression_job(ctx, "create"), "fields[profile-suppression-bulk-create-job]"),
    _route("POST", "/api/profile-suppression-bulk-delete-jobs", unsuppress),
    _route("GET", "/api/profile-suppression-bulk-delete-jobs/{job_id}",
           lambda ctx: _get_suppression_job(ctx, "delete"), "fields[profile-suppression-bulk-delete-job]"),
    _route("GET", "/api/events", events_api.list_events, *_EVENT_VIEW, "filter", "page[cursor]", "page[size]", "sort"),
    _route("POST", "/api/events", events_api.create_event),
    _route("GET", "/api/events/{id}", events_api.get_event, *_EVENT_VIEW),
    _route("POST", "/api/event-bulk-create-jobs", events_api.create_event_bulk_job),
    _route("GET", "/api/metrics", events_api.list_metrics, "fields[flow]", "fields[metric]", "filter", "include",
           "page[cursor]"),
    _route("GET", "/api/metrics/{id}", events_api.get_metric, "fields[flow]", "fields[metric]", "include"),
]


def unknown_path(fake: FakeKlaviyo, method: str, path: str, other_method: bool) -> Reply:
    if other_method:
        return error_reply(ApiError.one(405, "method_not_allowed", f'Method "{method}" not allowed.'))
    detail = "The requested URL was not found."
    if fake.spec.raw is not None:
        for template in fake.spec.raw.get("paths", {}):
            if _pattern(template).match(path):
                detail = f"{template} exists in Klaviyo's API but is not implemented by the fake."
                break
    return error_reply(not_found(detail))


def dispatch(fake: FakeKlaviyo, req: ApiRequest, route: Route, params: dict[str, str]) -> Reply:
    rate_headers: dict[str, str] = {}
    account_id = None
    jobs.settle(fake)
    try:
        key = authenticate(fake, req.headers.get("authorization"))
        account_id = key.account_id
        check_revision(req.headers.get("revision"))
        op = fake.spec.operations[(route.method, route.template)]
        if not key.allows(op.scopes):
            raise ApiError.one(403, "permission_denied", "You do not have permission to perform this action.")
        knobs = fake.knobs
        if knobs.rate_limits_enabled:
            decision = fake.limiter.hit(
                (key.account_id, op.key),
                scaled(op.burst, knobs.rate_limit_scale, knobs.window_scale),
                scaled(op.steady, knobs.rate_limit_scale, knobs.window_scale),
                fake.monotonic(),
            )
            if not decision.allowed:
                wait = ceil_seconds(decision.retry_after_s)
                raise ApiError.one(
                    429, "throttled", f"Request was throttled. Expected available in {plural(wait, 'second')}.",
                    links={"type": RATE_LIMIT_DOCS},
                    headers={} if knobs.omit_retry_after else {"Retry-After": str(wait)},
                )
            rate_headers = {
                "RateLimit-Limit": str(decision.limit),
                "RateLimit-Remaining": str(decision.remaining),
                "RateLimit-Reset": str(ceil_seconds(decision.reset_s)),
            }
        ctx = Ctx(fake, fake.accounts[key.account_id], req, params, check_query(route, req.query), op)
        status, payload = route.handler(ctx)
        reply = json_reply(status, payload, rate_headers)
    except ApiError as err:
        reply = error_reply(err, rate_headers)
    reply.account_id = account_id
    return reply
