"""Fake Klaviyo over real loopback HTTP: bulk import jobs, suppression jobs, accounts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from fakes.klaviyo import api as fake_api
from fakes.klaviyo.app import create_app
from fakes.klaviyo.config import AccountSpec, FakeKlaviyoConfig, KeySpec
from fakes.klaviyo_control import REVISION, FakeKlaviyoControl
from fakes.serving import ServerProcess

#: Each test talks to a fake served on a loopback port (a child process): the integration layer.
pytestmark = pytest.mark.integration

KEY = "pk_" + "feedface" * 4 + "01"
ACCOUNT = "JobS01"
JSONAPI = "application/vnd.api+json"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(module="fakes.klaviyo", args=["--key", KEY, "--account-id", ACCOUNT]) as proc:
        yield proc


@pytest.fixture
def control(server: ServerProcess) -> Iterator[FakeKlaviyoControl]:
    with FakeKlaviyoControl(server.url) as ctl:
        ctl.reset()
        yield ctl


@pytest.fixture
def api(control: FakeKlaviyoControl) -> Iterator[httpx.Client]:
    with control.api_client(KEY) as client:
        yield client


def row(**attributes: Any) -> dict[str, Any]:
    return {"type": "profile", "attributes": attributes}


def bulk(rows: list[dict[str, Any]], lists: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": rows}}}
    if lists:
        data["relationships"] = {"lists": {"data": [{"type": "list", "id": i} for i in lists]}}
    return {"data": data}


def suppression(kind: str, emails: list[str]) -> dict[str, Any]:
    return {"data": {"type": f"profile-suppression-bulk-{kind}-job",
                     "attributes": {"profiles": {"data": [row(email=e) for e in emails]}}}}


def by_email(control: FakeKlaviyoControl) -> dict[str, dict[str, Any]]:
    return {p["attributes"]["email"]: p for p in control.profiles()}


def run_job(api: httpx.Client, payload: dict[str, Any]) -> dict[str, Any]:
    submitted = api.post("/api/profile-bulk-import-jobs", json=payload)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["data"]["id"]
    for _ in range(10):
        job = api.get(f"/api/profile-bulk-import-jobs/{job_id}").json()["data"]
        if job["attributes"]["status"] == "complete":
            return job
    raise AssertionError("job never completed")


# -- bulk import -----------------------------------------------------------------------------


def test_job_is_queued_then_processing_then_complete_and_applied_on_completion(
        api: httpx.Client, control: FakeKlaviyoControl) -> None:
    submitted = api.post("/api/profile-bulk-import-jobs",
                         json=bulk([row(email="a@x.com"), row(email="b@x.com", external_id="L-2")], lists=["VRgFBd"]))
    assert submitted.status_code == 202 and submitted.headers["content-type"] == JSONAPI
    job = submitted.json()["data"]
    assert job["type"] == "profile-bulk-import-job"
    assert job["attributes"]["status"] == "queued" and job["attributes"]["total_count"] == 2
    assert job["attributes"]["completed_count"] == 0 and job["attributes"]["failed_count"] == 0
    assert job["relationships"]["lists"]["data"] == [{"type": "list", "id": "VRgFBd"}]
    assert control.profiles() == []
    path = f"/api/profile-bulk-import-jobs/{job['id']}"
    assert api.get(path).json()["data"]["attributes"]["status"] == "processing"
    assert control.profiles() == []
    done = api.get(path).json()["data"]["attributes"]
    assert done["status"] == "complete" and done["completed_count"] == 2 and done["failed_count"] == 0
    assert done["completed_at"] is not None and done["started_at"] is not None
    assert sorted(by_email(control)) == ["a@x.com", "b@x.com"]
    assert api.get(path + "/").json()["data"]["attributes"]["status"] == "complete"


def test_gets_per_step_knob(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(bulk_job_gets_per_step=2)
    job_id = api.post("/api/profile-bulk-import-jobs", json=bulk([row(email="a@x.com")])).json()["data"]["id"]
    statuses = [api.get(f"/api/profile-bulk-import-jobs/{job_id}").json()["data"]["attributes"]["status"]
                for _ in range(5)]
    assert statuses == ["queued", "processing", "processing", "complete", "complete"]
    control.set_knobs(bulk_job_gets_per_step=0)
    job_id = api.post("/api/profile-bulk-import-jobs", json=bulk([row(email="b@x.com")])).json()["data"]["id"]
    assert api.get(f"/api/profile-bulk-import-jobs/{job_id}").json()["data"]["attributes"]["status"] == "complete"


def test_rows_upsert_by_identifiers_and_nulls_never_clear(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    (keep,) = control.seed_profiles([{"email": "keep@x.com", "external_id": "L-1", "first_name": "Keep",
                                      "location": {"city": "Oslo"}, "properties": {"p": 1}}])
    job = run_job(api, bulk([
        row(external_id="L-1", first_name=None, last_name="New", location={"city": None, "zip": "9"},
            properties={"p": None, "q": 2}),
        row(email="fresh@x.com", phone_number="+15005550006"),
        {"type": "profile", "attributes": {"email": "fresh@x.com", "title": "Dr"},
         "meta": {"patch_properties": {"append": {"tags": "vip"}}}},
    ]))
    assert job["attributes"]["completed_count"] == 3
    kept = control.profile(keep)["attributes"]
    assert kept["first_name"] == "Keep" and kept["last_name"] == "New"
    assert kept["location"]["city"] == "Oslo" and kept["location"]["zip"] == "9"
    assert kept["properties"] == {"p": 1, "q": 2}
    fresh = by_email(control)["fresh@x.com"]["attributes"]
    assert fresh["title"] == "Dr" and fresh["phone_number"] == "+15005550006" and fresh["properties"] == {
        "tags": ["vip"]}
    assert len(control.profiles()) == 2


def test_row_hitting_two_profiles_becomes_an_import_error(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.seed_profiles([{"email": "a@x.com"}, {"external_id": "L-1"}, {"email": "c@x.com"},
                           {"external_id": "L-3"}])
    bad1 = row(email="a@x.com", external_id="L-1", first_name="X")
    bad2 = row(email="c@x.com", external_id="L-3")
    job = run_job(api, bulk([bad1, row(email="ok@x.com"), bad2]))
    assert (job["attributes"]["completed_count"], job["attributes"]["failed_count"]) == (1, 2)
    first = api.get(f"/api/profile-bulk-import-jobs/{job['id']}/import-errors", params={"page[size]": "1"}).json()
    assert len(first["data"]) == 1
    err = first["data"][0]
    assert err["type"] == "import-error" and err["attributes"]["original_payload"] == bad1
    assert {"code", "title", "detail", "source"} <= set(err["attributes"])
    second = api.get(first["links"]["next"]).json()
    assert second["data"][0]["attributes"]["original_payload"] == bad2 and "next" not in second["links"]
    assert by_email(control)["a@x.com"]["attributes"]["first_name"] is None
    error = api.get("/api/profile-bulk-import-jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ/import-errors")
    assert error.status_code == 404


def test_invalid_rows_reject_the_whole_job(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    rows = [row(email="a@x.com"), row(email="bad-email"), row(email="c@x.com"), row(email="d@x.com",
                                                                                    phone_number="555-0100")]
    response = api.post("/api/profile-bulk-import-jobs", json=bulk(rows))
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [(e["code"], e["source"]["pointer"], e["detail"]) for e in errors] == [
        ("invalid", "/data/attributes/profiles/data/1/attributes/email", "Invalid email address"),
        ("invalid", "/data/attributes/profiles/data/3/attributes/phone_number",
         "Invalid phone number format (Example of a valid format: +12345678901)"),
    ]
    assert control.profiles() == []
    assert control.requests()["by_endpoint_status"]["POST /api/profile-bulk-import-jobs"] == {"400": 1}


def test_job_size_limits(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    too_many = bulk([row(email=f"u{i}@x.com") for i in range(10_001)])
    error = api.post("/api/profile-bulk-import-jobs", json=too_many).json()["errors"][0]
    assert error["status"] == 400 and error["source"]["pointer"] == "/data/attributes/profiles/data"
    fat_row = bulk([row(email="a@x.com"), row(email="b@x.com", properties={"blob": "x" * 101 * 1024})])
    error = api.post("/api/profile-bulk-import-jobs", json=fat_row).json()["errors"][0]
    assert error["status"] == 400 and error["source"]["pointer"] == "/data/attributes/profiles/data/1"
    # Over 5 MB in total: 413 before anything else is looked at.
    huge = bulk([row(email=f"u{i}@x.com", properties={"blob": "x" * 60_000}) for i in range(90)])
    response = api.post("/api/profile-bulk-import-jobs", content=json.dumps(huge),
                        headers={"content-type": JSONAPI})
    assert response.status_code == 413 and response.json()["errors"][0]["code"] == "request_too_large"
    assert control.profiles() == []


def test_ten_thousand_rows_then_batched_lookups_narrow_by_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookups go through the identifier index, never a scan: the profiles each lookup checks are
    counted (a scan would check all 10,000 for each of 20 lookups). In process, so the count can be
    read; the speed itself is a figure `python -m bench.fakes` prints, not a test."""
    checked = [0]
    matches = fake_api._matches

    def counting(profile: Any, condition: Any) -> bool:
        checked[0] += 1
        return matches(profile, condition)

    monkeypatch.setattr(fake_api, "_matches", counting)
    app = create_app(FakeKlaviyoConfig(accounts=[AccountSpec(ACCOUNT, [KeySpec(KEY, None)])]))
    rows = [row(email=f"user{i}@x.com", external_id=f"L-{i}", first_name=f"F{i}") for i in range(10_000)]
    headers = {"Authorization": f"Klaviyo-API-Key {KEY}", "revision": REVISION}
    with TestClient(app, base_url="http://fake-klaviyo", headers=headers) as api:
        job = run_job(api, bulk(rows))
        assert job["attributes"]["completed_count"] == 10_000
        emails = [f"user{i}@x.com" for i in range(0, 10_000, 100)]
        lookup = "any(email,[" + ",".join(f'"{e}"' for e in emails) + "])"
        checked[0] = 0
        for _ in range(20):
            found = api.get("/api/profiles", params={"filter": lookup, "page[size]": "100"}).json()["data"]
            assert sorted(p["attributes"]["email"] for p in found) == sorted(emails)
    assert 0 < checked[0] <= 20 * len(emails), checked[0]


def test_unknown_job_is_404(api: httpx.Client) -> None:
    response = api.get("/api/profile-bulk-import-jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert response.status_code == 404 and response.json()["errors"][0]["code"] == "not_found"


# -- suppression -----------------------------------------------------------------------------


def test_suppress_adds_user_suppressed_and_keeps_consent(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.seed_profiles([
        {"email": "sub@x.com", "consent": "SUBSCRIBED", "first_name": "S"},
        {"email": "bounced@x.com", "consent": "SUBSCRIBED", "suppression": [{"reason": "HARD_BOUNCE"}]},
    ])
    before = by_email(control)["sub@x.com"]["attributes"]["updated"]
    response = api.post("/api/profile-suppression-bulk-create-jobs",
                        json=suppression("create", ["SUB@x.com", "bounced@x.com", "unknown@x.com"]))
    assert response.status_code == 202
    job = response.json()["data"]
    assert job["type"] == "profile-suppression-bulk-create-job" and job["attributes"]["total_count"] == 3
    profiles = by_email(control)
    sub = profiles["sub@x.com"]["subscriptions"]["email"]["marketing"]
    assert [s["reason"] for s in sub["suppression"]] == ["USER_SUPPRESSED"]
    assert sub["can_receive_email_marketing"] is False and sub["consent"] == "SUBSCRIBED"
    assert profiles["sub@x.com"]["attributes"]["updated"] == before
    assert [s["reason"] for s in profiles["bounced@x.com"]["subscriptions"]["email"]["marketing"]["suppression"]] \
        == ["HARD_BOUNCE", "USER_SUPPRESSED"]
    created = profiles["unknown@x.com"]["subscriptions"]["email"]["marketing"]
    assert [s["reason"] for s in created["suppression"]] == ["USER_SUPPRESSED"]
    fetched = api.get(f"/api/profile-suppression-bulk-create-jobs/{job['id']}").json()["data"]
    assert fetched["attributes"]["status"] == "complete" and fetched["id"] == job["id"]


def test_unsuppress_lifts_only_user_suppressed(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.seed_profiles([
        {"email": "mine@x.com", "consent": "SUBSCRIBED", "suppression": [{"reason": "USER_SUPPRESSED"}]},
        {"email": "both@x.com", "suppression": [{"reason": "USER_SUPPRESSED"}, {"reason": "SPAM_COMPLAINT"}]},
        *({"email": f"{r.lower()}@x.com", "suppression": [{"reason": r}]}
          for r in ("HARD_BOUNCE", "UNSUBSCRIBE", "INVALID_EMAIL")),
    ])
    emails = ["mine@x.com", "both@x.com", "hard_bounce@x.com", "unsubscribe@x.com", "invalid_email@x.com",
              "nobody@x.com"]
    response = api.post("/api/profile-suppression-bulk-delete-jobs", json=suppression("delete", emails))
    assert response.status_code == 202
    job = response.json()["data"]
    assert job["type"] == "profile-suppression-bulk-delete-job"
    assert (job["attributes"]["completed_count"], job["attributes"]["skipped_count"]) == (5, 1)
    marketing = {e: p["subscriptions"]["email"]["marketing"] for e, p in by_email(control).items()}
    assert marketing["mine@x.com"]["suppression"] == [] and marketing["mine@x.com"]["can_receive_email_marketing"]
    assert [s["reason"] for s in marketing["both@x.com"]["suppression"]] == ["SPAM_COMPLAINT"]
    for reason in ("HARD_BOUNCE", "UNSUBSCRIBE", "INVALID_EMAIL"):
        kept = marketing[f"{reason.lower()}@x.com"]
        assert [s["reason"] for s in kept["suppression"]] == [reason]
        assert kept["can_receive_email_marketing"] is False
    assert "nobody@x.com" not in marketing
    assert api.get(f"/api/profile-suppression-bulk-delete-jobs/{job['id']}").status_code == 200
    # A delete job is not a create job.
    assert api.get(f"/api/profile-suppression-bulk-create-jobs/{job['id']}").status_code == 404


def test_suppression_limits_and_validation(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    too_many = api.post("/api/profile-suppression-bulk-create-jobs",
                        json=suppression("create", [f"u{i}@x.com" for i in range(101)]))
    assert too_many.status_code == 400
    bad = api.post("/api/profile-suppression-bulk-create-jobs", json=suppression("create", ["ok@x.com", "nope"]))
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["source"]["pointer"] == "/data/attributes/profiles/data/1/attributes/email"
    assert control.profiles() == []
    scoped = "pk_subonly01"
    control.add_key(scoped, ACCOUNT, scopes=["subscriptions:write"])
    with control.api_client(scoped) as client:
        # Suppress needs profiles:write too; unsuppress needs only subscriptions:write.
        assert client.post("/api/profile-suppression-bulk-create-jobs",
                           json=suppression("create", ["a@x.com"])).status_code == 403
        assert client.post("/api/profile-suppression-bulk-delete-jobs",
                           json=suppression("delete", ["a@x.com"])).status_code == 202


# -- accounts --------------------------------------------------------------------------------


def test_get_accounts(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    response = api.get("/api/accounts")
    assert response.status_code == 200
    (account,) = response.json()["data"]
    assert account["type"] == "account" and account["id"] == ACCOUNT
    attrs = account["attributes"]
    assert attrs["public_api_key"] == ACCOUNT and attrs["test_account"] is False
    assert {"timezone", "preferred_currency", "locale", "industry", "contact_information"} <= set(attrs)
    assert {"default_sender_name", "default_sender_email", "organization_name", "street_address"} <= set(
        attrs["contact_information"])
    other = control.add_account(["pk_otheraccount1"])
    assert len(other) == 6 and other.isalnum()
    with control.api_client("pk_otheraccount1") as client:
        assert client.get("/api/accounts").json()["data"][0]["id"] == other
    control.add_key("pk_noaccounts1", ACCOUNT, scopes=["profiles:read"])
    with control.api_client("pk_noaccounts1") as client:
        assert client.get("/api/accounts").json()["errors"][0]["code"] == "permission_denied"
