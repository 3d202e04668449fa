"""Events and metrics: the model, validation of create payloads, and processing (de-duplication, the
profile an event names, metrics made on first use).

What is documented (Klaviyo's OpenAPI spec, revision 2026-07-15; create_event, bulk_create_events):
  * Both endpoints answer `202` with no body: "the event was validated and submitted for processing,
    but does not guarantee that processing is complete". There is no GET of an event bulk job in the
    spec; the fake keeps the job (status, counts) for its control API only (`GET /_fake/event-jobs`).
  * `unique_id`: "If the unique_id is repeated for the same profile and metric, only the first
    processed event will be recorded. If this is not present, this will use the time to the second.
    Using the default, this limits only one event per profile per second." Observed live across
    separate requests (elbwalker/walkerOS#709: two sends with one unique_id, one event recorded).
  * Bulk: "Accepts up to 1,000 events per request. The maximum allowed payload size is 5MB. A single
    string cannot exceed 100KB." and "If a unique_id is repeated for the same profile and metric, the
    request will fail and no events will be processed."
  * `time`: "By default, the time the request was received will be used. The time is truncated to
    the second. The time must be after the year 1990 and can only be up to 1 year in the future."
  * `properties` is required and "must not exceed 400 properties"; a metric `name` "Must be less than
    128 characters".
  * Both endpoints "allow you to create a new profile or update an existing profile's properties":
    an event naming an identifier no profile holds creates a profile.

UNCONFIRMED, and what the fake does (the least kind reading allowed):
  * Within one bulk request, a repeated (profile, metric, unique_id) is a 400 naming the event; a bulk
    job that repeats an event already recorded records nothing (`event_bulk_repeat_fails_job`, on by
    default; off = such events are dropped one by one like single creates). A missing unique_id
    counts as the time to the second for both rules.
  * An event's profile attributes are applied to the profile like `profile-import`: explicit `null`
    clears. Identifiers already held by another profile are not moved (the event goes to the profile
    of the first identifier found, in email, phone_number, external_id order); events never merge
    profiles. An unknown profile `id` drops the event at processing (the 202 has been given).
  * The answers of `GET /api/events` hold the event's properties as sent, nothing added (Klaviyo may
    add `$event_id`/`$value`; a client must not rely on reading its unique_id back). Its default
    order is `datetime` ascending (then id).
  * Metrics are one per (name, service); a metric exists from the first processed event that names it.
  * `last_event_date` of the profile follows its latest event time; `updated` does not move for an event.
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fakes.klaviyo.errors import error_item
from fakes.klaviyo.filters import FilterError, parse_datetime
from fakes.klaviyo.profiles import (
    IDENTIFIERS,
    Profile,
    ProfileStore,
    email_key,
    identifiers_in,
    iso,
    validate_attributes,
    validate_meta,
)

if TYPE_CHECKING:
    from fakes.klaviyo.state import Account, FakeKlaviyo

KB = 1024
EVENT_BODY_MAX = 5 * KB * KB
STRING_MAX = 100 * KB
BULK_MAX_EVENTS = 1000
MAX_PROPERTIES = 400
METRIC_NAME_MAX = 127
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
DEFAULT_SERVICE = "api"
_PROFILE_EXTRAS = ("anonymous_id", "_kx")
_ALNUM = string.ascii_letters + string.digits


@dataclass(slots=True)
class Metric:
    id: str
    name: str
    service: str
    created: datetime


@dataclass(slots=True)
class EventInput:
    """One validated event waiting to be processed."""

    profile_id: str | None
    profile_attrs: dict[str, Any]
    profile_meta: dict[str, Any] | None
    metric_name: str
    service: str
    properties: dict[str, Any]
    time: datetime
    value: float | None
    value_currency: str | None
    unique_id: str | None
    backfill: bool

    @property
    def key(self) -> tuple[str, str]:
        """What de-duplicates the event within its profile and metric: the unique_id, or the time to
        the second when there is none."""
        return ("unique_id", self.unique_id) if self.unique_id is not None else ("time", iso_seconds(self.time))

    def profile_ref(self) -> tuple[Any, ...]:
        """The profile as the request names it (before any lookup): its id, else its identifiers."""
        if self.profile_id is not None:
            return ("id", self.profile_id)
        idents = identifiers_in(self.profile_attrs)
        return tuple(sorted((k, email_key(v) if k == "email" else v) for k, v in idents.items()))


@dataclass(slots=True)
class Event:
    id: str
    uuid: str
    metric_id: str
    profile_id: str
    time: datetime
    properties: dict[str, Any]
    value: float | None
    value_currency: str | None
    unique_id: str | None
    backfill: bool
    #: Fake-clock seconds: when the request was accepted and when the event was processed.
    received: float
    recorded: float
    via: str
    job_id: str | None
    profile_created: bool
    profile_changed: bool
    key: tuple[str, str]

    @property
    def timestamp(self) -> int:
        return int(self.time.timestamp())


@dataclass
class EventSubmission:
    """A `POST /api/events` (one event) or an event bulk job, from acceptance to processing."""

    id: str
    via: str
    received: float
    due: float
    inputs: list[EventInput]
    status: str = "queued"
    recorded: int = 0
    dropped: int = 0
    completed: float | None = None
    reason: str | None = None


@dataclass
class EventLog:
    """One account's metrics, events, dropped events and the profiles events created."""

    metrics: dict[str, Metric] = field(default_factory=dict)
    metric_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    #: (profile id, metric id, key) of every recorded event.
    keys: dict[tuple[str, str, tuple[str, str]], str] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, EventSubmission] = field(default_factory=dict)
    profiles_created: list[dict[str, Any]] = field(default_factory=list)

    def record(self, event: Event) -> None:
        self.events[event.id] = event
        self.keys[(event.profile_id, event.metric_id, event.key)] = event.id

    def move_profile(self, source_id: str, kept_id: str) -> None:
        """A merge moved `source_id`'s events to `kept_id`; a first event keeps its place in `keys`."""
        for event in self.events.values():
            if event.profile_id == source_id:
                del self.keys[(source_id, event.metric_id, event.key)]
                event.profile_id = kept_id
                self.keys.setdefault((kept_id, event.metric_id, event.key), event.id)


def iso_seconds(ts: datetime) -> str:
    """`2022-11-08T01:23:45+00:00`, the form `datetime` takes in Klaviyo's answers."""
    return ts.astimezone(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Validation: pure, returns error items (JSON:API) so several can be reported at once.


def oversized_strings(value: Any, pointer: str) -> Iterator[str]:
    """Pointers of strings over 100 KB anywhere in `value` ("A single string cannot exceed 100KB")."""
    if isinstance(value, str):
        if len(value.encode()) > STRING_MAX:
            yield pointer
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from oversized_strings(v, f"{pointer}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from oversized_strings(v, f"{pointer}/{i}")


def invalid_item(detail: str, pointer: str) -> dict[str, Any]:
    return error_item(400, "invalid", detail, pointer=pointer)


def typed_data(value: Any, resource_type: str, pointer: str, errors: list[dict[str, Any]]) -> dict[str, Any] | None:
    """`value` must be `{"data": {"type": resource_type, ...}}`; returns `data`."""
    data = value.get("data") if isinstance(value, dict) else None
    if not isinstance(data, dict):
        errors.append(invalid_item("This field is required.", f"{pointer}/data"))
        return None
    if data.get("type") != resource_type:
        errors.append(invalid_item(f"'{data.get('type')}' is not a valid type; expected '{resource_type}'.",
                           f"{pointer}/data/type"))
        return None
    return data


def parse_profile(data: Any, prefix: str, *, meta_in_attributes: bool, regions: list[str],
                  errors: list[dict[str, Any]]) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
    """(id, attributes, meta) of an event's profile object at `prefix` (the `data` object). The single
    create carries `meta` inside `attributes` (OnsiteProfileMeta), the bulk entry beside them."""
    before = len(errors)
    profile_id = data.get("id")
    if profile_id is not None and not isinstance(profile_id, str):
        errors.append(invalid_item("'id' must be a string.", f"{prefix}/id"))
        profile_id = None
    attrs = data.get("attributes")
    if not isinstance(attrs, dict):
        errors.append(invalid_item("This field is required.", f"{prefix}/attributes"))
        return None, {}, None
    attrs = dict(attrs)
    meta = attrs.pop("meta", None) if meta_in_attributes else data.get("meta")
    for extra in _PROFILE_EXTRAS:
        if attrs.pop(extra, None) is not None:
            errors.append(invalid_item(f"'{extra}' is valid in Klaviyo but not modelled by the fake.",
                               f"{prefix}/attributes/{extra}"))
    errors += validate_attributes(attrs, f"{prefix}/attributes", unsupported_regions=regions)
    meta_pointer = f"{prefix}/attributes/meta" if meta_in_attributes else f"{prefix}/meta"
    errors += validate_meta(meta, meta_pointer, f"{meta_pointer}/patch_properties/unset")
    if len(errors) == before and profile_id is None and not identifiers_in(attrs):
        errors.append(invalid_item("One or more identifiers is required", f"{prefix}/attributes"))
    return profile_id, attrs, meta


def parse_event(attrs: Any, prefix: str, *, received: datetime, errors: list[dict[str, Any]]
                ) -> dict[str, Any] | None:
    """The event's own fields at `prefix` (its `attributes`), without the profile; None when invalid."""
    if not isinstance(attrs, dict):
        errors.append(invalid_item("This field is required.", prefix))
        return None
    before = len(errors)
    props = attrs.get("properties")
    if not isinstance(props, dict):
        errors.append(invalid_item("This field is required and must be an object.", f"{prefix}/properties"))
    elif len(props) > MAX_PROPERTIES:
        errors.append(invalid_item(f"An event must not exceed {MAX_PROPERTIES} properties; got {len(props)}.",
                           f"{prefix}/properties"))
    name, service = "", DEFAULT_SERVICE
    metric = typed_data(attrs.get("metric"), "metric", f"{prefix}/metric", errors)
    if metric is not None:
        m_attrs = metric.get("attributes")
        name = m_attrs.get("name") if isinstance(m_attrs, dict) else None
        if not isinstance(name, str) or not name.strip():
            errors.append(invalid_item("A metric name is required.", f"{prefix}/metric/data/attributes/name"))
        elif len(name) > METRIC_NAME_MAX:
            errors.append(invalid_item("The metric name must be less than 128 characters.",
                               f"{prefix}/metric/data/attributes/name"))
        raw_service = m_attrs.get("service") if isinstance(m_attrs, dict) else None
        if raw_service is not None and not isinstance(raw_service, str):
            errors.append(invalid_item("'service' must be a string.", f"{prefix}/metric/data/attributes/service"))
        service = raw_service or DEFAULT_SERVICE
    when = _event_time(attrs.get("time"), f"{prefix}/time", received, errors)
    value = attrs.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        errors.append(invalid_item("'value' must be a number.", f"{prefix}/value"))
    for name_, kind in (("value_currency", str), ("unique_id", str), ("backfill", bool)):
        if attrs.get(name_) is not None and not isinstance(attrs[name_], kind):
            errors.append(invalid_item(f"'{name_}' must be a {'boolean' if kind is bool else 'string'}.",
                               f"{prefix}/{name_}"))
    if len(errors) > before:
        return None
    return {"metric_name": name, "service": service, "properties": dict(props or {}), "time": when,
            "value": None if value is None else float(value), "value_currency": attrs.get("value_currency"),
            "unique_id": attrs.get("unique_id"), "backfill": bool(attrs.get("backfill"))}


def _event_time(raw: Any, pointer: str, received: datetime, errors: list[dict[str, Any]]) -> datetime:
    """The event's time truncated to the second; the time the request was received when absent."""
    if raw is None:
        return received.replace(microsecond=0)
    try:
        if not isinstance(raw, str):
            raise FilterError(str(raw))
        when = parse_datetime(raw).astimezone(UTC)
    except FilterError:
        errors.append(invalid_item(f"Invalid datetime {raw!r} (ISO 8601 expected).", pointer))
        return received
    if when <= EARLIEST:
        errors.append(invalid_item("The time must be after the year 1990.", pointer))
    elif when > received + timedelta(days=365):
        errors.append(invalid_item("The time can only be up to 1 year in the future.", pointer))
    return when.replace(microsecond=0)


def repeated_in_request(inputs: list[tuple[str, EventInput]]) -> list[dict[str, Any]]:
    """A 400 item for each event that repeats an earlier one of the same request: same profile (as
    named), metric and unique_id (or time to the second). `inputs`: (unique_id pointer, event)."""
    seen: dict[tuple[Any, ...], str] = {}
    errors = []
    for pointer, item in inputs:
        key = (item.profile_ref(), item.metric_name, item.service, item.key)
        first = seen.setdefault(key, pointer)
        if first != pointer:
            what = f"unique_id {item.unique_id!r}" if item.unique_id is not None else \
                f"the time {iso_seconds(item.time)} (no unique_id)"
            errors.append(invalid_item(f"{what} is repeated for the same profile and metric in this request "
                               f"(first at {first}): no events were processed.", pointer))
    return errors


# ---------------------------------------------------------------------------------------------
# Processing


def submit(fake: FakeKlaviyo, account: Account, via: str, inputs: list[EventInput]) -> EventSubmission:
    """Accept events (the 202): processed now, or after `event_lag_s` on the fake clock."""
    now = fake.clock.time()
    sub = EventSubmission(fake.ids.new(), via, now, now + fake.knobs.event_lag_s, inputs)
    if via == "event-bulk-create-job":
        account.events.jobs[sub.id] = sub
    if fake.knobs.event_lag_s > 0:
        fake.pending[sub.id] = (account, sub)
    else:
        process(fake, account, sub)
    return sub


def process(fake: FakeKlaviyo, account: Account, sub: EventSubmission) -> None:
    log, at = account.events, sub.due
    fake.pending.pop(sub.id, None)
    sub.completed = at
    if sub.via == "event-bulk-create-job" and fake.knobs.event_bulk_repeat_fails_job:
        repeat = _first_repeat(account, sub.inputs)
        if repeat is not None:
            sub.status, sub.reason, sub.dropped = "failed", repeat, len(sub.inputs)
            for item in sub.inputs:
                _drop(log, sub, item, "job_failed_on_repeat", None, None)
            return
    for item in sub.inputs:
        _process_one(fake, account, sub, item, at)
    sub.status = "complete"


def _first_repeat(account: Account, inputs: list[EventInput]) -> str | None:
    """Why a bulk job must fail, or None: an event that repeats a recorded one or another of the job,
    as the profiles stand now (no profile is created or changed to find out)."""
    log, store = account.events, account.store
    seen: set[tuple[Any, ...]] = set()
    for item in inputs:
        profile = _existing_profile(store, item)
        who = ("profile", profile.id) if profile is not None else item.profile_ref()
        metric_id = log.metric_ids.get((item.metric_name, item.service))
        if profile is not None and metric_id is not None and (profile.id, metric_id, item.key) in log.keys:
            return f"event {item.key[1]!r} of {item.metric_name!r} repeats one recorded for profile {profile.id}"
        mark = (who, item.metric_name, item.service, item.key)
        if mark in seen:
            return f"event {item.key[1]!r} of {item.metric_name!r} is repeated within the job"
        seen.add(mark)
    return None


def _existing_profile(store: ProfileStore, item: EventInput) -> Profile | None:
    if item.profile_id is not None:
        return store.profiles.get(item.profile_id)
    owners = store.owners(identifiers_in(item.profile_attrs))
    return store.profiles[owners[0]] if owners else None


def _process_one(fake: FakeKlaviyo, account: Account, sub: EventSubmission, item: EventInput, at: float) -> None:
    log, store = account.events, account.store
    profile = _existing_profile(store, item)
    if profile is None and item.profile_id is not None:
        _drop(log, sub, item, "unknown_profile", None, None)
        sub.dropped += 1
        return
    created = profile is None
    if profile is None:
        profile = store.create(item.profile_attrs, item.profile_meta)
        changed = True
        log.profiles_created.append({
            "profile_id": profile.id, "account_id": account.id, "identifiers": identifiers_in(item.profile_attrs),
            "via": sub.via, "job_id": _job_id(sub), "metric": item.metric_name, "unique_id": item.unique_id,
            "at": _iso_at(at)})
    else:
        attrs = {k: v for k, v in item.profile_attrs.items()
                 if k not in IDENTIFIERS or store.conflict(profile.id, {k: v}) is None}
        changed = store.update(profile, attrs, item.profile_meta, ignore_nulls=False)
    if changed:
        store.written[profile.id] = at
    metric = _metric(fake, account, item.metric_name, item.service, at)
    first = log.keys.get((profile.id, metric.id, item.key))
    if first is not None:
        _drop(log, sub, item, "duplicate", profile.id, first)
        sub.dropped += 1
        return
    event = Event(id=fake.ids.new(), uuid=str(uuid.uuid4()), metric_id=metric.id, profile_id=profile.id,
                  time=item.time, properties=item.properties, value=item.value, value_currency=item.value_currency,
                  unique_id=item.unique_id, backfill=item.backfill, received=sub.received, recorded=at,
                  via=sub.via, job_id=_job_id(sub), profile_created=created, profile_changed=changed and not created,
                  key=item.key)
    log.record(event)
    sub.recorded += 1
    if profile.last_event_date is None or item.time > profile.last_event_date:
        profile.last_event_date = item.time


def _metric(fake: FakeKlaviyo, account: Account, name: str, service: str, at: float) -> Metric:
    log = account.events
    metric_id = log.metric_ids.get((name, service))
    if metric_id is not None:
        return log.metrics[metric_id]
    rng: random.Random = fake.metric_names
    new_id = "".join(rng.choice(_ALNUM) for _ in range(6))
    while new_id in log.metrics:
        new_id = "".join(rng.choice(_ALNUM) for _ in range(6))
    metric = Metric(new_id, name, service, datetime.fromtimestamp(at, UTC))
    log.metrics[new_id] = metric
    log.metric_ids[(name, service)] = new_id
    return metric


def _job_id(sub: EventSubmission) -> str | None:
    return sub.id if sub.via == "event-bulk-create-job" else None


def _iso_at(at: float) -> str | None:
    return iso(datetime.fromtimestamp(at, UTC))


def _drop(log: EventLog, sub: EventSubmission, item: EventInput, reason: str, profile_id: str | None,
          duplicate_of: str | None) -> None:
    log.dropped.append({
        "reason": reason, "metric": item.metric_name, "profile_id": profile_id,
        "profile": {"id": item.profile_id, **identifiers_in(item.profile_attrs)},
        "unique_id": item.unique_id, "time": iso_seconds(item.time), "properties": item.properties,
        "duplicate_of": duplicate_of, "via": sub.via, "job_id": _job_id(sub), "at": _iso_at(sub.completed or 0.0),
    })


# ---------------------------------------------------------------------------------------------
# What the control API shows


def event_state(event: Event, log: EventLog, account_id: str) -> dict[str, Any]:
    metric = log.metrics[event.metric_id]
    return {
        "id": event.id, "account_id": account_id, "metric": metric.name, "metric_id": metric.id,
        "profile_id": event.profile_id, "time": iso_seconds(event.time), "timestamp": event.timestamp,
        "unique_id": event.unique_id, "properties": event.properties, "value": event.value,
        "value_currency": event.value_currency, "backfill": event.backfill, "via": event.via,
        "job_id": event.job_id, "received": _iso_at(event.received), "recorded": _iso_at(event.recorded),
        "profile_created": event.profile_created, "profile_changed": event.profile_changed,
    }


def job_state(sub: EventSubmission) -> dict[str, Any]:
    return {"id": sub.id, "status": sub.status, "events": len(sub.inputs), "recorded": sub.recorded,
            "dropped": sub.dropped, "reason": sub.reason, "created": sub.received, "completed": sub.completed}
