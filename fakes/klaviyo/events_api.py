"""The `/api` handlers of events and metrics (the model and its rules: `fakes.klaviyo.events`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fakes.klaviyo import events
from fakes.klaviyo.context import (
    Ctx,
    check_include,
    csv_param,
    decode_cursor,
    page_size,
    page_sorted,
    paged_links,
    require_attributes,
    require_data,
)
from fakes.klaviyo.errors import ApiError, invalid, not_found
from fakes.klaviyo.events import Event, EventInput, Metric
from fakes.klaviyo.filters import EVENT_FILTERS, METRIC_FILTERS, Condition, FilterError, parse_filter
from fakes.klaviyo.profiles import ATTRIBUTE_ORDER, PUBLIC_BASE, iso, render_profile

EVENT_FIELDS = ("datetime", "event_properties", "id", "timestamp", "uuid")
METRIC_FIELDS = ("created", "id", "integration", "name", "updated")
EVENT_SORTS = ("datetime", "-datetime", "timestamp", "-timestamp")
METRICS_PAGE = 200
_BULK = "/data/attributes/events-bulk-create/data"


# ---------------------------------------------------------------------------------------------
# POST /api/events and /api/event-bulk-create-jobs: validated at once, 202 with no body, processed
# now or after `event_lag_s`.


def _received(ctx: Ctx) -> datetime:
    return datetime.fromtimestamp(ctx.fake.clock.time(), UTC)


def _input(profile: tuple[str | None, dict[str, Any], dict[str, Any] | None], fields: dict[str, Any]) -> EventInput:
    profile_id, attrs, meta = profile
    return EventInput(profile_id=profile_id, profile_attrs=attrs, profile_meta=meta, **fields)


def _too_long_strings(ctx: Ctx, body: Any) -> list[dict[str, Any]]:
    return [events.invalid_item(f"A single string cannot exceed {events.STRING_MAX // events.KB}KB.", pointer)
            for pointer in events.oversized_strings(body.get("data"), "/data")] if isinstance(body, dict) else []


def create_event(ctx: Ctx) -> tuple[int, Any]:
    body = ctx.body_json(events.EVENT_BODY_MAX)
    data = require_data(body, "event")
    attrs = require_attributes(data)
    errors = _too_long_strings(ctx, body)
    profile = events.typed_data(attrs.get("profile"), "profile", "/data/attributes/profile", errors)
    parsed = events.parse_profile(profile, "/data/attributes/profile/data", meta_in_attributes=True,
                                  regions=ctx.fake.knobs.unsupported_phone_regions, errors=errors) \
        if profile is not None else None
    fields = events.parse_event(attrs, "/data/attributes", received=_received(ctx), errors=errors)
    if errors or parsed is None or fields is None:
        raise ApiError(400, errors)
    events.submit(ctx.fake, ctx.account, "POST /api/events", [_input(parsed, fields)])
    return 202, None


def create_event_bulk_job(ctx: Ctx) -> tuple[int, Any]:
    body = ctx.body_json(events.EVENT_BODY_MAX)
    data = require_data(body, "event-bulk-create-job")
    attrs = require_attributes(data)
    container = attrs.get("events-bulk-create")
    entries = container.get("data") if isinstance(container, dict) else None
    if not isinstance(entries, list):
        raise invalid("This field is required.", pointer="/data/attributes/events-bulk-create/data")
    count = sum(len(e["attributes"]["events"]["data"]) for e in entries if _events_of(e) is not None)
    if count == 0:
        raise invalid("At least one event is required.", pointer=_BULK)
    if count > events.BULK_MAX_EVENTS:
        raise invalid(f"A maximum of {events.BULK_MAX_EVENTS} events may be created per request; got {count}.",
                      pointer=_BULK)
    errors = _too_long_strings(ctx, body)
    received = _received(ctx)
    regions = ctx.fake.knobs.unsupported_phone_regions
    inputs: list[tuple[str, EventInput]] = []
    for i, entry in enumerate(entries):
        prefix = f"{_BULK}/{i}"
        if not _of_type(entry, "event-bulk-create", prefix, errors):
            continue
        entry_attrs = entry.get("attributes") if isinstance(entry.get("attributes"), dict) else {}
        profile = events.typed_data(entry_attrs.get("profile"), "profile", f"{prefix}/attributes/profile", errors)
        parsed = events.parse_profile(profile, f"{prefix}/attributes/profile/data", meta_in_attributes=False,
                                      regions=regions, errors=errors) if profile is not None else None
        items = _events_of(entry)
        if items is None:
            errors.append(events.invalid_item("This field is required.", f"{prefix}/attributes/events/data"))
            continue
        for j, item in enumerate(items):
            pointer = f"{prefix}/attributes/events/data/{j}"
            if not _of_type(item, "event", pointer, errors):
                continue
            fields = events.parse_event(item.get("attributes"), f"{pointer}/attributes", received=received,
                                        errors=errors)
            if parsed is not None and fields is not None:
                inputs.append((f"{pointer}/attributes/unique_id", _input(parsed, fields)))
    if not errors:
        errors = events.repeated_in_request(inputs)
    if errors:
        raise ApiError(400, errors)
    events.submit(ctx.fake, ctx.account, "event-bulk-create-job", [item for _, item in inputs])
    return 202, None


def _of_type(item: Any, resource_type: str, pointer: str, errors: list[dict[str, Any]]) -> bool:
    """Whether `item` is an object of `resource_type`; if not, an error at its `type`."""
    if isinstance(item, dict) and item.get("type") == resource_type:
        return True
    kind = item.get("type") if isinstance(item, dict) else None
    errors.append(events.invalid_item(f"'{kind}' is not a valid type; expected '{resource_type}'.", f"{pointer}/type"))
    return False


def _events_of(entry: Any) -> list[Any] | None:
    attrs = entry.get("attributes") if isinstance(entry, dict) else None
    container = attrs.get("events") if isinstance(attrs, dict) else None
    items = container.get("data") if isinstance(container, dict) else None
    return items if isinstance(items, list) else None


# ---------------------------------------------------------------------------------------------
# Rendering


def _fields(ctx: Ctx, resource: str, allowed: tuple[str, ...]) -> list[str] | None:
    values = csv_param(ctx.query, f"fields[{resource}]")
    for v in values:
        if v.split(".")[0] not in allowed:
            raise invalid(f"'{v}' is not a valid field for the resource '{resource}'.", parameter=f"fields[{resource}]")
    return values or None


def _sparse(attrs: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    return attrs if fields is None else {k: v for k, v in attrs.items() if k in fields}


def _relationship(base: str, name: str, data: Any) -> dict[str, Any]:
    return {"data": data, "links": {"self": f"{base}/relationships/{name}/", "related": f"{base}/{name}/"}}


def render_event(event: Event, fields: list[str] | None = None) -> dict[str, Any]:
    base = f"{PUBLIC_BASE}/api/events/{event.id}"
    attrs = {"timestamp": event.timestamp, "event_properties": dict(event.properties),
             "datetime": events.iso_seconds(event.time), "uuid": event.uuid}
    return {
        "type": "event",
        "id": event.id,
        "attributes": _sparse(attrs, fields),
        "relationships": {
            "profile": _relationship(base, "profile", {"type": "profile", "id": event.profile_id}),
            "metric": _relationship(base, "metric", {"type": "metric", "id": event.metric_id}),
            "attributions": _relationship(base, "attributions", []),
        },
        "links": {"self": f"{base}/"},
    }


def render_metric(metric: Metric, fields: list[str] | None = None) -> dict[str, Any]:
    base = f"{PUBLIC_BASE}/api/metrics/{metric.id}"
    attrs = {"name": metric.name, "created": iso(metric.created), "updated": iso(metric.created),
             "integration": _integration(metric)}
    return {
        "type": "metric",
        "id": metric.id,
        "attributes": _sparse(attrs, fields),
        "relationships": {"flow-triggers": {"links": {"self": f"{base}/relationships/flow-triggers/",
                                                      "related": f"{base}/flow-triggers/"}}},
        "links": {"self": f"{base}/"},
    }


def _integration(metric: Metric) -> dict[str, Any]:
    """UNCONFIRMED shape; events sent through the API belong to the "API" integration."""
    name = "API" if metric.service == events.DEFAULT_SERVICE else metric.service
    return {"object": "integration", "id": metric.service, "name": name, "category": "API"}


def _included(ctx: Ctx, page: list[Event], include: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    log, store = ctx.account.events, ctx.store
    if "metric" in include:
        metric_fields = _fields(ctx, "metric", METRIC_FIELDS)
        for metric_id in dict.fromkeys(e.metric_id for e in page):
            out.append(render_metric(log.metrics[metric_id], metric_fields))
    if "profile" in include:
        profile_fields = _fields(ctx, "profile", (*ATTRIBUTE_ORDER, "id"))
        for profile_id in dict.fromkeys(e.profile_id for e in page):
            p = store.profiles.get(profile_id)
            if p is not None:
                out.append(render_profile(p, fields=profile_fields))
    return out


# ---------------------------------------------------------------------------------------------
# GET /api/events, /api/events/{id}


def _event_matches(event: Event, c: Condition) -> bool:
    if c.op == "has":
        return True   # every event has its profile and its metric
    if c.field == "metric_id":
        return event.metric_id in (c.value if isinstance(c.value, list) else [c.value])
    if c.field == "profile_id":
        return bool(event.profile_id == c.value)
    actual: Any = event.time if c.field == "datetime" else event.timestamp
    return {
        "greater-than": actual > c.value, "greater-or-equal": actual >= c.value,
        "less-than": actual < c.value, "less-or-equal": actual <= c.value,
    }[c.op]


_EVENT_KEY: Callable[[Event], list[Any]] = lambda e: [e.timestamp, e.id]  # noqa: E731


def list_events(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    q = ctx.query
    size = page_size(q, default=200, maximum=1000)
    fields = _fields(ctx, "event", EVENT_FIELDS)
    include = check_include(q, ("attributions", "metric", "profile"))
    try:
        conditions = parse_filter(q["filter"], max_any_values=ctx.fake.knobs.max_any_values, rules=EVENT_FILTERS,
                                  resource="event", not_modelled=()) if q.get("filter") else []
    except FilterError as exc:
        raise invalid(str(exc), parameter="filter") from None
    sort = q.get("sort", "datetime")
    if sort not in EVENT_SORTS:
        raise invalid(f"'{sort}' is not a valid sort for the resource 'event'.", parameter="sort")
    # datetime and timestamp are the same instant: one cursor key serves both.
    cursor = decode_cursor(q["page[cursor]"], sort) if q.get("page[cursor]") else None
    items = [e for e in ctx.account.events.events.values() if all(_event_matches(e, c) for c in conditions)]
    page, has_prev, has_next = page_sorted(items, _EVENT_KEY, sort.startswith("-"), cursor, size)
    body: dict[str, Any] = {"data": [render_event(e, fields) for e in page],
                            "links": paged_links(ctx, page, _EVENT_KEY, sort, has_prev, has_next)}
    if include:
        body["included"] = _included(ctx, page, include)
    return 200, body


def get_event(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    fields = _fields(ctx, "event", EVENT_FIELDS)
    include = check_include(ctx.query, ("attributions", "metric", "profile"))
    event = ctx.account.events.events.get(ctx.params["id"])
    if event is None:
        raise not_found(f"An event with id {ctx.params['id']} does not exist.")
    return 200, _single(render_event(event, fields), _included(ctx, [event], include) if include else None)


def _single(resource: dict[str, Any], included: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The document of one resource; `included` only when `include` asked for it."""
    body: dict[str, Any] = {"data": resource, "links": {"self": resource["links"]["self"]}}
    if included is not None:
        body["included"] = included
    return body


# ---------------------------------------------------------------------------------------------
# GET /api/metrics, /api/metrics/{id}


def _metric_matches(metric: Metric, c: Condition) -> bool:
    integration = _integration(metric)
    return bool(integration["name" if c.field == "integration.name" else "category"] == c.value)


_METRIC_KEY: Callable[[Metric], list[Any]] = lambda m: [iso(m.created), m.id]  # noqa: E731


def list_metrics(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    q = ctx.query
    fields = _fields(ctx, "metric", METRIC_FIELDS)
    include = check_include(q, ("flow-triggers",))
    try:
        conditions = parse_filter(q["filter"], rules=METRIC_FILTERS, resource="metric",
                                  not_modelled=()) if q.get("filter") else []
    except FilterError as exc:
        raise invalid(str(exc), parameter="filter") from None
    cursor = decode_cursor(q["page[cursor]"], "created") if q.get("page[cursor]") else None
    items = [m for m in ctx.account.events.metrics.values() if all(_metric_matches(m, c) for c in conditions)]
    page, has_prev, has_next = page_sorted(items, _METRIC_KEY, False, cursor, METRICS_PAGE)
    body: dict[str, Any] = {"data": [render_metric(m, fields) for m in page],
                            "links": paged_links(ctx, page, _METRIC_KEY, "created", has_prev, has_next)}
    if include:
        body["included"] = []
    return 200, body


def get_metric(ctx: Ctx) -> tuple[int, dict[str, Any]]:
    fields = _fields(ctx, "metric", METRIC_FIELDS)
    include = check_include(ctx.query, ("flow-triggers",))
    metric = ctx.account.events.metrics.get(ctx.params["id"])
    if metric is None:
        raise not_found(f"A metric with id {ctx.params['id']} does not exist.")
    return 200, _single(render_metric(metric, fields), [] if include else None)
