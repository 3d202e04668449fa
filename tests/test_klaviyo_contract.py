"""Contract checks of the fake Klaviyo against Klaviyo's own artefacts.

1. openapi-core validates the fake's answers for every implemented operation (errors against the
   spec's generic 4XX ClientError schema) and the requests these tests send, against Klaviyo's
   OpenAPI file; the fake's optional request-validation mode records violations.
2. The official SDK (`klaviyo-api`, revision 2026-07-15) runs against the fake, typed models and all,
   including its 429 retry honouring `Retry-After`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fakes.klaviyo.config import default_spec_path
from fakes.klaviyo.spec import BUILTIN, build_openapi
from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.serving import ServerProcess

SPEC = default_spec_path()
#: Each test talks to a fake served on a loopback port (a child process): the integration layer.
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not SPEC.exists(), reason=f"Klaviyo's OpenAPI spec is not at {SPEC}")]

KEY = "pk_" + "c0de" * 8 + "01"
JSONAPI = "application/vnd.api+json"


@pytest.fixture(scope="module")
def openapi() -> Any:
    """Klaviyo's spec loaded once per module (3 MB). `build_openapi` lets `nullable` unions such as
    `location.latitude` accept null, which openapi-core otherwise refuses (see its docstring)."""
    return build_openapi(json.loads(SPEC.read_text()))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(module="fakes.klaviyo", args=["--key", KEY, "--account-id", "CoNt01"]) as proc:
        yield proc


@pytest.fixture
def control(server: ServerProcess) -> Iterator[FakeKlaviyoControl]:
    with FakeKlaviyoControl(server.url) as ctl:
        ctl.reset()
        yield ctl


# -- openapi-core adapters -------------------------------------------------------------------


class SpecRequest:
    """An httpx request in the shape openapi-core reads, addressed to Klaviyo's server."""

    def __init__(self, request: httpx.Request):
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.host_url = "https://a.klaviyo.com"
        self.path = request.url.path.rstrip("/")
        self.method = request.method.lower()
        self.body = request.content
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(request.url.params.multi_items())),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )


class SpecResponse:
    def __init__(self, response: httpx.Response):
        from werkzeug.datastructures import Headers

        self.status_code = response.status_code
        self.data = response.content
        self.headers = Headers(dict(response.headers))
        self.content_type = response.headers.get("content-type", "")


@dataclass
class Exchange:
    response: httpx.Response
    #: False for requests that break the spec on purpose (no key, wrong media type...).
    request_conforms: bool = True

    @property
    def label(self) -> str:
        return f"{self.response.request.method} {self.response.request.url.path} -> {self.response.status_code}"


def scenario(api: httpx.Client, raw: httpx.Client, control: FakeKlaviyoControl) -> list[Exchange]:
    """Every implemented operation at least once with a 2xx, plus the error answers clients meet."""
    out: list[Exchange] = []

    def call(method: str, path: str, conforms: bool = True, client: httpx.Client = api, **kw: Any) -> Any:
        if "json" in kw:  # the spec's only media type for bodies
            kw["content"] = json.dumps(kw.pop("json"))
            kw["headers"] = {"content-type": JSONAPI}
        response = client.request(method, path, **kw)
        out.append(Exchange(response, conforms))
        return response.json() if response.headers.get("content-type") == JSONAPI else None

    def profile(attrs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"data": {"type": "profile", "attributes": attrs, **extra}}

    call("GET", "/api/accounts")
    created = call("POST", "/api/profiles", json=profile({
        "email": "sarah@x.com", "phone_number": "+15005550006", "external_id": "L-1", "first_name": "Sarah",
        "location": {"city": "New York", "latitude": 40.7}, "properties": {"points": 1}}))
    pid = created["data"]["id"]
    call("POST", "/api/profiles", json=profile({"email": "SARAH@x.com"}))                      # 409
    call("POST", "/api/profiles", json=profile({"email": "bad", "phone_number": "123"}))       # 400 x2
    call("POST", "/api/profiles", json=profile({"first_name": "no identifier"}))               # 400
    call("GET", "/api/profiles", params={"filter": 'any(email,["sarah@x.com","b@x.com"])', "page[size]": "1",
                                         "additional-fields[profile]": "subscriptions"})
    call("GET", "/api/profiles", params={"fields[profile]": "email,location.city", "sort": "-updated"})
    call("GET", "/api/profiles", params={"filter": "equals(first_name,'x')"})                   # 400 filter
    call("GET", f"/api/profiles/{pid}", params={"additional-fields[profile]": "subscriptions,predictive_analytics"})
    call("GET", "/api/profiles/01ZZZZZZZZZZZZZZZZZZZZZZZZ")                                    # 404
    call("PATCH", f"/api/profiles/{pid}", json=profile(
        {"last_name": "Mason", "title": None}, id=pid,
        meta={"patch_properties": {"append": {"tags": "vip"}, "unset": "points"}}))
    call("POST", "/api/profile-import", json=profile({"email": "new@x.com", "first_name": "New"}))   # 201
    call("POST", "/api/profile-import", json=profile({"email": "new@x.com", "first_name": "Newer"}))  # 200
    call("POST", "/api/profile-import", json=profile({"email": "sarah@x.com", "external_id": "L-1"}, id=pid))
    rows = [{"type": "profile", "attributes": {"email": "sarah@x.com", "external_id": "L-2"}},      # will conflict
            {"type": "profile", "attributes": {"external_id": "L-2", "email": "new@x.com"}},
            {"type": "profile", "attributes": {"email": "bulk@x.com", "properties": {"p": 1}}}]
    control.seed_profiles([{"external_id": "L-2"}])
    job = call("POST", "/api/profile-bulk-import-jobs",
               json={"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": rows}}}})
    call("POST", "/api/profile-bulk-import-jobs", json={"data": {"type": "profile-bulk-import-job", "attributes": {
        "profiles": {"data": [{"type": "profile", "attributes": {"email": "nope"}}]}}}})             # 400
    for _ in range(2):
        call("GET", f"/api/profile-bulk-import-jobs/{job['data']['id']}")
    call("GET", f"/api/profile-bulk-import-jobs/{job['data']['id']}/import-errors", params={"page[size]": "1"})
    for kind in ("create", "delete"):
        body = {"data": {"type": f"profile-suppression-bulk-{kind}-job", "attributes": {
            "profiles": {"data": [{"type": "profile", "attributes": {"email": "sarah@x.com"}}]}}}}
        job = call("POST", f"/api/profile-suppression-bulk-{kind}-jobs", json=body)
        call("GET", f"/api/profile-suppression-bulk-{kind}-jobs/{job['data']['id']}")
    def event(unique_id: str, **extra: Any) -> dict[str, Any]:
        return {"properties": {"points": 10, "outlet": "Valletta"}, "time": "2024-03-01T10:00:00+00:00",
                "value": 1.5, "value_currency": "EUR", "unique_id": unique_id,
                "metric": {"data": {"type": "metric", "attributes": {"name": "Loyale Points Earned"}}}, **extra}

    call("POST", "/api/events", json={"data": {"type": "event", "attributes": event("tx-1", profile={
        "data": {"type": "profile", "attributes": {"email": "sarah@x.com", "meta": {
            "patch_properties": {"append": {"tags": "events"}}}}}})}})                        # 202, no body
    call("POST", "/api/events", json={"data": {"type": "event", "attributes": event("tx-2", profile={
        "data": {"type": "profile", "attributes": {"email": "nope"}}})}})                      # 400
    entry = {"type": "event-bulk-create", "attributes": {
        "profile": {"data": {"type": "profile", "id": pid, "attributes": {}}},
        "events": {"data": [{"type": "event", "attributes": event("tx-3")},
                            {"type": "event", "attributes": event("tx-4", backfill=True)}]}}}
    call("POST", "/api/event-bulk-create-jobs", json={"data": {"type": "event-bulk-create-job", "attributes": {
        "events-bulk-create": {"data": [entry, {**entry, "attributes": {**entry["attributes"], "profile": {
            "data": {"type": "profile", "attributes": {"email": "events@x.com"}}}}}]}}}})       # 202
    call("POST", "/api/event-bulk-create-jobs", json={"data": {"type": "event-bulk-create-job", "attributes": {
        "events-bulk-create": {"data": [entry, entry]}}}})                                     # 400 repeat
    listed = call("GET", "/api/events", params={"filter": "greater-or-equal(datetime,2024-01-01T00:00:00Z)",
                                                "include": "metric,profile", "page[size]": "2", "sort": "-datetime"})
    call("GET", "/api/events", params={"filter": f'equals(profile_id,"{pid}")', "fields[event]": "datetime,uuid"})
    call("GET", "/api/events", params={"filter": "equals(email,'x')"})                         # 400 filter
    call("GET", f"/api/events/{listed['data'][0]['id']}", params={"include": "metric"})
    call("GET", "/api/events/01ZZZZZZZZZZZZZZZZZZZZZZZZ")                                      # 404
    metrics = call("GET", "/api/metrics", params={"filter": "equals(integration.name,'API')"})
    call("GET", f"/api/metrics/{metrics['data'][0]['id']}")
    call("GET", "/api/accounts")                                                               # 429 (1/s)
    call("GET", "/api/profiles", conforms=False, client=raw)                                   # 401
    call("POST", "/api/profiles", conforms=False, content=b"email=a@x.com",
         headers={"content-type": "application/x-www-form-urlencoded"})                        # 415
    call("POST", "/api/profiles", json=profile({"email": "big@x.com", "properties": {"b": "x" * 110_000}}))  # 413
    return out


@pytest.fixture(scope="module")
def exchanges(server: ServerProcess) -> list[Exchange]:
    with FakeKlaviyoControl(server.url) as ctl:
        ctl.reset()
        with ctl.api_client(KEY) as api, httpx.Client(base_url=server.url, headers={"revision": "2026-07-15"}) as raw:
            return scenario(api, raw, ctl)


def test_scenario_covers_every_implemented_operation(exchanges: list[Exchange]) -> None:
    from fakes.klaviyo.api import match_route

    ok = {(ex.response.request.method, route.template)
          for ex in exchanges if ex.response.is_success
          for route in [match_route(ex.response.request.method, ex.response.request.url.path)[0]] if route}
    assert ok == set(BUILTIN)
    statuses = {ex.response.status_code for ex in exchanges}
    assert {200, 201, 202, 400, 401, 404, 409, 413, 415, 429} <= statuses


def test_fake_answers_match_the_spec(openapi: Any, exchanges: list[Exchange]) -> None:
    failures = []
    for ex in exchanges:
        try:
            openapi.validate_response(SpecRequest(ex.response.request), SpecResponse(ex.response))
        except Exception as exc:
            failures.append(f"{ex.label}: {type(exc).__name__}: {exc} {getattr(exc, '__cause__', '')}")
    assert not failures, "\n".join(failures)


def test_requests_sent_by_these_tests_match_the_spec(openapi: Any, exchanges: list[Exchange]) -> None:
    failures = []
    for ex in exchanges:
        if not ex.request_conforms:
            continue
        try:
            openapi.validate_request(SpecRequest(ex.response.request))
        except Exception as exc:
            failures.append(f"{ex.label}: {type(exc).__name__}: {exc} {getattr(exc, '__cause__', '')}")
    assert not failures, "\n".join(failures)


def test_contract_check_catches_a_wrong_answer(openapi: Any, exchanges: list[Exchange]) -> None:
    """The check above has teeth: a profile answer without its `type` fails it."""
    created = next(ex for ex in exchanges if ex.response.status_code == 201)
    broken = json.loads(created.response.content)
    del broken["data"]["type"]
    response = httpx.Response(201, json=broken, headers={"content-type": JSONAPI}, request=created.response.request)
    with pytest.raises(Exception, match="(?i)invalid|type"):
        openapi.validate_response(SpecRequest(created.response.request), SpecResponse(response))


# -- the same checks with the realistic knobs on ----------------------------------------------


REGION_DETAIL = "Phone number is valid but is not in a supported region for this account."


@dataclass
class RealisticRun:
    exchanges: list[Exchange]
    #: `GET /_fake/merges` at the end of the scenario.
    merges: list[dict[str, Any]]


def realistic_scenario(api: httpx.Client, control: FakeKlaviyoControl) -> RealisticRun:
    """The answers only the realistic mode gives: `queued`/`processing`/`cancelled` jobs with null
    counts, import errors pointing at `/data`, the unsupported-region 400s, lagging suppression jobs,
    lists that miss a fresh write while a create still answers 409, and a merge."""
    out: list[Exchange] = []

    def call(method: str, path: str, **kw: Any) -> Any:
        if "json" in kw:
            kw["content"] = json.dumps(kw.pop("json"))
            kw["headers"] = {"content-type": JSONAPI}
        response = api.request(method, path, **kw)
        out.append(Exchange(response))
        return response.json()

    def rows(*attrs: dict[str, Any]) -> dict[str, Any]:
        return {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": a} for a in attrs]}}}}

    control.realistic(time_scale=0.03)
    control.set_knobs(rate_limits_enabled=False)
    control.freeze_clock()
    it_phone, us_phone = "+393331234567", "+15005550006"
    control.seed_profiles([{"email": "dup@x.com"}, {"external_id": "L-dup"}, {"email": "mail@x.com"},
                           {"phone_number": us_phone}])
    call("POST", "/api/profiles", json={"data": {"type": "profile", "attributes": {
        "email": "it@x.com", "phone_number": it_phone}}})                                      # 400 region
    call("POST", "/api/profile-bulk-import-jobs", json=rows({"email": "a@x.com"},
                                                            {"email": "b@x.com", "phone_number": it_phone}))
    created = call("POST", "/api/profiles", json={"data": {"type": "profile", "attributes": {"email": "new@x.com"}}})
    call("GET", "/api/profiles", params={"filter": 'equals(email,"new@x.com")'})               # [] (read lag)
    call("POST", "/api/profiles", json={"data": {"type": "profile", "attributes": {"email": "new@x.com"}}})  # 409
    call("GET", f"/api/profiles/{created['data']['id']}")
    job = call("POST", "/api/profile-bulk-import-jobs", json=rows(
        {"email": "dup@x.com", "external_id": "L-dup"}, {"email": "ok@x.com"},
        {"email": "mail@x.com", "phone_number": us_phone}))                                   # queued
    path = f"/api/profile-bulk-import-jobs/{job['data']['id']}"
    control.advance_clock(0.5)
    call("GET", path)                                                                          # processing
    control.advance_clock(1)
    call("GET", path)                                                                          # complete
    call("GET", f"{path}/import-errors")                                                       # pointer /data
    control.set_knobs(job_counts_null=True, unsupported_phone_bulk_import_error=True)
    job = call("POST", "/api/profile-bulk-import-jobs", json=rows({"email": "c@x.com", "phone_number": it_phone}))
    path = f"/api/profile-bulk-import-jobs/{job['data']['id']}"
    control.advance_clock(1)
    call("GET", path)                                                                          # null counts
    call("GET", f"{path}/import-errors")                                                       # region error
    control.set_knobs(job_counts_null=False, job_cancel_rate=1.0)
    job = call("POST", "/api/profile-bulk-import-jobs", json=rows({"email": "d@x.com"}, {"email": "e@x.com"}))
    control.advance_clock(1)
    call("GET", f"/api/profile-bulk-import-jobs/{job['data']['id']}")                          # cancelled
    for kind in ("create", "delete"):
        body = {"data": {"type": f"profile-suppression-bulk-{kind}-job", "attributes": {
            "profiles": {"data": [{"type": "profile", "attributes": {"email": "ok@x.com"}}]}}}}
        job = call("POST", f"/api/profile-suppression-bulk-{kind}-jobs", json=body)           # processing
        call("GET", f"/api/profile-suppression-bulk-{kind}-jobs/{job['data']['id']}")
        control.advance_clock(2)
        call("GET", f"/api/profile-suppression-bulk-{kind}-jobs/{job['data']['id']}")          # complete
    return RealisticRun(out, control.merges())


@pytest.fixture(scope="module")
def realistic(server: ServerProcess) -> Iterator[RealisticRun]:
    with FakeKlaviyoControl(server.url) as ctl:
        ctl.reset()
        with ctl.api_client(KEY) as api:
            yield realistic_scenario(api, ctl)
        ctl.reset()


def test_realistic_scenario_meets_what_only_the_realistic_mode_answers(realistic: RealisticRun) -> None:
    bodies = [ex.response.json() for ex in realistic.exchanges]
    job_attrs = [b["data"]["attributes"] for b in bodies
                 if isinstance(b.get("data"), dict) and b["data"].get("type") == "profile-bulk-import-job"]
    assert {a["status"] for a in job_attrs} == {"queued", "processing", "complete", "cancelled"}
    assert any(a["failed_count"] is None and a["status"] == "processing" for a in job_attrs)
    assert any(a["completed_count"] is None and a["status"] == "complete" for a in job_attrs)
    errors = [item["attributes"] for b in bodies if isinstance(b.get("data"), list)
              for item in b["data"] if item.get("type") == "import-error"]
    assert errors and {e["source"]["pointer"] for e in errors} == {"/data"}
    assert REGION_DETAIL in {e["detail"] for e in errors}
    refused = [e for b in bodies for e in b.get("errors", []) if e["detail"] == REGION_DETAIL]
    assert {e["source"]["pointer"] for e in refused} == {"/data/attributes/phone_number",
                                                         "/data/attributes/profiles/data/1/attributes/phone_number"}
    suppression = [b["data"]["attributes"]["status"] for b in bodies if isinstance(b.get("data"), dict)
                   and b["data"].get("type", "").startswith("profile-suppression")]
    assert suppression == ["processing", "processing", "complete"] * 2
    assert {ex.response.status_code for ex in realistic.exchanges} >= {200, 201, 202, 400, 409}
    assert [(m["email"], m["row"]) for m in realistic.merges] == [("mail@x.com", 2)]


def test_realistic_answers_match_the_spec(openapi: Any, realistic: RealisticRun) -> None:
    failures = []
    for ex in realistic.exchanges:
        try:
            openapi.validate_response(SpecRequest(ex.response.request), SpecResponse(ex.response))
        except Exception as exc:
            failures.append(f"{ex.label}: {type(exc).__name__}: {exc} {getattr(exc, '__cause__', '')}")
    assert not failures, "\n".join(failures)


def test_realistic_requests_match_the_spec(openapi: Any, realistic: RealisticRun) -> None:
    failures = []
    for ex in realistic.exchanges:
        try:
            openapi.validate_request(SpecRequest(ex.response.request))
        except Exception as exc:
            failures.append(f"{ex.label}: {type(exc).__name__}: {exc} {getattr(exc, '__cause__', '')}")
    assert not failures, "\n".join(failures)


# -- the fake's own request-validation mode ---------------------------------------------------


def test_validation_mode_records_only_requests_that_break_the_spec() -> None:
    with ServerProcess(module="fakes.klaviyo", args=["--key", KEY, "--validate-spec"]) as proc, \
            FakeKlaviyoControl(proc.url) as ctl, ctl.api_client(KEY) as api:
        assert ctl.info()["validate_requests_against_spec"] is True
        good = {"data": {"type": "profile", "attributes": {"email": "a@x.com", "properties": {"a": 1}}}}
        assert api.post("/api/profiles", json=good).status_code == 201
        assert api.get("/api/profiles/", params={"filter": 'equals(email,"a@x.com")', "page[size]": "5"}).is_success
        assert ctl.spec_violations() == []
        # `first_name` as a number: the fake answers 400, and the request breaks the spec's schema.
        bad = {"data": {"type": "profile", "attributes": {"email": "b@x.com", "first_name": 7}}}
        assert api.post("/api/profiles", json=bad).status_code == 400
        api.get("/api/profiles", params={"page[size]": "500"})
        violations = ctl.spec_violations()
        assert [(v["method"], v["path"]) for v in violations] == [("POST", "/api/profiles"),
                                                                 ("GET", "/api/profiles")]
        assert all(v["error"] for v in violations)
        ctl.reset()
        assert ctl.spec_violations() == []


def test_validation_mode_from_the_environment() -> None:
    env = {"FAKE_KLAVIYO_VALIDATE_SPEC": "1"}
    with ServerProcess(module="fakes.klaviyo", args=["--key", KEY], env=env) as proc, \
            FakeKlaviyoControl(proc.url) as ctl:
        httpx.get(f"{proc.url}/api/profiles")  # no key, no revision
        (violation,) = ctl.spec_violations()
        assert violation["path"] == "/api/profiles"


# -- the official SDK ------------------------------------------------------------------------


@pytest.fixture
def sdk(server: ServerProcess, control: FakeKlaviyoControl) -> Any:
    from klaviyo_api import KlaviyoAPI

    # test_host replaces the base URL ("https://a.klaviyo.com"): scheme://host:port, no path.
    return KlaviyoAPI(KEY, test_host=server.url, max_retries=3, max_delay=2)


def test_sdk_profile_round_trip(sdk: Any, control: FakeKlaviyoControl) -> None:
    created = sdk.Profiles.create_profile({"data": {"type": "profile", "attributes": {
        "email": "sdk@x.com", "external_id": "L-7", "location": {"city": "Oslo"}, "properties": {"tier": "gold"}}}})
    pid = created.data.id
    assert created.data.attributes.email == "sdk@x.com"
    found = sdk.Profiles.get_profiles(filter='equals(email,"sdk@x.com")', additional_fields_profile=["subscriptions"])
    assert [p.id for p in found.data] == [pid]
    assert found.data[0].attributes.subscriptions.email.marketing.consent == "NEVER_SUBSCRIBED"
    updated = sdk.Profiles.update_profile(pid, {"data": {"type": "profile", "id": pid,
                                                         "attributes": {"last_name": "Kit"}}})
    assert updated.data.attributes.last_name == "Kit" and updated.data.attributes.properties == {"tier": "gold"}
    upserted = sdk.Profiles.create_or_update_profile({"data": {"type": "profile", "attributes": {
        "external_id": "L-7", "title": "Dr"}}})
    assert upserted.data.id == pid and upserted.data.attributes.title == "Dr"
    fresh = sdk.Profiles.create_or_update_profile({"data": {"type": "profile", "attributes": {"email": "n@x.com"}}})
    assert fresh.data.id != pid
    state = control.profile(pid)["attributes"]
    assert (state["last_name"], state["title"], state["email"]) == ("Kit", "Dr", "sdk@x.com")
    sent = [entry["body"]["data"] for entry in control.request_log() if entry["method"] == "POST"]
    assert all(entry["type"] == "profile" for entry in sent)


def test_sdk_paging_with_full_next_links(sdk: Any, control: FakeKlaviyoControl) -> None:
    ids = control.seed_profiles([{"email": f"p{i}@x.com"} for i in range(5)])
    seen, cursor = [], None
    while True:
        page = sdk.Profiles.get_profiles(page_size=2, page_cursor=cursor)
        seen += [p.id for p in page.data]
        if not page.links.next:
            break
        # The SDK cuts a full `links.next` URL down to its cursor only when it contains "https://";
        # the fake's links point at http://127.0.0.1, so hand it the cursor itself.
        cursor = httpx.URL(page.links.next).params["page[cursor]"]
    assert seen == ids


def test_sdk_jobs_and_errors(sdk: Any, control: FakeKlaviyoControl) -> None:
    from openapi_client.exceptions import ApiException

    job = sdk.Profiles.bulk_import_profiles({"data": {"type": "profile-bulk-import-job", "attributes": {
        "profiles": {"data": [{"type": "profile", "attributes": {"email": f"b{i}@x.com"}} for i in range(3)]}}}})
    statuses = [sdk.Profiles.get_bulk_import_profiles_job(job.data.id).data.attributes.status for _ in range(2)]
    assert statuses == ["processing", "complete"]
    assert sdk.Profiles.get_errors_for_bulk_import_profiles_job(job.data.id).data == []
    sdk.Profiles.bulk_suppress_profiles({"data": {"type": "profile-suppression-bulk-create-job", "attributes": {
        "profiles": {"data": [{"type": "profile", "attributes": {"email": "b0@x.com"}}]}}}})
    with pytest.raises(ApiException) as caught:
        sdk.Profiles.create_profile({"data": {"type": "profile", "attributes": {"email": "B0@x.com"}}})
    assert caught.value.status == 409
    assert json.loads(caught.value.body)["errors"][0]["meta"]["duplicate_profile_id"]


def test_sdk_retries_a_429_after_retry_after(sdk: Any, control: FakeKlaviyoControl) -> None:
    # GET /api/profiles: 1 request per 1 s steady window (75/s, 750/m scaled by 1/750; windows by 1/60).
    control.set_knobs(rate_limit_scale=1 / 750, window_scale=1 / 60)
    control.seed_profiles([{"email": "a@x.com"}])
    assert len(sdk.Profiles.get_profiles().data) == 1
    started = time.monotonic()
    assert len(sdk.Profiles.get_profiles().data) == 1   # 429 first, then a retry after Retry-After: 1
    assert time.monotonic() - started >= 1.0
    assert control.requests()["by_endpoint_status"]["GET /api/profiles"] == {"200": 2, "429": 1}


def test_sdk_events_round_trip(sdk: Any, control: FakeKlaviyoControl) -> None:
    def event(unique_id: str) -> dict[str, Any]:
        return {"type": "event", "attributes": {
            "properties": {"points": 25}, "time": "2024-03-01T10:00:00+00:00", "value": 2.5, "unique_id": unique_id,
            "metric": {"data": {"type": "metric", "attributes": {"name": "Loyale Points Earned"}}}}}

    single = event("tx-1")
    single["attributes"]["profile"] = {"data": {"type": "profile", "attributes": {"email": "sdk@x.com"}}}
    assert sdk.Events.create_event({"data": single}) is None            # 202, no body
    assert sdk.Events.create_event({"data": single}) is None            # the same unique_id: one event
    sdk.Events.bulk_create_events({"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {
        "data": [{"type": "event-bulk-create", "attributes": {
            "profile": {"data": {"type": "profile", "attributes": {"email": "sdk@x.com"}}},
            "events": {"data": [event("tx-2"), event("tx-3")]}}}]}}}})
    found = sdk.Events.get_events(filter="greater-than(datetime,2024-01-01T00:00:00Z)", include=["metric"],
                                  sort="-datetime")
    # The SDK leaves the members of `included` (a oneOf of metric, profile, attribution) as dicts.
    assert len(found.data) == 3 and found.included[0]["attributes"]["name"] == "Loyale Points Earned"
    assert {e.attributes.event_properties["points"] for e in found.data} == {25}
    one = sdk.Events.get_event(found.data[0].id)
    assert one.data.relationships.metric.data.id == found.included[0]["id"]
    assert [m.attributes.name for m in sdk.Metrics.get_metrics().data] == ["Loyale Points Earned"]
    assert [e["unique_id"] for e in control.events()] == ["tx-1", "tx-2", "tx-3"]
    assert [d["reason"] for d in control.dropped_events()] == ["duplicate"]
