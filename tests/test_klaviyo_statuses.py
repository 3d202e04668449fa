"""The Klaviyo client's reading of every status Klaviyo gives for the calls it makes, against a status
table (httpx.MockTransport). The spec declares 200/201/202 per operation and generic 4XX/5XX;
../shared/reference/klaviyo-api.md gives the bodies seen live (401 not_authenticated /
authentication_failed, 403 permission_denied and Cloudflare's HTML 403, 409 duplicate_profile with
`meta.duplicate_profile_id`, 413, 429 with or without Retry-After, 410 for a retired revision)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from fakes.klaviyo.config import default_spec_path
from worker.errors import Deferred, DuplicateProfile, RecordRejected, RetryableError, TenantFatalError, Throttled
from worker.events import POINTS_EARNED, LoyaltyEvent, bulk_entries
from worker.klaviyo import MAX_BULK_EVENT_BYTES, MAX_BULK_EVENTS, KlaviyoClient, bulk_event_chunks
from worker.ratelimit import load_spec_limits

SPEC_PATH = default_spec_path()

PROFILE_ID = "01GDDKASAP8TKDDA2GRZDSVP4H"
OWNER_ID = "01H0WNER000000000000000000"
JOB_ID = "01JOB00000000000000000000A"
JSONAPI = "application/vnd.api+json"


def error(status: int, code: str, detail: str, pointer: str | None = "/data", **extra: Any) -> httpx.Response:
    """Klaviyo's error envelope."""
    item: dict[str, Any] = {"id": "9a6ddf10-0000-4000-8000-000000000000", "status": status, "code": code,
                            "title": detail, "detail": detail, "links": {}, "meta": {}, **extra}
    if pointer:
        item["source"] = {"pointer": pointer}
    return httpx.Response(status, json={"errors": [item]}, headers={"content-type": JSONAPI})


def profile(profile_id: str = PROFILE_ID) -> dict[str, Any]:
    return {"type": "profile", "id": profile_id, "attributes": {"email": "jane@example.com", "properties": {}}}


def job(status: str = "queued", **counts: int) -> dict[str, Any]:
    return {"type": "profile-bulk-import-job", "id": JOB_ID, "attributes": {"status": status, **counts}}


def event(n: int = 1, **properties: Any) -> LoyaltyEvent:
    return LoyaltyEvent(POINTS_EARNED, "c-1", f"loyale-transaction-{n}", datetime(2026, 3, 1, tzinfo=UTC),
                        {"Points": n, **properties})


Answer = Callable[[httpx.Request], httpx.Response] | httpx.Response


@pytest.fixture
def klaviyo() -> Callable[[Answer], KlaviyoClient]:
    """A client whose every request gets `answer` (a response, or a function of the request)."""
    made: list[httpx.Client] = []

    def make(answer: Answer, **hooks: Any) -> KlaviyoClient:
        def handler(request: httpx.Request) -> httpx.Response:
            return answer(request) if callable(answer) else answer

        http = httpx.Client(transport=httpx.MockTransport(handler))
        made.append(http)
        return KlaviyoClient(http, tenant="acme", base_url="https://a.klaviyo.test", private_key=SecretStr("pk_x"),
                             revision="2026-07-15", **hooks)

    yield make
    for http in made:
        http.close()


#: Each call the client makes, as (name, call), for the tables that hold for every one of them.
CALLS: list[tuple[str, Callable[[KlaviyoClient], Any]]] = [
    ("find_one", lambda kc: kc.find_one("email", "jane@example.com")),
    ("find_many", lambda kc: kc.find_many("email", ["jane@example.com"])),
    ("get_profile", lambda kc: kc.get_profile(PROFILE_ID)),
    ("create_profile", lambda kc: kc.create_profile({"email": "jane@example.com"})),
    ("update_profile", lambda kc: kc.update_profile(PROFILE_ID, {"first_name": "Jane"})),
    ("suppress", lambda kc: kc.suppress(["jane@example.com"])),
    ("unsuppress", lambda kc: kc.unsuppress(["jane@example.com"])),
    ("suppression_job_status", lambda kc: kc.suppression_job_status("suppress", JOB_ID)),
    ("start_bulk_import", lambda kc: kc.start_bulk_import([{"type": "profile", "attributes": {"email": "a@x.com"}}])),
    ("bulk_import_job", lambda kc: kc.bulk_import_job(JOB_ID)),
    ("import_errors", lambda kc: kc.import_errors(JOB_ID)),
    ("account", lambda kc: kc.account()),
    ("create_event", lambda kc: kc.create_event(event(), PROFILE_ID)),
    ("create_event_bulk_job", lambda kc: kc.create_event_bulk_job([(PROFILE_ID, event())])),
]
EVERY_CALL = pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[n for n, _ in CALLS])


# --- 2xx: the result ------------------------------------------------------------------------------


def test_200_of_a_lookup_is_the_profiles_and_an_empty_list_is_none(klaviyo):
    found = klaviyo(httpx.Response(200, json={"data": [profile()], "links": {}})).find_one("email", "jane@example.com")
    assert found is not None and found.id == PROFILE_ID
    assert klaviyo(httpx.Response(200, json={"data": []})).find_one("email", "jane@example.com") is None


def test_201_of_a_create_and_200_of_an_update_are_the_profile(klaviyo):
    assert klaviyo(httpx.Response(201, json={"data": profile()})).create_profile({"email": "a@x.com"}).id == PROFILE_ID
    assert klaviyo(httpx.Response(200, json={"data": profile()})).update_profile(PROFILE_ID, {}).id == PROFILE_ID


def test_202_of_a_job_is_the_job_with_its_id(klaviyo):
    started = klaviyo(httpx.Response(202, json={"data": job()})).start_bulk_import([])
    assert (started.id, started.status, started.done) == (JOB_ID, "queued", False)
    kc = klaviyo(httpx.Response(202, json={"data": {"type": "profile-suppression-bulk-create-job", "id": JOB_ID}}))
    assert kc.suppress(["a@x.com"]) == [JOB_ID] and kc.unsuppress(["a@x.com"]) == [JOB_ID]


def test_a_2xx_without_a_body_is_no_job_id_for_a_suppression_and_retried_where_data_is_needed(klaviyo):
    kc = klaviyo(httpx.Response(204))
    assert kc.suppress(["a@x.com"]) == [""]
    for call in (lambda: kc.create_profile({"email": "a@x.com"}), lambda: kc.bulk_import_job(JOB_ID),
                 lambda: kc.account()):
        with pytest.raises(RetryableError, match="without a JSON:API `data`"):
            call()


def test_a_2xx_that_is_not_json_is_retried(klaviyo):
    with pytest.raises(RetryableError, match="not JSON"):
        klaviyo(httpx.Response(200, text="<html>ok</html>")).find_one("email", "a@x.com")


def test_202_without_a_body_is_an_event_accepted(klaviyo):
    sent: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(202)

    kc = klaviyo(accept)
    assert kc.create_event(event(), PROFILE_ID) is None
    assert kc.create_event_bulk_job([(PROFILE_ID, event(1)), (OWNER_ID, event(2))]) is None
    assert [(r.method, r.url.path) for r in sent] == [("POST", "/api/events"), ("POST", "/api/event-bulk-create-jobs")]
    single, bulk = (json.loads(r.content) for r in sent)
    assert single["data"]["attributes"]["profile"]["data"] == {"type": "profile", "id": PROFILE_ID, "attributes": {}}
    entries = bulk["data"]["attributes"]["events-bulk-create"]["data"]
    assert [e["attributes"]["profile"]["data"]["id"] for e in entries] == [PROFILE_ID, OWNER_ID]
    assert all(r.headers["content-type"] == JSONAPI for r in sent)


def test_an_event_bulk_job_over_klaviyos_limits_is_never_sent(klaviyo):
    kc = klaviyo(httpx.Response(202))
    with pytest.raises(ValueError, match="exceed one event bulk job"):
        kc.create_event_bulk_job([(PROFILE_ID, event(n)) for n in range(MAX_BULK_EVENTS + 1)])
    with pytest.raises(ValueError, match="exceed one event bulk job"):
        kc.create_event_bulk_job([(PROFILE_ID, event(1, Note="x" * 90_000)) for _ in range(60)])


def test_events_are_split_into_jobs_of_at_most_1000_events_and_5_mb():
    many = [(f"01P{n % 7:023d}", event(n)) for n in range(2500)]
    chunks = bulk_event_chunks(many)
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert sorted(e.unique_id for c in chunks for _, e in c) == sorted(e.unique_id for _, e in many)
    big = [(PROFILE_ID, event(n, Note="x" * 90_000)) for n in range(120)]   # 10.8 MB of one profile's events
    chunks = bulk_event_chunks(big)
    sizes = [len(json.dumps({"data": {"type": "event-bulk-create-job", "attributes": {
        "events-bulk-create": {"data": bulk_entries(c)}}}}).encode()) for c in chunks]
    assert len(chunks) == 3 and all(size <= MAX_BULK_EVENT_BYTES for size in sizes)
    assert [e.unique_id for c in chunks for _, e in c] == [e.unique_id for _, e in big]   # in order


def test_a_400_of_an_event_names_klaviyos_pointer(klaviyo):
    answer = error(400, "invalid", "Name must be less than 128 characters.",
                   "/data/attributes/metric/data/attributes/name")
    with pytest.raises(RecordRejected) as caught:
        klaviyo(answer).create_event(event(), PROFILE_ID)
    assert (caught.value.status, caught.value.pointer) == (400, "/data/attributes/metric/data/attributes/name")


# --- 4xx: what the caller should do --------------------------------------------------------------


def test_400_is_a_rejection_of_this_customer_with_klaviyos_detail_and_pointer(klaviyo):
    answer = error(400, "invalid", "Invalid email address", "/data/attributes/email")
    with pytest.raises(RecordRejected) as caught:
        klaviyo(answer).create_profile({"email": "josé@example.com"})
    assert type(caught.value) is RecordRejected
    assert (caught.value.status, caught.value.code, caught.value.pointer) == (400, "invalid", "/data/attributes/email")
    assert "Invalid email address" in str(caught.value) and not caught.value.about_phone


def test_a_400_of_a_bulk_import_names_every_bad_row(klaviyo):
    body = {"errors": [
        {"status": 400, "code": "invalid", "detail": "Invalid email address",
         "source": {"pointer": "/data/attributes/profiles/data/1/attributes/email"}},
        {"status": 400, "code": "invalid", "detail": "Invalid phone number format",
         "source": {"pointer": "/data/attributes/profiles/data/3/attributes/phone_number"}}]}
    with pytest.raises(RecordRejected) as caught:
        klaviyo(httpx.Response(400, json=body)).start_bulk_import([])
    assert [e.pointer for e in caught.value.errors] == ["/data/attributes/profiles/data/1/attributes/email",
                                                        "/data/attributes/profiles/data/3/attributes/phone_number"]
    assert [e.about_phone for e in caught.value.errors] == [False, True]


@EVERY_CALL
@pytest.mark.parametrize("answer", [
    error(401, "not_authenticated", "Missing or invalid authorization scheme. Please use Klaviyo-API-Key."),
    error(401, "authentication_failed", "Incorrect authentication credentials."),
], ids=["not_authenticated", "authentication_failed"])
def test_401_stops_the_tenant_and_says_how_to_make_a_new_key(klaviyo, call, answer):
    with pytest.raises(TenantFatalError, match="rejected the private API key.*Settings > API Keys") as caught:
        call(klaviyo(answer))
    assert (caught.value.tenant, caught.value.status) == ("acme", 401)


@EVERY_CALL
def test_403_stops_the_tenant_and_names_the_scopes(klaviyo, call):
    answer = error(403, "permission_denied", "You do not have permission to perform this action.")
    with pytest.raises(TenantFatalError, match="lacks a scope.*profiles:write.*loyale-sync verify") as caught:
        call(klaviyo(answer))
    assert caught.value.status == 403


@pytest.mark.parametrize("status", [401, 403])
def test_a_401_or_403_that_is_not_klaviyos_json_is_a_cdn_page_and_retried(klaviyo, status):
    page = httpx.Response(status, text="<html>Just a moment...</html>", headers={"cf-mitigated": "challenge"})
    with pytest.raises(RetryableError, match="non-JSON page"):
        klaviyo(page).find_one("email", "a@x.com")


def test_404_of_a_read_by_id_is_no_such_profile_and_elsewhere_a_rejection(klaviyo):
    gone = error(404, "not_found", f"A profile with id {PROFILE_ID} does not exist.", "/data/")
    assert klaviyo(gone).get_profile(PROFILE_ID) is None
    with pytest.raises(RecordRejected) as caught:
        klaviyo(gone).update_profile(PROFILE_ID, {"first_name": "Jane"})
    assert (caught.value.status, caught.value.code) == (404, "not_found")


@pytest.mark.parametrize("call", [
    lambda kc: kc.create_profile({"email": "b@x.com", "phone_number": "+35679123456"}),
    lambda kc: kc.update_profile(PROFILE_ID, {"phone_number": "+35679123456"}),
], ids=["create", "update"])
def test_409_duplicate_profile_carries_the_existing_profiles_id(klaviyo, call):
    answer = error(409, "duplicate_profile", "A profile already exists with one of these identifiers.",
                   "/data/attributes", meta={"duplicate_profile_id": OWNER_ID})
    with pytest.raises(DuplicateProfile) as caught:
        call(klaviyo(answer))
    assert caught.value.duplicate_profile_id == OWNER_ID
    assert (caught.value.status, caught.value.pointer) == (409, "/data/attributes")


def test_a_409_of_another_code_is_a_plain_rejection(klaviyo):
    with pytest.raises(RecordRejected) as caught:
        klaviyo(error(409, "conflict", "Conflict.")).create_profile({"email": "a@x.com"})
    assert type(caught.value) is RecordRejected and caught.value.code == "conflict"


def test_410_retired_revision_stops_the_tenant_and_names_the_setting(klaviyo):
    with pytest.raises(TenantFatalError, match="SYNC_KLAVIYO_REVISION"):
        klaviyo(error(410, "gone", "This revision is retired.")).find_one("email", "a@x.com")


def test_413_too_large_is_a_rejection_not_a_retry(klaviyo):
    with pytest.raises(RecordRejected) as caught:
        klaviyo(error(413, "request_too_large", "Request payload too large.")).start_bulk_import([])
    assert not isinstance(caught.value, RetryableError) and caught.value.status == 413


# --- 429, 5xx, transport: retried ---------------------------------------------------------------


@pytest.mark.parametrize(("headers", "detail", "wait_s"), [
    ({"Retry-After": "7"}, "Request was throttled. Expected available in 1 second.", 7.0),   # the header wins
    ({}, "Request was throttled. Expected available in 3 seconds.", 3.0),                     # else the detail
    ({}, "Request was throttled. Expected available in 0 seconds.", 0.0),
    ({}, "Request was throttled.", None),                                                     # no hint at all
    ({"Retry-After": "inf"}, "Request was throttled. Expected available in 2 seconds.", 2.0),  # no endless wait
    ({"Retry-After": "-5"}, "Request was throttled.", 0.0),
])
def test_429_is_throttled_with_the_wait_klaviyo_gave(klaviyo, headers, detail, wait_s):
    answer = error(429, "throttled", detail)
    answer.headers.update(headers)
    with pytest.raises(Throttled) as caught:
        klaviyo(answer).find_one("email", "a@x.com")
    assert caught.value.retry_after_s == wait_s


@EVERY_CALL
def test_429_of_every_call_is_throttled(klaviyo, call):
    with pytest.raises(Throttled) as caught:
        call(klaviyo(error(429, "throttled", "Request was throttled. Expected available in 1 second.")))
    assert caught.value.retry_after_s == 1.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 520, 522, 524, 599])
def test_5xx_is_retried(klaviyo, status):
    with pytest.raises(RetryableError, match=f"Klaviyo answered {status}") as caught:
        klaviyo(error(status, "error", "Something went wrong.")).create_profile({"email": "a@x.com"})
    assert not isinstance(caught.value, Throttled)


@EVERY_CALL
def test_503_of_every_call_is_retried(klaviyo, call):
    with pytest.raises(RetryableError, match="Klaviyo answered 503"):
        call(klaviyo(error(503, "error", "Service unavailable.")))


@pytest.mark.parametrize("failure", [
    httpx.ConnectTimeout("connect timed out"), httpx.ReadTimeout("read timed out"),
    httpx.PoolTimeout("no connection free"),
], ids=["connect", "read", "pool"])
@EVERY_CALL
def test_a_timeout_is_retried(klaviyo, call, failure):
    def hang(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(RetryableError, match="did not answer in time"):
        call(klaviyo(hang))


@pytest.mark.parametrize("failure", [httpx.ConnectError("connection refused"),
                                     httpx.RemoteProtocolError("peer closed connection")],
                         ids=["refused", "dropped"])
@EVERY_CALL
def test_a_connection_error_is_retried(klaviyo, call, failure):
    def drop(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(RetryableError, match="connection to Klaviyo failed"):
        call(klaviyo(drop))


def test_every_answer_and_failure_is_counted_by_endpoint_with_its_status(klaviyo):
    seen: list[tuple[str, int]] = []
    answers = iter([error(429, "throttled", "Request was throttled."), httpx.Response(201, json={"data": profile()})])

    def answer(request: httpx.Request) -> httpx.Response:
        response = next(answers, None)
        if response is None:
            raise httpx.ReadTimeout("read timed out")
        return response

    kc = klaviyo(answer, on_request=lambda endpoint, status: seen.append((endpoint, status)))
    for _ in range(3):
        with contextlib.suppress(RetryableError):
            kc.create_profile({"email": "a@x.com"})
    assert seen == [("POST /api/profiles", 429), ("POST /api/profiles", 201), ("POST /api/profiles", 0)]


def test_the_event_endpoints_ask_the_gate_first_under_their_own_names_and_a_deferral_sends_nothing(klaviyo):
    """Every request asks the limiter's gate first, by endpoint: the events' own limits (350/s and
    3,500/m; bulk 10/s and 150/m) are read by `worker.ratelimit` from the spec under these names."""
    asked: list[str] = []
    sent: list[str] = []

    def gate(endpoint: str) -> None:
        asked.append(endpoint)
        if len(asked) == 3:
            raise Deferred("waiting for the rate limit", retry_after_s=1.0)

    def accept(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(202)

    kc = klaviyo(accept, gate=gate)
    kc.create_event(event(), PROFILE_ID)
    kc.create_event_bulk_job([(PROFILE_ID, event())])
    with pytest.raises(Deferred):
        kc.create_event(event(2), PROFILE_ID)
    assert asked == ["POST /api/events", "POST /api/event-bulk-create-jobs", "POST /api/events"]
    assert sent == ["/api/events", "/api/event-bulk-create-jobs"]
    limits = load_spec_limits(SPEC_PATH)
    assert limits["POST /api/events"] == ("350/s", "3500/m")
    assert limits["POST /api/event-bulk-create-jobs"] == ("10/s", "150/m")
