"""The fake Klaviyo's realistic mode, knob by knob, over real loopback HTTP.

Every timed behaviour reads the fake clock, so these tests freeze it and move it with
`advance_clock`: no sleeps, no wall-clock assertions.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from fakes.klaviyo.config import KIND_REALISM, Knobs, realistic_knobs
from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.serving import ServerProcess

#: Each test talks to a fake served on a loopback port (a child process): the integration layer.
pytestmark = pytest.mark.integration

KEY = "pk_" + "5ea1" * 8 + "01"
ACCOUNT = "ReAl01"
IT_PHONE = "+393331234567"
US_PHONE = "+15005550006"
REGION_DETAIL = "Phone number is valid but is not in a supported region for this account."
JOBS = "/api/profile-bulk-import-jobs"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # Rate limits run on the wall clock (and are tested elsewhere): off, so nothing here depends on timing.
    with ServerProcess(module="fakes.klaviyo", args=["--key", KEY, "--account-id", ACCOUNT,
                                                     "--no-rate-limits-enabled"]) as proc:
        yield proc


@pytest.fixture
def control(server: ServerProcess) -> Iterator[FakeKlaviyoControl]:
    with FakeKlaviyoControl(server.url) as ctl:
        ctl.reset()
        ctl.freeze_clock()
        yield ctl


@pytest.fixture
def api(control: FakeKlaviyoControl) -> Iterator[httpx.Client]:
    with control.api_client(KEY) as client:
        yield client


def row(**attributes: Any) -> dict[str, Any]:
    return {"type": "profile", "attributes": attributes}


def bulk(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": rows}}}}


def profile(attrs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"data": {"type": "profile", "attributes": attrs, **extra}}


def submit(api: httpx.Client, rows: list[dict[str, Any]]) -> dict[str, Any]:
    response = api.post(JOBS, json=bulk(rows))
    assert response.status_code == 202, response.text
    return response.json()["data"]


def job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"{JOBS}/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()["data"]["attributes"]


def finish(api: httpx.Client, job_id: str) -> dict[str, Any]:
    """A job that advances by GETs (the kind default): complete within a few GETs."""
    for _ in range(5):
        attrs = job(api, job_id)
        if attrs["status"] == "complete":
            return attrs
    raise AssertionError(f"job {job_id} did not complete: {attrs}")


def state(attrs: dict[str, Any]) -> tuple[str, int | None, int | None]:
    return attrs["status"], attrs["completed_count"], attrs["failed_count"]


def emails(control: FakeKlaviyoControl) -> list[str]:
    return sorted(p["attributes"]["email"] for p in control.profiles() if p["attributes"]["email"])


def found(api: httpx.Client, filter_: str) -> list[str]:
    response = api.get("/api/profiles", params={"filter": filter_})
    assert response.status_code == 200, response.text
    return [p["id"] for p in response.json()["data"]]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- bulk import jobs advance by time ---------------------------------------------------------


def test_gets_do_not_move_a_timed_job_only_the_clock_does(api: httpx.Client,
                                                           control: FakeKlaviyoControl) -> None:
    control.set_job_timing(job_seconds=10, job_queued_share=0.2)
    jid = submit(api, [row(email="a@x.com")])["id"]
    assert [job(api, jid)["status"] for _ in range(5)] == ["queued"] * 5
    control.advance_clock(1.9)
    assert job(api, jid)["status"] == "queued"
    control.advance_clock(0.1)
    assert job(api, jid)["status"] == "processing"


def test_timed_job_progress_follows_the_clock(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_job_timing(job_seconds=10, job_queued_share=0.2)
    submitted = submit(api, [row(email=f"u{i}@x.com") for i in range(10)])
    jid, created_at = submitted["id"], ts(submitted["attributes"]["created_at"])
    assert state(job(api, jid)) == ("queued", 0, None)
    control.advance_clock(2)                      # queued for 20 % of 10 s
    attrs = job(api, jid)
    assert state(attrs) == ("processing", 0, None)
    assert ts(attrs["started_at"]) == created_at + timedelta(seconds=2)
    control.advance_clock(4)                      # half of the 8 s of processing
    assert state(job(api, jid)) == ("processing", 5, None)
    assert emails(control) == [f"u{i}@x.com" for i in range(5)]
    control.advance_clock(3.9)
    assert job(api, jid)["status"] == "processing"
    control.advance_clock(0.1)
    attrs = job(api, jid)
    assert state(attrs) == ("complete", 10, 0)
    assert ts(attrs["completed_at"]) == created_at + timedelta(seconds=10)
    assert len(emails(control)) == 10


def test_rows_are_applied_by_time_even_if_nobody_polls_the_job(api: httpx.Client,
                                                               control: FakeKlaviyoControl) -> None:
    control.set_job_timing(job_seconds=4)
    submit(api, [row(email="a@x.com"), row(email="b@x.com")])
    control.advance_clock(4)
    assert found(api, 'equals(email,"b@x.com")') != []


def test_bulk_jobs_lists_when_each_job_was_created_and_completed(api: httpx.Client,
                                                                 control: FakeKlaviyoControl) -> None:
    control.set_job_timing(job_seconds=4)
    first = submit(api, [row(email="a@x.com")])["id"]
    control.advance_clock(1)
    second = submit(api, [row(email="b@x.com"), row(email="c@x.com")])["id"]
    control.advance_clock(3)                       # the first has ended, the second has 1 s to go
    jobs = {j["id"]: j for j in control.bulk_jobs(ACCOUNT)}
    assert (jobs[first]["status"], jobs[first]["rows"]) == ("complete", 1)
    assert jobs[first]["completed"] == pytest.approx(jobs[first]["created"] + 4)
    assert jobs[second]["created"] == pytest.approx(jobs[first]["created"] + 1)
    assert (jobs[second]["status"], jobs[second]["completed"]) == ("processing", None)


def test_duration_grows_with_rows(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_job_timing(job_seconds=1, job_seconds_per_1000_rows=45)   # 200 rows: 1 + 9 = 10 s
    jid = submit(api, [row(email=f"u{i}@x.com") for i in range(200)])["id"]
    control.advance_clock(9.99)
    assert job(api, jid)["status"] == "processing"
    control.advance_clock(0.01)
    assert state(job(api, jid)) == ("complete", 200, 0)


def test_failed_count_is_null_until_the_end_then_counts_the_import_errors(
        api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.seed_profiles([{"email": "a@x.com"}, {"external_id": "L-1"}])
    control.set_job_timing(job_seconds=2)
    jid = submit(api, [row(email="a@x.com", external_id="L-1"), row(email="ok@x.com")])["id"]
    control.advance_clock(1)
    assert state(job(api, jid)) == ("processing", 0, None)   # row 0 applied and failed, not yet told
    control.advance_clock(1)
    assert state(job(api, jid)) == ("complete", 1, 1)


def test_counts_can_stay_null_for_the_whole_job(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(job_seconds=2, job_counts_null=True)
    created = submit(api, [row(email="a@x.com")])
    assert state(created["attributes"]) == ("processing", None, None)   # job_queued_share 0
    control.advance_clock(2)
    assert state(job(api, created["id"])) == ("complete", None, None)
    assert emails(control) == ["a@x.com"]


def test_cancelled_job_applies_only_its_share(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(job_seconds=10)
    control.set_job_fates(cancel_rate=1, cancel_after_share=0.5)
    created = submit(api, [row(email=f"u{i}@x.com") for i in range(4)])
    control.advance_clock(4.9)
    assert job(api, created["id"])["status"] == "processing"
    control.advance_clock(0.1)
    attrs = job(api, created["id"])
    assert state(attrs) == ("cancelled", 2, 0)
    assert ts(attrs["completed_at"]) == ts(created["attributes"]["created_at"]) + timedelta(seconds=5)
    control.advance_clock(100)
    assert state(job(api, created["id"])) == ("cancelled", 2, 0)
    assert emails(control) == ["u0@x.com", "u1@x.com"]


def test_stuck_job_stays_processing_forever(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(job_seconds=10)
    control.set_job_fates(stuck_rate=1, stuck_after_share=0.25)
    jid = submit(api, [row(email=f"u{i}@x.com") for i in range(4)])["id"]
    control.advance_clock(3600)
    attrs = job(api, jid)
    assert state(attrs) == ("processing", 1, None) and attrs["completed_at"] is None
    assert emails(control) == ["u0@x.com"]


def test_fates_also_apply_to_jobs_that_advance_by_gets(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_job_fates(cancel_rate=1, cancel_after_share=0.5)
    jid = submit(api, [row(email=f"u{i}@x.com") for i in range(4)])["id"]
    assert [job(api, jid)["status"] for _ in range(3)] == ["processing", "cancelled", "cancelled"]
    assert emails(control) == ["u0@x.com", "u1@x.com"]
    control.set_job_fates(stuck_rate=1, stuck_after_share=0.5)
    jid = submit(api, [row(email=f"v{i}@x.com") for i in range(2)])["id"]
    assert [job(api, jid)["status"] for _ in range(4)] == ["processing"] * 4
    assert state(job(api, jid)) == ("processing", 1, 0)


def test_gets_per_step_still_rules_when_the_time_knobs_are_zero(api: httpx.Client,
                                                                 control: FakeKlaviyoControl) -> None:
    control.set_knobs(bulk_job_gets_per_step=2, job_queued_share=0.5, read_lag_s=0)
    jid = submit(api, [row(email="a@x.com")])["id"]
    assert [job(api, jid)["status"] for _ in range(4)] == ["queued", "processing", "processing", "complete"]


def test_fates_follow_the_seed(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    def fates() -> list[str]:
        control.set_knobs(seed=11, job_seconds=1, job_cancel_rate=0.3, job_stuck_rate=0.3)
        ids = [submit(api, [row(email=f"s{n}@x.com")])["id"] for n in range(12)]
        control.advance_clock(1)
        return [job(api, i)["status"] for i in ids]

    first = fates()
    assert set(first) == {"complete", "cancelled", "processing"}
    control.reset()
    control.freeze_clock()
    assert fates() == first


# -- import errors ----------------------------------------------------------------------------


def _one_import_error(api: httpx.Client, control: FakeKlaviyoControl) -> dict[str, Any]:
    control.seed_profiles([{"email": "a@x.com"}, {"external_id": "L-1"}])
    jid = submit(api, [row(email="ok@x.com"), row(email="a@x.com", external_id="L-1")])["id"]
    finish(api, jid)
    (error,) = api.get(f"{JOBS}/{jid}/import-errors").json()["data"]
    return error


def test_import_errors_point_at_their_row_by_default(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    error = _one_import_error(api, control)
    assert error["attributes"]["source"]["pointer"] == "/data/attributes/profiles/data/1"


def test_import_errors_can_carry_only_the_spec_default_pointer(api: httpx.Client,
                                                               control: FakeKlaviyoControl) -> None:
    control.set_knobs(import_error_row_pointer=False)
    error = _one_import_error(api, control)["attributes"]
    assert error["source"]["pointer"] == "/data"
    assert error["original_payload"] == row(email="a@x.com", external_id="L-1")
    assert error["code"] == "duplicate_profile"


# -- read lag ---------------------------------------------------------------------------------


def test_a_created_profile_is_missing_from_lists_for_the_lag(api: httpx.Client,
                                                             control: FakeKlaviyoControl) -> None:
    control.set_read_lag(5)
    pid = api.post("/api/profiles", json=profile({"email": "a@x.com", "external_id": "L-1"})).json()["data"]["id"]
    for filter_ in ('equals(email,"a@x.com")', 'equals(external_id,"L-1")', f'equals(id,"{pid}")',
                    'any(email,["a@x.com","b@x.com"])'):
        assert found(api, filter_) == []
    assert api.get("/api/profiles").json()["data"] == []
    assert api.get("/api/profiles", params={"sort": "-updated"}).json()["data"] == []
    # The profile itself, and the duplicate check, see it at once.
    assert api.get(f"/api/profiles/{pid}").status_code == 200
    again = api.post("/api/profiles", json=profile({"email": "A@x.com"}))
    assert again.status_code == 409
    assert again.json()["errors"][0]["meta"]["duplicate_profile_id"] == pid
    control.advance_clock(4.9)
    assert found(api, 'equals(email,"a@x.com")') == []
    control.advance_clock(0.1)
    assert found(api, 'equals(email,"a@x.com")') == [pid]


def test_updates_and_bulk_rows_hide_the_profile_again(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    (pid,) = control.seed_profiles([{"email": "a@x.com"}])
    control.set_read_lag(5)
    assert found(api, 'equals(email,"a@x.com")') == [pid]          # seeds are not writes
    patch = api.patch(f"/api/profiles/{pid}", json=profile({"first_name": "A"}, id=pid))
    assert patch.status_code == 200
    assert found(api, 'equals(email,"a@x.com")') == []
    control.advance_clock(5)
    assert found(api, 'equals(email,"a@x.com")') == [pid]
    # An update that changes nothing is no write.
    api.patch(f"/api/profiles/{pid}", json=profile({"first_name": "A"}, id=pid))
    assert found(api, 'equals(email,"a@x.com")') == [pid]
    finish(api, submit(api, [row(email="a@x.com", last_name="B"), row(email="new@x.com")])["id"])
    assert found(api, 'any(email,["a@x.com","new@x.com"])') == []
    control.advance_clock(5)
    assert len(found(api, 'any(email,["a@x.com","new@x.com"])')) == 2
    imported = api.post("/api/profile-import", json=profile({"email": "a@x.com", "title": "Dr"}))
    assert imported.status_code == 200
    assert found(api, 'equals(email,"a@x.com")') == []


def test_a_late_settle_stamps_each_row_at_the_time_it_was_due(api: httpx.Client,
                                                                control: FakeKlaviyoControl) -> None:
    control.set_knobs(job_seconds=10, read_lag_s=1)
    submit(api, [row(email="early@x.com"), row(email="late@x.com")])
    control.advance_clock(10)     # nothing polled: row 0 was due at 5 s, row 1 at 10 s
    assert len(found(api, 'equals(email,"early@x.com")')) == 1
    assert found(api, 'equals(email,"late@x.com")') == []


# -- suppression lag --------------------------------------------------------------------------


def _suppression(kind: str, addresses: list[str]) -> dict[str, Any]:
    return {"data": {"type": f"profile-suppression-bulk-{kind}-job",
                     "attributes": {"profiles": {"data": [row(email=e) for e in addresses]}}}}


def _suppressions(control: FakeKlaviyoControl, email: str) -> list[str]:
    (p,) = [p for p in control.profiles() if p["attributes"]["email"] == email]
    return [s["reason"] for s in p["subscriptions"]["email"]["marketing"]["suppression"]]


def test_suppression_applies_only_after_the_lag(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.seed_profiles([{"email": "a@x.com", "consent": "SUBSCRIBED"}])
    control.set_suppression_lag(60)
    response = api.post("/api/profile-suppression-bulk-create-jobs", json=_suppression("create", ["a@x.com",
                                                                                                 "new@x.com"]))
    assert response.status_code == 202
    created = response.json()["data"]
    assert created["attributes"]["status"] == "processing" and created["attributes"]["completed_at"] is None
    path = f"/api/profile-suppression-bulk-create-jobs/{created['id']}"
    control.advance_clock(59)
    assert api.get(path).json()["data"]["attributes"]["status"] == "processing"
    assert _suppressions(control, "a@x.com") == [] and emails(control) == ["a@x.com"]
    control.advance_clock(1)
    attrs = api.get(path).json()["data"]["attributes"]
    assert (attrs["status"], attrs["completed_count"]) == ("complete", 2)
    assert ts(attrs["completed_at"]) == ts(attrs["created_at"]) + timedelta(seconds=60)
    assert _suppressions(control, "a@x.com") == ["USER_SUPPRESSED"]
    assert _suppressions(control, "new@x.com") == ["USER_SUPPRESSED"]

    response = api.post("/api/profile-suppression-bulk-delete-jobs", json=_suppression("delete", ["a@x.com",
                                                                                                 "nobody@x.com"]))
    deleted = response.json()["data"]
    assert deleted["attributes"]["status"] == "processing"
    control.advance_clock(30)
    assert _suppressions(control, "a@x.com") == ["USER_SUPPRESSED"]
    control.advance_clock(30)   # the control API settles what is due, without an /api request
    assert _suppressions(control, "a@x.com") == []
    attrs = api.get(f"/api/profile-suppression-bulk-delete-jobs/{deleted['id']}").json()["data"]["attributes"]
    assert (attrs["status"], attrs["completed_count"], attrs["skipped_count"]) == ("complete", 1, 1)


# -- unsupported phone regions ----------------------------------------------------------------


def _region_error(response: httpx.Response, pointer: str) -> None:
    assert response.status_code == 400, response.text
    (error,) = response.json()["errors"]
    assert (error["code"], error["detail"], error["source"]["pointer"]) == ("invalid", REGION_DETAIL, pointer)


def test_single_writes_refuse_a_phone_from_an_unsupported_region(api: httpx.Client,
                                                                 control: FakeKlaviyoControl) -> None:
    control.set_unsupported_phone_regions(["it"])
    assert control.knobs()["unsupported_phone_regions"] == ["IT"]
    _region_error(api.post("/api/profiles", json=profile({"email": "a@x.com", "phone_number": IT_PHONE})),
                  "/data/attributes/phone_number")
    created = api.post("/api/profiles", json=profile({"email": "a@x.com", "phone_number": US_PHONE}))
    assert created.status_code == 201
    pid = created.json()["data"]["id"]
    _region_error(api.patch(f"/api/profiles/{pid}", json=profile({"phone_number": IT_PHONE}, id=pid)),
                  "/data/attributes/phone_number")
    _region_error(api.post("/api/profile-import", json=profile({"email": "b@x.com", "phone_number": IT_PHONE})),
                  "/data/attributes/phone_number")
    assert emails(control) == ["a@x.com"]


def test_bulk_import_refuses_the_request_naming_the_row(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_unsupported_phone_regions(["IT"])
    response = api.post(JOBS, json=bulk([row(email="a@x.com"), row(email="b@x.com", phone_number=IT_PHONE)]))
    _region_error(response, "/data/attributes/profiles/data/1/attributes/phone_number")
    assert control.profiles() == []


def test_bulk_import_can_record_the_row_as_an_import_error(api: httpx.Client,
                                                           control: FakeKlaviyoControl) -> None:
    control.set_unsupported_phone_regions(["IT"], bulk_import_error=True)
    bad = row(email="b@x.com", phone_number=IT_PHONE)
    jid = submit(api, [row(email="a@x.com", phone_number=US_PHONE), bad])["id"]
    assert job(api, jid)["status"] == "processing"
    assert state(job(api, jid)) == ("complete", 1, 1)
    (error,) = api.get(f"{JOBS}/{jid}/import-errors").json()["data"]
    assert error["attributes"]["detail"] == REGION_DETAIL and error["attributes"]["original_payload"] == bad
    assert error["attributes"]["source"]["pointer"] == "/data/attributes/profiles/data/1/attributes/phone_number"
    assert emails(control) == ["a@x.com"]


# -- merge on link ----------------------------------------------------------------------------


def _two_profiles(control: FakeKlaviyoControl) -> tuple[str, str]:
    email_id, phone_id = control.seed_profiles([
        {"email": "a@x.com", "first_name": "Email", "properties": {"p": 1}},
        {"phone_number": US_PHONE, "first_name": "Phone", "last_name": "Only", "properties": {"p": 2, "q": 3},
         "suppression": [{"reason": "HARD_BOUNCE"}]},
    ])
    return email_id, phone_id


def test_a_bulk_row_linking_email_and_phone_merges_the_profiles(api: httpx.Client,
                                                                control: FakeKlaviyoControl) -> None:
    email_id, phone_id = _two_profiles(control)
    control.set_merge_on_link()
    jid = submit(api, [row(email="a@x.com", phone_number=US_PHONE, title="Dr")])["id"]
    assert job(api, jid)["status"] == "processing"
    assert state(job(api, jid)) == ("complete", 1, 0)
    (kept,) = control.profiles()
    attrs = kept["attributes"]
    assert kept["id"] == email_id
    assert (attrs["email"], attrs["phone_number"], attrs["first_name"], attrs["last_name"], attrs["title"]) == (
        "a@x.com", US_PHONE, "Email", "Only", "Dr")
    assert attrs["properties"] == {"p": 1, "q": 3}
    assert [s["reason"] for s in kept["subscriptions"]["email"]["marketing"]["suppression"]] == ["HARD_BOUNCE"]
    assert api.get(f"/api/profiles/{phone_id}").status_code == 404
    assert found(api, f'equals(phone_number,"{US_PHONE}")') == [email_id]
    (merge,) = control.merges()
    assert {k: merge[k] for k in ("account_id", "kept_id", "merged_id", "email", "phone_number", "job_id", "row")} \
        == {"account_id": ACCOUNT, "kept_id": email_id, "merged_id": phone_id, "email": "a@x.com",
            "phone_number": US_PHONE, "job_id": jid, "row": 0}
    control.reset()
    assert control.merges() == []


def test_without_the_knob_the_row_is_a_duplicate_and_nothing_merges(api: httpx.Client,
                                                                    control: FakeKlaviyoControl) -> None:
    _two_profiles(control)
    jid = submit(api, [row(email="a@x.com", phone_number=US_PHONE)])["id"]
    finish(api, jid)
    assert job(api, jid)["failed_count"] == 1 and len(control.profiles()) == 2
    assert control.merges() == []


def test_single_writes_never_merge(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    email_id, phone_id = _two_profiles(control)
    control.set_merge_on_link()
    created = api.post("/api/profiles", json=profile({"email": "b@x.com", "phone_number": US_PHONE}))
    assert created.status_code == 409
    assert created.json()["errors"][0]["meta"]["duplicate_profile_id"] == phone_id
    patched = api.patch(f"/api/profiles/{email_id}", json=profile({"phone_number": US_PHONE}, id=email_id))
    assert patched.status_code == 409
    imported = api.post("/api/profile-import", json=profile({"email": "a@x.com", "phone_number": US_PHONE}))
    assert imported.status_code == 409
    assert len(control.profiles()) == 2 and control.merges() == []


def test_a_third_profile_owning_the_external_id_is_still_a_conflict(api: httpx.Client,
                                                                     control: FakeKlaviyoControl) -> None:
    _two_profiles(control)
    control.seed_profiles([{"external_id": "L-9"}])
    control.set_merge_on_link()
    jid = submit(api, [row(email="a@x.com", phone_number=US_PHONE, external_id="L-9")])["id"]
    finish(api, jid)
    assert job(api, jid)["failed_count"] == 1 and control.merges() == [] and len(control.profiles()) == 3


# -- the fake clock ---------------------------------------------------------------------------


def test_clock_freezes_advances_and_never_goes_back(control: FakeKlaviyoControl) -> None:
    frozen = control.clock()
    assert frozen["frozen"] is True
    assert control.clock()["time"] == frozen["time"]
    assert control.advance_clock(90)["time"] == frozen["time"] + 90
    running = control.unfreeze_clock()
    assert running["frozen"] is False and running["time"] >= frozen["time"] + 90
    later = control.advance_clock(10)
    assert later["offset_s"] >= 99
    with pytest.raises(httpx.HTTPStatusError):
        control.advance_clock(-1)
    for bad in ({"freeze": "yes"}, {"advance_s": "1"}, {"rewind": 1}):
        assert httpx.post(f"{control.base_url}/_fake/clock", json=bad).status_code == 400
    control.reset()
    assert control.clock()["frozen"] is False and abs(control.clock()["offset_s"]) < 5


def test_job_timestamps_read_the_fake_clock(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.advance_clock(3600)
    now = ts(control.clock()["now"])
    created = submit(api, [row(email="a@x.com")])["attributes"]
    assert ts(created["created_at"]) == now


# -- presets, knobs, command lines ------------------------------------------------------------


def test_realistic_preset_scales_durations_and_kind_restores(control: FakeKlaviyoControl) -> None:
    control.set_knobs(rate_limit_scale=0.5)
    knobs = control.realistic(time_scale=1)
    assert (knobs["job_seconds"], knobs["job_seconds_per_1000_rows"], knobs["read_lag_s"],
            knobs["suppression_lag_s"], knobs["job_queued_share"]) == (30, 10, 5, 60, 0.2)
    assert knobs["unsupported_phone_regions"] == ["IT"] and knobs["merge_on_link"] is True
    assert knobs["import_error_row_pointer"] is False
    assert knobs["job_cancel_rate"] == 0 and knobs["job_stuck_rate"] == 0
    assert knobs["rate_limit_scale"] == 0.5                   # not a realism knob: left alone
    scaled = control.realistic(time_scale=0.03)
    assert scaled["job_seconds"] == pytest.approx(0.9) and scaled["read_lag_s"] == pytest.approx(0.15)
    kind = control.kind()
    assert {k: kind[k] for k in KIND_REALISM} == KIND_REALISM and kind["rate_limit_scale"] == 0.5
    control.realistic(time_scale=1)
    assert {k: v for k, v in control.realistic(time_scale=0).items() if k in KIND_REALISM} == KIND_REALISM
    for bad in ({"time_scale": -1}, {"time_scale": "fast"}, {"speed": 1}):
        assert httpx.post(f"{control.base_url}/_fake/realistic", json=bad).status_code == 400


def test_realistic_mode_end_to_end_at_test_scale(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.realistic(time_scale=0.03)
    created = submit(api, [row(email=f"u{i}@x.com") for i in range(3)])
    assert state(created["attributes"]) == ("queued", 0, None)
    control.advance_clock(1)          # 0.9 s + 0.3 s per 1,000 rows
    assert state(job(api, created["id"])) == ("complete", 3, 0)
    assert found(api, 'equals(email,"u2@x.com")') == []   # the last row, written at 0.9 s: 0.15 s of lag left
    control.advance_clock(0.2)
    assert len(found(api, 'any(email,["u0@x.com","u1@x.com","u2@x.com"])')) == 3
    assert api.post("/api/profiles", json=profile({"email": "it@x.com", "phone_number": IT_PHONE})
                    ).status_code == 400


def test_knob_validation() -> None:
    knobs = Knobs().updated({"unsupported_phone_regions": "it, es", "job_queued_share": 1, "job_seconds": 3})
    assert knobs.unsupported_phone_regions == ["IT", "ES"] and knobs.job_queued_share == 1.0
    for bad in ({"unsupported_phone_regions": ["Italy"]}, {"job_queued_share": 1.5}, {"job_stuck_rate": 2},
                {"job_seconds": -1}, {"merge_on_link": "yes"}):
        with pytest.raises(ValueError):
            Knobs().updated(bad)
    assert realistic_knobs(0) == KIND_REALISM
    with pytest.raises(ValueError):
        realistic_knobs(-0.5)


def test_command_lines_take_the_preset_and_knobs() -> None:
    from cli.local import klaviyo_knobs
    from fakes.klaviyo.__main__ import config_from_args, parse_args

    knobs = klaviyo_knobs(False, 0.03, ["read_lag_s=2", "unsupported_phone_regions=IT,ES", "merge_on_link=false"])
    assert knobs.job_seconds == pytest.approx(0.9) and knobs.read_lag_s == 2
    assert knobs.unsupported_phone_regions == ["IT", "ES"] and knobs.merge_on_link is False
    assert klaviyo_knobs(False, None, []) == Knobs()
    assert klaviyo_knobs(True, None, []).job_seconds == 30
    for bad in (["read_lag_s"], ["no_such_knob=1"], ["read_lag_s=slow"]):
        with pytest.raises(ValueError):
            klaviyo_knobs(False, None, bad)
    config = config_from_args(parse_args(["--realistic", "--time-scale", "0.5", "--read-lag-s", "1",
                                          "--unsupported-phone-regions", "FR"]))
    assert config.knobs.job_seconds == 15 and config.knobs.read_lag_s == 1
    assert config.knobs.unsupported_phone_regions == ["FR"] and config.knobs.merge_on_link is True
