"""Fake Klaviyo over real loopback HTTP: rate limits and injected faults."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.serving import ServerProcess

#: Each test talks to a fake served on a loopback port (a child process): the integration layer.
pytestmark = pytest.mark.integration

KEY = "pk_" + "5ca1ab1e" * 4 + "01"
SECOND_KEY = "pk_" + "5ca1ab1e" * 4 + "02"
ACCOUNT = "LimT01"
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    args = ["--key", KEY, "--key", SECOND_KEY, "--account-id", ACCOUNT]
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


def rate(response: httpx.Response) -> tuple[int, int, int]:
    return tuple(int(response.headers[h]) for h in RATE_HEADERS)  # type: ignore[return-value]


def throttled(response: httpx.Response) -> int:
    """Assert a Klaviyo 429 and return its wait in seconds (from the detail)."""
    assert response.status_code == 429, response.text
    assert not any(h in response.headers for h in RATE_HEADERS)
    (error,) = response.json()["errors"]
    assert error["code"] == "throttled" and error["title"] == "Request was throttled."
    prefix, unit = "Request was throttled. Expected available in ", (" second.", " seconds.")
    assert error["detail"].startswith(prefix) and error["detail"].endswith(unit)
    return int(error["detail"][len(prefix):].split(" ")[0])


# -- rate limits -----------------------------------------------------------------------------


def test_spec_limits_on_success_headers(api: httpx.Client) -> None:
    assert rate(api.get("/api/accounts")) == (15, 14, 60)     # XS: 1/s, 15/m
    assert rate(api.get("/api/profiles")) == (750, 749, 60)   # L: 75/s, 750/m
    job = api.get("/api/profile-bulk-import-jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert job.status_code == 404 and rate(job) == (150, 149, 60)  # M: 10/s, 150/m; errors carry headers too


def test_burst_window(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(rate_limit_scale=0.04)  # GET /api/profiles: 3/s burst, 30/m steady
    assert [rate(api.get("/api/profiles"))[:2] for _ in range(3)] == [(30, 29), (30, 28), (30, 27)]
    refused = api.get("/api/profiles")
    wait = throttled(refused)
    assert wait == 1 and refused.headers["retry-after"] == "1"
    assert refused.json()["errors"][0]["detail"] == "Request was throttled. Expected available in 1 second."
    time.sleep(int(refused.headers["retry-after"]))
    assert rate(api.get("/api/profiles"))[:2] == (30, 26)  # the refusal was not counted


def test_steady_window_with_scaled_windows(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    # GET /api/accounts at 0.2: 1/s burst, 3/m steady; windows x0.05: 50 ms burst, 3 s steady.
    control.set_knobs(rate_limit_scale=0.2, window_scale=0.05)
    burst_s = 1.0 * 0.05
    seen = []
    for _ in range(3):
        response = api.get("/api/accounts")
        seen.append(rate(response))
        time.sleep(burst_s * 1.2)  # past the burst window, far inside the steady one
    assert [(limit, remaining) for limit, remaining, _ in seen] == [(3, 2), (3, 1), (3, 0)]
    assert all(1 <= reset <= 3 for _, _, reset in seen)
    refused = api.get("/api/accounts")
    wait = throttled(refused)
    assert 2 <= wait <= 3 and refused.headers["retry-after"] == str(wait)
    time.sleep(wait)
    assert rate(api.get("/api/accounts"))[:2] == (3, 2)


def test_limits_are_per_account_and_per_endpoint(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    other_account = control.add_account(["pk_otheraccount9"])
    assert api.get("/api/accounts").status_code == 200
    with control.api_client(SECOND_KEY) as same_account:
        throttled(same_account.get("/api/accounts"))            # keys of one account share the bucket
    with control.api_client("pk_otheraccount9") as other:
        assert other.get("/api/accounts").json()["data"][0]["id"] == other_account
    assert api.get("/api/profiles").status_code == 200          # another endpoint, another bucket
    summary = control.requests()
    assert summary["by_endpoint_status"]["GET /api/accounts"] == {"200": 2, "429": 1}
    assert summary["by_status"]["429"] == 1


def test_omit_retry_after_keeps_the_detail(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(omit_retry_after=True)
    api.get("/api/accounts")
    refused = api.get("/api/accounts")
    assert throttled(refused) == 1 and "retry-after" not in refused.headers


def test_rate_limits_can_be_disabled(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(rate_limits_enabled=False)
    responses = [api.get("/api/accounts") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert not any(h in responses[0].headers for h in RATE_HEADERS)


def test_unauthenticated_requests_carry_no_rate_headers(server: ServerProcess, control: FakeKlaviyoControl) -> None:
    response = httpx.get(f"{server.url}/api/accounts", headers={"revision": "2026-07-15"})
    assert response.status_code == 401 and not any(h in response.headers for h in RATE_HEADERS)


# -- faults ----------------------------------------------------------------------------------


def test_error_rate_answers_json_5xx_without_applying(api: httpx.Client, control: FakeKlaviyoControl,
                                                      server: ServerProcess) -> None:
    control.set_knobs(error_rate=1.0, error_statuses=[503])
    response = api.post("/api/profiles", json={"data": {"type": "profile", "attributes": {"email": "a@x.com"}}})
    assert response.status_code == 503 and response.headers["content-type"] == "application/vnd.api+json"
    assert response.json()["errors"][0]["status"] == 503
    assert control.profiles() == []
    assert httpx.get(f"{server.url}/_fake/health").json() == {"ok": True}
    control.set_knobs(error_statuses=[500, 502])
    assert {api.get("/api/accounts").status_code for _ in range(12)} <= {500, 502}


@pytest.mark.parametrize("after_apply", [True, False])
def test_drop_rate_cuts_the_connection(api: httpx.Client, control: FakeKlaviyoControl, after_apply: bool) -> None:
    control.set_knobs(drop_rate=1.0, drop_after_apply=after_apply)
    payload = {"data": {"type": "profile", "attributes": {"email": "a@x.com"}}}
    with pytest.raises(httpx.TransportError) as caught:
        api.post("/api/profiles", json=payload)
    assert isinstance(caught.value, httpx.RemoteProtocolError | httpx.ReadError)
    # A lost response may still have been applied; that is what clients must survive.
    assert len(control.profiles()) == (1 if after_apply else 0)
    assert control.requests()["by_status"] == {"dropped": 1}
    assert control.request_log()[-1]["fault"] == "drop"


def test_stall_rate_delays_the_answer(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(stall_rate=1.0, stall_s=0.6)
    with pytest.raises(httpx.ReadTimeout):
        api.get("/api/accounts", timeout=0.2)
    started = time.monotonic()
    assert api.get("/api/accounts", timeout=5).status_code in (200, 429)
    assert time.monotonic() - started >= 0.6


def test_non_json_403_is_a_cloudflare_page(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    control.set_knobs(non_json_403_rate=1.0)
    response = api.get("/api/profiles")
    assert response.status_code == 403 and response.headers["content-type"].startswith("text/html")
    assert response.headers["cf-mitigated"] == "challenge" and response.text.startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError):
        response.json()


def test_latency_applies_to_api_only(api: httpx.Client, control: FakeKlaviyoControl, server: ServerProcess) -> None:
    # A latency far beyond any plausible delay of a loopback request: were it applied to the control
    # endpoints, each would time out (a time bound only in that direction, and a slack of minutes).
    control.set_knobs(latency_s=600, error_rate=1.0, drop_rate=1.0, stall_rate=1.0, stall_s=600,
                      non_json_403_rate=1.0)
    for path in ("/_fake/health", "/_fake/knobs", "/_fake/requests"):
        assert httpx.get(f"{server.url}{path}", timeout=60).status_code == 200
    control.set_knobs(latency_s=0.4, error_rate=0.0, drop_rate=0.0, stall_rate=0.0, non_json_403_rate=0.0)
    started = time.monotonic()
    assert api.get("/api/accounts").status_code == 200
    assert time.monotonic() - started >= 0.4


def _statuses(api: httpx.Client, n: int) -> list[int]:
    return [api.get("/api/accounts").status_code for _ in range(n)]


def test_faults_are_deterministic_with_a_seed(api: httpx.Client, control: FakeKlaviyoControl) -> None:
    knobs = {"seed": 7, "error_rate": 0.5, "error_statuses": [500, 503], "rate_limits_enabled": False}
    control.set_knobs(**knobs)
    first = _statuses(api, 30)
    assert {200, 500, 503} <= set(first)
    control.reset()
    control.set_knobs(**knobs)
    assert _statuses(api, 30) == first
    control.set_knobs(seed=8)
    assert _statuses(api, 30) != first
