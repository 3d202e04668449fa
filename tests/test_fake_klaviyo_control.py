"""Fake Klaviyo's control API, bookkeeping, reset, command line and spec fallback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.serving import ServerProcess, free_port, wait_until_healthy

#: Each test talks to a fake served on a loopback port (a child process): the integration layer.
pytestmark = pytest.mark.integration

KEY = "pk_" + "c0ffee00" * 4 + "01"
ACCOUNT = "CtrL01"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    args = ["--key", KEY, "--account-id", ACCOUNT, "--latency-s", "0", "--request-log-size", "50"]
    with ServerProcess(module="fakes.klaviyo", args=args) as proc:
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


def test_health(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/_fake/health")
    assert response.status_code == 200 and response.json() == {"ok": True}


def test_request_counts_by_endpoint_and_status(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    (pid,) = control.seed_profiles([{"email": "a@x.com"}])
    api.get("/api/profiles")
    api.get(f"/api/profiles/{pid}/")
    api.get("/api/profiles/01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    api.get("/api/accounts")
    api.get("/api/accounts")  # 1/s burst: 429
    with control.api_client("pk_nobody") as stranger:
        stranger.get("/api/profiles")
    assert control.requests() == {
        "total": 6,
        "by_endpoint": {"GET /api/profiles": 2, "GET /api/profiles/{id}": 2, "GET /api/accounts": 2},
        "by_status": {"200": 3, "404": 1, "429": 1, "401": 1},
        "by_endpoint_status": {"GET /api/profiles": {"200": 1, "401": 1},
                               "GET /api/profiles/{id}": {"200": 1, "404": 1},
                               "GET /api/accounts": {"200": 1, "429": 1}},
    }


def test_request_log_records_what_clients_sent(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    (pid,) = control.seed_profiles([{"email": "a@x.com", "first_name": "A"}])
    api.patch(f"/api/profiles/{pid}", json={"data": {"type": "profile", "id": pid,
                                                     "attributes": {"first_name": None}}})
    api.get("/api/profiles", params={"filter": 'equals(email,"a@x.com")', "page[size]": "5"})
    patch, search = control.request_log()
    assert patch["method"] == "PATCH" and patch["path"] == f"/api/profiles/{pid}" and patch["status"] == 200
    assert patch["endpoint"] == "PATCH /api/profiles/{id}" and patch["account_id"] == ACCOUNT
    # The point of the log: tests can see that a client sent a null.
    assert patch["body"]["data"]["attributes"] == {"first_name": None}
    assert search["query"] == {"filter": 'equals(email,"a@x.com")', "page[size]": "5"} and search["body"] is None
    assert control.request_log(limit=1) == [search]


def test_request_log_is_a_bounded_ring(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(request_log_size=3, rate_limits_enabled=False)
    for i in range(7):
        api.get("/api/profiles", params={"page[size]": str(i + 1)})
    log = control.request_log()
    assert [entry["query"]["page[size]"] for entry in log] == ["5", "6", "7"]
    assert control.requests()["total"] == 7


def test_reset_restores_the_startup_state(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.seed_profiles([{"email": "a@x.com"}])
    control.add_account(["pk_extra1"], account_id="ExtR01")
    control.revoke_key(KEY)
    control.set_knobs(latency_s=0.01, rate_limit_scale=0.5)
    api.get("/api/accounts")
    control.reset()
    assert control.profiles() == [] and control.requests()["total"] == 0 and control.request_log() == []
    assert control.knobs()["latency_s"] == 0.0 and control.knobs()["rate_limit_scale"] == 1.0
    assert control.knobs()["request_log_size"] == 50  # the startup value given on the command line
    assert [a["account_id"] for a in control.accounts()] == [ACCOUNT]
    assert api.get("/api/accounts").status_code == 200  # key restored, rate window cleared


def test_accounts_and_keys(control: FakeKlaviyoControl) -> None:
    control.set_knobs(rate_limits_enabled=False)  # GET /api/accounts is 1/s per account
    generated = control.add_account([{"key": "pk_scoped1", "scopes": ["profiles:read"]}, "pk_full1"])
    assert len(generated) == 6 and generated.isalnum() and generated != ACCOUNT
    assert control.add_account(["pk_named1"], account_id="NaMe01") == "NaMe01"
    with control.api_client("pk_scoped1") as scoped, control.api_client("pk_full1") as full:
        assert scoped.get("/api/profiles").status_code == 200
        assert scoped.get("/api/accounts").status_code == 403
        assert full.get("/api/accounts").json()["data"][0]["id"] == generated
    with pytest.raises(httpx.HTTPStatusError):
        control.add_account(["pk_full1"], account_id="NaMe01")  # a key belongs to one account
    with pytest.raises(httpx.HTTPStatusError):
        control.revoke_key("pk_neverseen")
    control.add_key("pk_scoped1", generated, scopes=["profiles:read", "accounts:read"])
    with control.api_client("pk_scoped1") as scoped:
        assert scoped.get("/api/accounts").status_code == 200


def test_accounts_are_isolated(control: FakeKlaviyoControl) -> None:
    other = control.add_account(["pk_tenantb1"])
    (mine,) = control.seed_profiles([{"email": "same@x.com", "first_name": "Mine"}])
    (theirs,) = control.seed_profiles([{"email": "same@x.com", "first_name": "Theirs"}], account_id=other)
    assert [p["id"] for p in control.profiles()] == [mine]
    assert [p["id"] for p in control.profiles(account_id=other)] == [theirs]
    assert control.profile(theirs)["account_id"] == other
    with control.api_client("pk_tenantb1") as tenant_b:
        assert tenant_b.get(f"/api/profiles/{mine}").status_code == 404
        found = tenant_b.get("/api/profiles", params={"filter": 'equals(email,"same@x.com")'}).json()["data"]
        assert [p["attributes"]["first_name"] for p in found] == ["Theirs"]


def test_seeding_bypasses_validation_but_not_uniqueness(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    ids = control.seed_profiles([
        {"email": "Legacy@X.com", "phone_number": "555-0100", "consent": "UNSUBSCRIBED",
         "suppression": [{"reason": "UNSUBSCRIBE", "timestamp": "2024-02-01T00:00:00+00:00"}]},
        {"external_id": "L-2", "properties": {"Levels": ["Gold"]}, "location": {"country": "NO"}},
    ])
    assert len(ids) == 2 and ids == sorted(ids)
    legacy = api.get(f"/api/profiles/{ids[0]}").json()["data"]["attributes"]
    assert legacy["phone_number"] == "555-0100"  # GET returns legacy data as-is
    state = control.profile(ids[0])
    assert state["subscriptions"]["email"]["marketing"] == {
        "can_receive_email_marketing": False, "consent": "UNSUBSCRIBED", "consent_timestamp": state[
            "subscriptions"]["email"]["marketing"]["consent_timestamp"],
        "suppression": [{"reason": "UNSUBSCRIBE", "timestamp": "2024-02-01T00:00:00.000000+00:00"}]}
    assert control.profile(ids[1])["attributes"]["properties"] == {"Levels": ["Gold"]}
    with pytest.raises(httpx.HTTPStatusError):
        control.seed_profiles([{"email": "new@x.com"}, {"email": "legacy@x.com"}])
    with pytest.raises(httpx.HTTPStatusError):
        control.seed_profiles([{"email": "dup@x.com"}, {"email": "DUP@x.com"}])
    assert len(control.profiles()) == 2  # all or nothing


def test_knobs_partial_update(control: FakeKlaviyoControl) -> None:
    knobs = control.set_knobs(rate_limit_scale=0.1)
    assert knobs["rate_limit_scale"] == 0.1 and knobs["window_scale"] == 1.0 and "error_rate" in knobs
    assert control.knobs() == knobs
    for bad in ({"no_such_knob": 1}, {"drop_rate": 1.5}, {"latency_s": "slow"}):
        with pytest.raises(httpx.HTTPStatusError):
            control.set_knobs(**bad)


def test_command_line_generates_and_prints_a_key() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fakes.klaviyo", "--port", str(port), "--seed", "5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = {}
        assert proc.stdout is not None
        while "FAKE_KLAVIYO_KEY" not in lines:
            name, _, value = proc.stdout.readline().strip().partition("=")
            assert name, "the fake exited before printing its key"
            lines[name] = value
        assert lines["FAKE_KLAVIYO_URL"] == f"http://127.0.0.1:{port}"
        assert lines["FAKE_KLAVIYO_KEY"].startswith("pk_") and len(lines["FAKE_KLAVIYO_KEY"]) == 37
        wait_until_healthy(f"{lines['FAKE_KLAVIYO_URL']}/_fake/health", proc=proc)
        with FakeKlaviyoControl(lines["FAKE_KLAVIYO_URL"]) as ctl, ctl.api_client(lines["FAKE_KLAVIYO_KEY"]) as api:
            assert api.get("/api/accounts").json()["data"][0]["id"] == lines["FAKE_KLAVIYO_ACCOUNT"]
            assert ctl.knobs()["seed"] == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_command_line_scoped_keys_and_knobs() -> None:
    args = ["--key", "pk_reader1=profiles:read", "--rate-limit-scale", "0.5", "--omit-retry-after",
            "--error-statuses", "502,504"]
    with ServerProcess(module="fakes.klaviyo", args=args) as proc, FakeKlaviyoControl(proc.url) as ctl:
        knobs = ctl.knobs()
        assert (knobs["rate_limit_scale"], knobs["omit_retry_after"], knobs["error_statuses"]) == (0.5, True,
                                                                                                 [502, 504])
        with ctl.api_client("pk_reader1") as api:
            assert api.get("/api/profiles").headers["ratelimit-limit"] == "375"
            assert api.get("/api/accounts").status_code == 403


def test_limits_come_from_the_spec_file(tmp_path: Path) -> None:
    tiny = {"openapi": "3.0.2", "paths": {"/api/accounts": {"get": {
        "x-klaviyo-ratelimit": {"burst": "4/s", "steady": "7/m"}, "x-klaviyo-scopes": ["accounts:read"]}}}}
    spec = tmp_path / "stable.json"
    spec.write_text(json.dumps(tiny))
    with ServerProcess(module="fakes.klaviyo", args=["--key", KEY, "--spec", str(spec)]) as proc, \
            FakeKlaviyoControl(proc.url) as ctl, ctl.api_client(KEY) as api:
        assert ctl.info()["limits_source"] == "spec"
        assert api.get("/api/accounts").headers["ratelimit-limit"] == "7"
        # Operations the file lacks fall back to the built-in table.
        assert api.get("/api/profiles").headers["ratelimit-limit"] == "750"


def test_missing_spec_falls_back_to_builtin_table(tmp_path: Path) -> None:
    env = {"FAKE_KLAVIYO_SPEC": str(tmp_path / "absent.json")}
    with ServerProcess(module="fakes.klaviyo", args=["--key", KEY], env=env) as proc, \
            FakeKlaviyoControl(proc.url) as ctl, ctl.api_client(KEY) as api:
        info = ctl.info()
        assert info["limits_source"] == "builtin" and info["spec_path"].endswith("absent.json")
        assert info["operations"]["POST /api/profile-bulk-import-jobs"]["scopes"] == ["lists:write",
                                                                                      "profiles:write"]
        assert api.get("/api/accounts").headers["ratelimit-limit"] == "15"
        assert api.get("/api/profile-bulk-import-jobs/x").headers["ratelimit-limit"] == "150"
        # Unknown paths still answer a JSON:API 404 without the spec.
        assert api.get("/api/lists").json()["errors"][0]["code"] == "not_found"
