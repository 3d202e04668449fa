"""The fake Klaviyo's events and metrics, in process (Starlette's TestClient): create, bulk create,
de-duplication by unique_id, profiles events create, validation, lists and filters, rate limits and
the control API. The fake clock is frozen, rate limits run on an injected clock: nothing here waits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from fakes.klaviyo.app import create_app
from fakes.klaviyo.config import AccountSpec, FakeKlaviyoConfig, KeySpec
from fakes.klaviyo.ratelimit import Limit
from fakes.klaviyo.state import FakeKlaviyo
from fakes.klaviyo_control import REVISION, FakeKlaviyoControl

KEY = "pk_" + "e7e7" * 8 + "01"
OTHER_KEY = "pk_" + "0a0a" * 8 + "02"
ACCOUNT = "EvNt01"
JSONAPI = "application/vnd.api+json"
EARNED = "Loyale Points Earned"
BULK = "/data/attributes/events-bulk-create/data"
#: The fake clock stands here (ahead of the wall clock: it never goes back); events carry their own
#: times, days earlier.
NOW = "2099-03-10T12:00:00+00:00"


@dataclass
class Fake:
    api: TestClient
    control: FakeKlaviyoControl
    state: FakeKlaviyo


@pytest.fixture
def fake() -> Iterator[Fake]:
    app = create_app(FakeKlaviyoConfig(accounts=[AccountSpec(ACCOUNT, [KeySpec(KEY)]),
                                                 AccountSpec("OtHr02", [KeySpec(OTHER_KEY)])]))
    headers = {"Authorization": f"Klaviyo-API-Key {KEY}", "revision": REVISION, "content-type": JSONAPI}
    with TestClient(app, base_url="http://fake-klaviyo", headers=headers) as api:
        control = FakeKlaviyoControl("http://fake-klaviyo", http=api)
        control.set_knobs(rate_limits_enabled=False)   # turned on, on an injected clock, where tested
        state: FakeKlaviyo = app.state.fake
        state.clock.freeze()
        state.clock.advance(_epoch(NOW) - state.clock.time())
        yield Fake(api, control, state)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def event(metric: str = EARNED, unique_id: str | None = None, time: str | None = "2099-03-01T09:30:15.750Z",
          properties: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The attributes of one event, without its profile."""
    attrs: dict[str, Any] = {"properties": {"points": 10} if properties is None else properties,
                             "metric": {"data": {"type": "metric", "attributes": {"name": metric}}}, **extra}
    if unique_id is not None:
        attrs["unique_id"] = unique_id
    if time is not None:
        attrs["time"] = time
    return attrs


def profile(profile_id: str | None = None, **attributes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "profile", "attributes": attributes}
    if profile_id is not None:
        data["id"] = profile_id
    return {"data": data}


def single(who: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"data": {"type": "event", "attributes": {**event(**kw), "profile": who}}}


def bulk(*entries: tuple[dict[str, Any], list[dict[str, Any]]]) -> dict[str, Any]:
    return {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": [
        {"type": "event-bulk-create", "attributes": {
            "profile": who, "events": {"data": [{"type": "event", "attributes": e} for e in events]}}}
        for who, events in entries]}}}}


def post(fake: Fake, body: dict[str, Any], path: str = "/api/events") -> None:
    response = fake.api.post(path, json=body)
    assert response.status_code == 202, response.text
    assert response.content == b""


def errors_of(response: Any) -> list[tuple[str, str]]:
    assert response.status_code == 400, response.text
    return [(e["source"].get("pointer") or e["source"].get("parameter"), e["detail"])
            for e in response.json()["errors"]]


# -- create, time, metric ----------------------------------------------------------------------


def test_an_event_is_accepted_with_a_bare_202_and_recorded_at_its_own_time(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), unique_id="tx-1", value=12.5, value_currency="EUR"))
    (recorded,) = fake.control.events()
    assert recorded["time"] == "2099-03-01T09:30:15+00:00"          # its `time`, truncated to the second
    assert recorded["timestamp"] == int(_epoch("2099-03-01T09:30:15+00:00"))
    assert recorded["received"].startswith("2099-03-10T12:00:00")    # not the clock that received it
    assert (recorded["metric"], recorded["unique_id"], recorded["value"], recorded["value_currency"]) == (
        EARNED, "tx-1", 12.5, "EUR")
    (listed,) = fake.api.get("/api/events").json()["data"]
    assert listed["attributes"]["datetime"] == "2099-03-01T09:30:15+00:00"
    assert listed["attributes"]["event_properties"] == {"points": 10}
    assert listed["relationships"]["profile"]["data"]["id"] == recorded["profile_id"]
    assert listed["relationships"]["metric"]["data"]["id"] == recorded["metric_id"]
    (metric,) = fake.api.get("/api/metrics").json()["data"]
    assert (metric["id"], metric["attributes"]["name"]) == (recorded["metric_id"], EARNED)
    owner = fake.control.profile(recorded["profile_id"])["attributes"]
    assert owner["last_event_date"] == "2099-03-01T09:30:15.000000+00:00"


def test_events_within_one_second_keep_the_order_they_were_processed_in(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), unique_id="late", time="2099-03-01T09:30:15.900Z"))
    post(fake, single(profile(email="jane@x.com"), unique_id="early", time="2099-03-01T09:30:15.100Z"))
    assert [e["unique_id"] for e in fake.control.events()] == ["late", "early"]
    assert [e["id"] for e in fake.api.get("/api/events").json()["data"]] == [e["id"] for e in fake.control.events()]


def test_an_event_without_time_takes_the_time_it_was_received_to_the_second(fake: Fake) -> None:
    fake.control.advance_clock(0.4)
    post(fake, single(profile(email="jane@x.com"), unique_id="tx-1", time=None))
    (recorded,) = fake.control.events()
    assert recorded["time"] == NOW
    assert fake.control.profile(recorded["profile_id"])["attributes"]["last_event_date"] == (
        NOW.replace("+", ".000000+"))


def test_a_metric_is_created_once_by_name_on_first_use(fake: Fake) -> None:
    for i, name in enumerate([EARNED, "Loyale Points Spent", EARNED]):
        post(fake, single(profile(email="jane@x.com"), metric=name, unique_id=f"tx-{i}"))
    assert [m["name"] for m in fake.control.metrics()] == [EARNED, "Loyale Points Spent"]
    ids = {e["metric"]: e["metric_id"] for e in fake.control.events()}
    assert len(set(ids.values())) == 2


# -- de-duplication -----------------------------------------------------------------------------


def test_a_unique_id_repeated_for_the_same_profile_and_metric_is_one_event(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), unique_id="tx-1", properties={"points": 10}))
    post(fake, single(profile(email="JANE@x.com"), unique_id="tx-1", properties={"points": 99}))
    (kept,) = fake.control.events()
    assert kept["properties"] == {"points": 10}                      # the first processed wins
    (dropped,) = fake.control.dropped_events()
    assert (dropped["reason"], dropped["duplicate_of"]) == ("duplicate", kept["id"])
    # The same unique_id under another metric, or for another profile, is another event.
    post(fake, single(profile(email="jane@x.com"), metric="Loyale Points Spent", unique_id="tx-1"))
    post(fake, single(profile(email="joe@x.com"), unique_id="tx-1"))
    assert len(fake.control.events()) == 3
    assert len(fake.api.get("/api/events").json()["data"]) == 3


def test_without_a_unique_id_the_time_to_the_second_is_the_key(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), time="2099-03-01T09:30:15.100Z", properties={"n": 1}))
    post(fake, single(profile(email="jane@x.com"), time="2099-03-01T09:30:15.900Z", properties={"n": 2}))
    post(fake, single(profile(email="jane@x.com"), time="2099-03-01T09:30:16Z", properties={"n": 3}))
    assert [e["properties"]["n"] for e in fake.control.events()] == [1, 3]
    # Two sends without `time` in the same second of the clock: one event.
    post(fake, single(profile(email="joe@x.com"), time=None))
    post(fake, single(profile(email="joe@x.com"), time=None))
    assert [d["reason"] for d in fake.control.dropped_events()] == ["duplicate", "duplicate"]


# -- the profile an event names ------------------------------------------------------------------


def test_an_event_naming_an_unknown_identifier_creates_a_profile_and_the_control_api_says_so(fake: Fake) -> None:
    (seeded,) = fake.control.seed_profiles([{"email": "known@x.com", "external_id": "L-1"}])
    post(fake, single(profile(external_id="L-1"), unique_id="a"))                 # an existing profile
    post(fake, single(profile(seeded), unique_id="b"))                             # by profile id
    post(fake, single(profile(email="new@x.com", first_name="Nia"), unique_id="c"))
    created = fake.control.profiles_created_by_events()
    assert [(c["identifiers"], c["metric"], c["unique_id"], c["via"]) for c in created] == [
        ({"email": "new@x.com"}, EARNED, "c", "POST /api/events")]
    new = fake.control.profile(created[0]["profile_id"])
    assert new["attributes"]["first_name"] == "Nia"
    assert new["subscriptions"]["email"]["marketing"]["consent"] == "NEVER_SUBSCRIBED"
    assert [e["profile_created"] for e in fake.control.events()] == [False, False, True]
    assert [e["profile_id"] for e in fake.control.events()][:2] == [seeded, seeded]


def test_an_unknown_profile_id_drops_the_event_after_the_202_and_creates_nothing(fake: Fake) -> None:
    post(fake, single(profile("01ZZZZZZZZZZZZZZZZZZZZZZZZ"), unique_id="a"))
    assert fake.control.events() == [] and fake.control.profiles() == []
    assert [d["reason"] for d in fake.control.dropped_events()] == ["unknown_profile"]
    assert fake.control.metrics() == []


def test_event_profile_attributes_update_the_profile_but_never_take_anothers_identifier(fake: Fake) -> None:
    jane, other = fake.control.seed_profiles([{"email": "jane@x.com", "last_name": "Doe"},
                                              {"phone_number": "+15005550006"}])
    post(fake, single(profile(email="jane@x.com", phone_number="+15005550006", external_id="L-9",
                              first_name="Jane", last_name=None), unique_id="a"))
    attrs = fake.control.profile(jane)["attributes"]
    assert (attrs["first_name"], attrs["last_name"], attrs["external_id"]) == ("Jane", None, "L-9")
    assert attrs["phone_number"] is None                            # still the other profile's
    assert fake.control.profile(other)["attributes"]["phone_number"] == "+15005550006"
    (recorded,) = fake.control.events()
    assert (recorded["profile_id"], recorded["profile_changed"]) == (jane, True)
    assert fake.control.profiles_created_by_events() == []


def test_events_follow_their_profile_into_a_merge(fake: Fake) -> None:
    email_owner, phone_owner = fake.control.seed_profiles([{"email": "m@x.com"}, {"phone_number": "+15005550006"}])
    post(fake, single(profile(phone_owner), unique_id="a"))
    fake.control.set_merge_on_link(True)
    rows = [{"type": "profile", "attributes": {"email": "m@x.com", "phone_number": "+15005550006"}}]
    job = fake.api.post("/api/profile-bulk-import-jobs", json={"data": {"type": "profile-bulk-import-job",
                                                                     "attributes": {"profiles": {"data": rows}}}})
    for _ in range(2):
        fake.api.get(f"/api/profile-bulk-import-jobs/{job.json()['data']['id']}")
    assert [m["merged_id"] for m in fake.control.merges()] == [phone_owner]
    assert [e["profile_id"] for e in fake.control.events()] == [email_owner]
    post(fake, single(profile(email="m@x.com"), unique_id="a"))     # already recorded for the kept profile
    assert len(fake.control.events()) == 1


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ({"data": {"type": "event", "attributes": {"profile": profile(email="jane@x.com"), "metric": {
        "data": {"type": "metric", "attributes": {"name": EARNED}}}}}},
     ("/data/attributes/properties", "This field is required and must be an object.")),
    (single(profile(email="nope")), ("/data/attributes/profile/data/attributes/email", "Invalid email address")),
    (single(profile(first_name="no identifier")), ("/data/attributes/profile/data/attributes",
                                                   "One or more identifiers is required")),
    (single(profile(email="jane@x.com"), metric="x" * 128), ("/data/attributes/metric/data/attributes/name",
                                                             "The metric name must be less than 128 characters.")),
    (single(profile(email="jane@x.com"), time="1989-12-31T23:59:59Z"), ("/data/attributes/time",
                                                                        "The time must be after the year 1990.")),
    (single(profile(email="jane@x.com"), time="2100-03-11T12:00:00Z"),
     ("/data/attributes/time", "The time can only be up to 1 year in the future.")),
    (single(profile(email="jane@x.com"), properties={f"p{i}": i for i in range(401)}),
     ("/data/attributes/properties", "An event must not exceed 400 properties; got 401.")),
    (single(profile(email="jane@x.com"), properties={"html": "x" * (100 * 1024 + 1)}),
     ("/data/attributes/properties/html", "A single string cannot exceed 100KB.")),
    (single(profile(email="jane@x.com"), value="12"), ("/data/attributes/value", "'value' must be a number.")),
])
def test_a_create_is_refused_whole_with_the_field_pointer(fake: Fake, body: dict[str, Any],
                                                          expected: tuple[str, str]) -> None:
    assert errors_of(fake.api.post("/api/events", json=body)) == [expected]
    assert fake.control.events() == [] and fake.control.profiles() == [] and fake.control.metrics() == []


def test_a_time_a_year_ahead_is_still_accepted(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), time="2100-03-10T12:00:00Z"))
    assert fake.control.events()[0]["time"] == "2100-03-10T12:00:00+00:00"


def test_wrong_types_and_unmodelled_identifiers(fake: Fake) -> None:
    body = single(profile(email="jane@x.com"))
    body["data"]["type"] = "events"
    assert errors_of(fake.api.post("/api/events", json=body))[0][0] == "/data/type"
    body = single(profile(anonymous_id="anon-1"))
    assert errors_of(fake.api.post("/api/events", json=body))[0] == (
        "/data/attributes/profile/data/attributes/anonymous_id",
        "'anonymous_id' is valid in Klaviyo but not modelled by the fake.")


def test_a_phone_from_an_unsupported_region_refuses_the_event(fake: Fake) -> None:
    fake.control.set_unsupported_phone_regions(["IT"])
    response = fake.api.post("/api/events", json=single(profile(email="j@x.com", phone_number="+393331234567")))
    assert errors_of(response)[0][0] == "/data/attributes/profile/data/attributes/phone_number"


# -- bulk create jobs ---------------------------------------------------------------------------


def test_a_bulk_job_records_events_of_several_profiles(fake: Fake) -> None:
    (known,) = fake.control.seed_profiles([{"email": "known@x.com"}])
    post(fake, bulk((profile(email="known@x.com"), [event(unique_id="a"), event(unique_id="b", metric="Spent")]),
                    (profile(email="new@x.com"), [event(unique_id="a")])), "/api/event-bulk-create-jobs")
    (job,) = fake.control.event_jobs()
    assert (job["status"], job["events"], job["recorded"], job["dropped"]) == ("complete", 3, 3, 0)
    recorded = fake.control.events()
    assert [(e["unique_id"], e["metric"], e["profile_id"] == known, e["job_id"]) for e in recorded] == [
        ("a", EARNED, True, job["id"]), ("b", "Spent", True, job["id"]), ("a", EARNED, False, job["id"])]
    assert [c["identifiers"] for c in fake.control.profiles_created_by_events()] == [{"email": "new@x.com"}]


def test_a_bulk_job_that_repeats_a_recorded_event_records_nothing(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), unique_id="tx-1"))
    post(fake, bulk((profile(email="jane@x.com"), [event(unique_id="tx-2"), event(unique_id="tx-1")]),
                    (profile(email="new@x.com"), [event(unique_id="tx-3")])), "/api/event-bulk-create-jobs")
    (job,) = fake.control.event_jobs()
    assert (job["status"], job["recorded"], job["dropped"]) == ("failed", 0, 3)
    assert "tx-1" in job["reason"]
    assert [e["unique_id"] for e in fake.control.events()] == ["tx-1"]
    # Not even new@x.com's profile: only the first event's.
    assert [c["identifiers"] for c in fake.control.profiles_created_by_events()] == [{"email": "jane@x.com"}]
    # With the knob off, only the repeat is dropped.
    fake.control.set_knobs(event_bulk_repeat_fails_job=False)
    post(fake, bulk((profile(email="jane@x.com"), [event(unique_id="tx-2"), event(unique_id="tx-1")])),
         "/api/event-bulk-create-jobs")
    assert [e["unique_id"] for e in fake.control.events()] == ["tx-1", "tx-2"]
    assert fake.control.event_jobs()[-1]["status"] == "complete"
    assert fake.control.dropped_events()[-1]["reason"] == "duplicate"


def test_a_bulk_request_repeating_a_unique_id_for_one_profile_is_refused(fake: Fake) -> None:
    body = bulk((profile(email="jane@x.com"), [event(unique_id="tx-1")]),
                (profile(email="JANE@x.com"), [event(unique_id="tx-2"), event(unique_id="tx-1")]))
    ((pointer, detail),) = errors_of(fake.api.post("/api/event-bulk-create-jobs", json=body))
    assert pointer == f"{BULK}/1/attributes/events/data/1/attributes/unique_id"
    assert "repeated for the same profile and metric" in detail
    assert fake.control.events() == [] and fake.control.event_jobs() == []
    # The same unique_id for two profiles, or two metrics, is fine.
    post(fake, bulk((profile(email="jane@x.com"), [event(unique_id="tx-1"), event(unique_id="tx-1", metric="S")]),
                    (profile(email="joe@x.com"), [event(unique_id="tx-1")])), "/api/event-bulk-create-jobs")
    assert len(fake.control.events()) == 3


def test_bulk_limits_and_row_pointers(fake: Fake) -> None:
    path = "/api/event-bulk-create-jobs"
    many = bulk(*[(profile(email=f"p{i}@x.com"), [event(unique_id=f"{i}-{j}") for j in range(10)])
                  for i in range(100)])
    post(fake, many, path)                                           # 1,000 events: the most allowed
    too_many = bulk(*[(profile(email=f"p{i}@x.com"), [event(unique_id=f"{i}-{j}") for j in range(11)])
                      for i in range(91)])
    assert errors_of(fake.api.post(path, json=too_many)) == [
        (BULK, "A maximum of 1000 events may be created per request; got 1001.")]
    assert errors_of(fake.api.post(path, json=bulk((profile(email="a@x.com"), [])))) == [
        (BULK, "At least one event is required.")]
    bad = bulk((profile(email="a@x.com"), [event()]), (profile(email="bad"), [event(), event(metric="")]))
    assert errors_of(fake.api.post(path, json=bad)) == [
        (f"{BULK}/1/attributes/profile/data/attributes/email", "Invalid email address"),
        (f"{BULK}/1/attributes/events/data/1/attributes/metric/data/attributes/name", "A metric name is required.")]
    huge = bulk((profile(email="a@x.com"), [event(properties={"s": "x" * 90_000}, unique_id=str(i))
                                            for i in range(60)]))
    response = fake.api.post(path, json=huge)
    assert response.status_code == 413 and response.json()["errors"][0]["code"] == "request_too_large"
    assert len(fake.control.events()) == 1000


# -- processing lag -----------------------------------------------------------------------------


def test_with_a_lag_an_accepted_event_is_nowhere_until_processed(fake: Fake) -> None:
    fake.control.set_event_lag(5)
    post(fake, single(profile(email="new@x.com"), unique_id="a"))
    post(fake, bulk((profile(email="new@x.com"), [event(unique_id="b")])), "/api/event-bulk-create-jobs")
    assert fake.api.get("/api/events").json()["data"] == []
    assert fake.control.pending_events() == 2
    assert (fake.control.profiles(), fake.control.metrics()) == ([], [])
    assert fake.control.event_jobs()[0]["status"] == "queued"
    fake.control.advance_clock(4.9)
    assert fake.control.pending_events() == 2
    fake.control.advance_clock(0.1)
    assert [e["unique_id"] for e in fake.control.events()] == ["a", "b"]
    assert fake.control.pending_events() == 0 and fake.control.event_jobs()[0]["status"] == "complete"
    assert len(fake.control.profiles_created_by_events()) == 1


# -- GET /api/events and /api/metrics ------------------------------------------------------------


def _three_events(fake: Fake) -> tuple[str, str]:
    jane, joe = fake.control.seed_profiles([{"email": "jane@x.com"}, {"email": "joe@x.com"}])
    post(fake, single(profile(jane), unique_id="1", time="2099-03-01T10:00:00Z"))
    post(fake, single(profile(joe), unique_id="2", time="2099-03-01T09:00:00Z", metric="Spent"))
    post(fake, single(profile(jane), unique_id="3", time="2099-03-02T10:00:00Z", metric="Spent"))
    return jane, joe


def _uids(fake: Fake, **params: str) -> list[str]:
    response = fake.api.get("/api/events", params={"fields[event]": "event_properties", **params})
    assert response.status_code == 200, response.text
    return [e["id"] for e in response.json()["data"]]


def test_events_filter_by_metric_profile_and_time(fake: Fake) -> None:
    jane, joe = _three_events(fake)
    by_uid = {e["unique_id"]: e["id"] for e in fake.control.events()}
    spent = {e["metric"]: e["metric_id"] for e in fake.control.events()}["Spent"]
    earned = {e["metric"]: e["metric_id"] for e in fake.control.events()}[EARNED]
    assert _uids(fake) == [by_uid["2"], by_uid["1"], by_uid["3"]]                 # datetime ascending
    assert _uids(fake, sort="-timestamp") == [by_uid["3"], by_uid["1"], by_uid["2"]]
    assert _uids(fake, filter=f'equals(metric_id,"{spent}")') == [by_uid["2"], by_uid["3"]]
    assert _uids(fake, filter=f'equals(metric_id,["{spent}","{earned}"])') == [by_uid["2"], by_uid["1"], by_uid["3"]]
    assert _uids(fake, filter=f'equals(profile_id,"{jane}")') == [by_uid["1"], by_uid["3"]]
    assert _uids(fake, filter="greater-or-equal(datetime,2099-03-01T10:00:00Z)") == [by_uid["1"], by_uid["3"]]
    assert _uids(fake, filter="greater-than(datetime,2099-03-01T10:00:00Z)") == [by_uid["3"]]
    assert _uids(fake, filter="less-or-equal(datetime,2099-03-01T10:00:00Z),has(profile)") == [
        by_uid["2"], by_uid["1"]]
    stamp = int(_epoch("2099-03-01T10:00:00+00:00"))
    assert _uids(fake, filter=f"less-than(timestamp,{stamp})") == [by_uid["2"]]
    assert _uids(fake, filter=f'and(equals(profile_id,"{joe}"),greater-than(timestamp,{stamp}))') == []


@pytest.mark.parametrize(("params", "parameter"), [
    ({"filter": 'equals(email,"a@x.com")'}, "filter"),
    ({"filter": "greater-than(timestamp,'soon')"}, "filter"),
    ({"filter": "has(profile,1)"}, "filter"),
    ({"sort": "created"}, "sort"),
    ({"page[size]": "1001"}, "page[size]"),
    ({"include": "lists"}, "include"),
    ({"fields[event]": "name"}, "fields[event]"),
    ({"page": "2"}, "page"),
])
def test_events_list_refuses_what_the_spec_does_not_allow(fake: Fake, params: dict[str, str], parameter: str) -> None:
    ((where, _),) = errors_of(fake.api.get("/api/events", params=params))
    assert where == parameter


def test_events_page_by_cursor_and_include_their_metric_and_profile(fake: Fake) -> None:
    (jane,) = fake.control.seed_profiles([{"email": "jane@x.com", "first_name": "Jane"}])
    for i in range(5):
        post(fake, single(profile(jane), unique_id=str(i), time=f"2099-03-01T10:00:0{i}Z"))
    seen, url = [], "/api/events?page[size]=2&include=metric,profile&fields[profile]=first_name"
    while url:
        body = fake.api.get(url).json()
        seen += [e["id"] for e in body["data"]]
        assert {(r["type"], r["id"]) for r in body["included"]} == {
            ("metric", fake.control.metrics()[0]["id"]), ("profile", jane)}
        assert [r["attributes"] for r in body["included"] if r["type"] == "profile"] == [{"first_name": "Jane"}]
        url = body["links"].get("next")
    assert seen == [e["id"] for e in fake.control.events()]


def test_get_one_event_and_one_metric(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), unique_id="1"))
    (recorded,) = fake.control.events()
    one = fake.api.get(f"/api/events/{recorded['id']}", params={"include": "metric"}).json()
    assert one["data"]["attributes"]["uuid"] and one["included"][0]["attributes"]["name"] == EARNED
    metric = fake.api.get(f"/api/metrics/{recorded['metric_id']}", params={"fields[metric]": "name"}).json()
    assert metric["data"]["attributes"] == {"name": EARNED}
    for path in ("/api/events/01ZZZZZZZZZZZZZZZZZZZZZZZZ", "/api/metrics/ZZZZZZ"):
        assert fake.api.get(path).json()["errors"][0]["code"] == "not_found"


def test_metrics_filter_by_integration(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), unique_id="1"))
    assert len(fake.api.get("/api/metrics", params={"filter": "equals(integration.name,'API')"}).json()["data"]) == 1
    assert fake.api.get("/api/metrics", params={"filter": "equals(integration.category,'Shopify')"}).json()[
        "data"] == []


# -- accounts, scopes, rate limits, reset --------------------------------------------------------


def test_events_belong_to_their_account(fake: Fake) -> None:
    post(fake, single(profile(email="jane@x.com"), unique_id="1"))
    other = {"Authorization": f"Klaviyo-API-Key {OTHER_KEY}"}
    assert fake.api.get("/api/events", headers=other).json()["data"] == []
    assert fake.api.post("/api/events", json=single(profile(email="jane@x.com"), unique_id="1"),
                         headers=other).status_code == 202
    assert len(fake.control.events()) == 1 and len(fake.control.events("OtHr02")) == 1
    assert fake.control.events("OtHr02")[0]["profile_created"] is True
    fake.control.reset()
    assert fake.control.events() == [] and fake.control.metrics() == []


def test_events_need_their_scopes(fake: Fake) -> None:
    fake.control.add_key("pk_" + "5c0e" * 8 + "03", ACCOUNT, scopes=["profiles:read", "profiles:write",
                                                                     "events:write"])
    limited = {"Authorization": "Klaviyo-API-Key pk_" + "5c0e" * 8 + "03"}
    assert fake.api.post("/api/events", json=single(profile(email="j@x.com")), headers=limited).status_code == 202
    for path in ("/api/events", "/api/metrics"):
        assert fake.api.get(path, headers=limited).json()["errors"][0]["code"] == "permission_denied"


def test_events_rate_limits_come_from_the_spec(fake: Fake) -> None:
    ops = fake.state.spec.operations
    assert (ops[("POST", "/api/events")].burst, ops[("POST", "/api/events")].steady) == (
        Limit(350, 1.0), Limit(3500, 60.0))
    assert (ops[("GET", "/api/events")].burst, ops[("GET", "/api/events")].steady) == (
        Limit(350, 1.0), Limit(3500, 60.0))
    bulk_op = ops[("POST", "/api/event-bulk-create-jobs")]
    assert (bulk_op.burst, bulk_op.steady) == (Limit(10, 1.0), Limit(150, 60.0))


def test_the_11th_bulk_job_in_a_second_is_throttled_and_single_creates_are_not(fake: Fake) -> None:
    clock = [1000.0]
    fake.state.monotonic = lambda: clock[0]
    fake.control.set_knobs(rate_limits_enabled=True)
    body = bulk((profile(email="jane@x.com"), [event(unique_id="x")]))
    statuses = [fake.api.post("/api/event-bulk-create-jobs", json=body).status_code for _ in range(11)]
    assert statuses == [202] * 10 + [429]
    throttled = fake.api.post("/api/event-bulk-create-jobs", json=body)
    assert throttled.headers["retry-after"] == "1"
    single_create = fake.api.post("/api/events", json=single(profile(email="jane@x.com"), unique_id="y"))
    assert single_create.status_code == 202 and single_create.headers["ratelimit-limit"] == "3500"
    clock[0] += 1.0                                                  # the next burst window
    assert fake.api.post("/api/event-bulk-create-jobs", json=body).status_code == 202
    # 11 accepted so far in the steady window (150 a minute, opened at 1000): 139 more fill it.
    for _ in range(13):
        clock[0] += 1.0
        assert {fake.api.post("/api/event-bulk-create-jobs", json=body).status_code for _ in range(10)} == {202}
    clock[0] += 1.0
    statuses = [fake.api.post("/api/event-bulk-create-jobs", json=body).status_code for _ in range(10)]
    assert statuses == [202] * 9 + [429]
    assert fake.api.post("/api/event-bulk-create-jobs", json=body).headers["retry-after"] == "45"
