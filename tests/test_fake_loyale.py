"""The fake Loyale over real loopback HTTP: auth, scheme header, customers, Sieve, paging, levels,
balances, faults, clock, mutations, control API, CLI and `create_app(config)`."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from fakes.loyale import FakeLoyaleConfig, Knobs, SchemeConfig, create_app
from fakes.loyale_control import FakeLoyaleControl, FakeLoyaleError
from fakes.serving import ServerProcess, free_port, wait_until_healthy

#: Each test talks to a fake served on a loopback port (a child process): the integration layer.
pytestmark = pytest.mark.integration

SCHEME = "8f4089bc-91b6-4078-8403-cfd07b285cdb"
EMAIL = "admin@loyale.test"
PASSWORD = "correct-horse"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class Api:
    """Just enough of a Loyale client to drive the fake's /api surface."""

    def __init__(self, url: str, scheme: str = SCHEME, email: str = EMAIL, password: str = PASSWORD) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)
        self.scheme, self.email, self.password = scheme, email, password
        self.token: str | None = None

    def login(self, header: str = "Scheme") -> str:
        response = self.http.post("/api/AdminToken", json={"email": self.email, "password": self.password},
                                  headers={header: self.scheme})
        assert response.status_code == 200, response.text
        self.token = response.json()["token"]
        return self.token

    def get(self, path: str, params: dict[str, Any] | None = None, *, token: str | None = None,
            scheme: str | None = None, header: str = "X-Scheme") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if scheme != "":
            headers[header] = scheme or self.scheme
        return self.http.get(path, params=params, headers=headers)

    def ok(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = self.get(path, params)
        assert response.status_code == 200, response.text
        return response.json()

    def walk(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every row of a list, page by page, until a page comes back short."""
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            batch = self.ok(path, {**params, "Page": page, "PageSize": params.get("PageSize", 100)})
            rows.extend(batch)
            if len(batch) < params.get("PageSize", 100):
                return rows
            page += 1


def assert_envelope(response: httpx.Response, status: int, error_id: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status and body["errorId"] == error_id
    assert isinstance(body["errors"], list) and body["errors"] and all(isinstance(e, str) for e in body["errors"])


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(module="fakes.loyale", args=["--customers", "300", "--seed", "5", "--scheme-id", SCHEME,
                                                      "--admin-password", PASSWORD]).start()
    yield proc
    proc.stop()


@pytest.fixture
def control(server: ServerProcess) -> Iterator[FakeLoyaleControl]:
    with FakeLoyaleControl(server.url) as ctl:
        ctl.reset()
        yield ctl


@pytest.fixture
def api(server: ServerProcess, control: FakeLoyaleControl) -> Iterator[Api]:
    client = Api(server.url)
    client.login()
    yield client
    client.http.close()


def visible(control: FakeLoyaleControl) -> list[dict[str, Any]]:
    return [c for c in control.customers(SCHEME) if not c["deleted"]]


# ---- auth and scheme header ----------------------------------------------------------------------------


def test_admin_token_and_bearer_auth(api: Api) -> None:
    wrong = api.http.post("/api/AdminToken", json={"email": EMAIL, "password": "nope"}, headers={"Scheme": SCHEME})
    assert_envelope(wrong, 401, "Unauthorized")
    assert_envelope(api.http.post("/api/AdminToken", json={"email": EMAIL, "password": PASSWORD}),
                    400, "Bad Request")
    assert api.login(header="X-Scheme") != api.login(header="Scheme")  # either header, a fresh token each time

    assert_envelope(api.http.get("/api/Customer", headers={"X-Scheme": SCHEME}), 401, "Unauthorized")
    assert_envelope(api.get("/api/Customer", token="forged"), 401, "Unauthorized")
    assert api.get("/api/Customer", header="X-Scheme").status_code == 200
    assert api.get("/api/Customer", header="Scheme").status_code == 200
    assert_envelope(api.get("/api/Customer", scheme=""), 400, "Bad Request")
    assert_envelope(api.get("/api/Customer", scheme="not-a-guid"), 400, "Bad Request")
    assert_envelope(api.get("/api/Customer", scheme="00000000-0000-4000-8000-000000000000"), 403, "Forbidden")


def test_tenants_are_isolated(api: Api, control: FakeLoyaleControl, server: ServerProcess) -> None:
    other = control.create_scheme(customers=5, seed=9, admin_password="other-pass", name="Other")
    assert other["admin_email"] == EMAIL and len(other["levels"]) in (3, 4)
    theirs = Api(server.url, scheme=other["scheme_id"], password="other-pass")
    their_token = theirs.login()
    # a token of scheme B used with scheme A's header, and the reverse
    assert_envelope(api.get("/api/Customer", token=their_token), 403, "Forbidden")
    assert_envelope(theirs.get("/api/Customer", token=api.token), 403, "Forbidden")
    their_ids = [c["id"] for c in theirs.ok("/api/Customer")]
    assert len(their_ids) == len([c for c in control.customers(other["scheme_id"]) if not c["deleted"]])
    assert_envelope(api.get(f"/api/Customer/{their_ids[0]}"), 404, "Not Found")
    assert not set(their_ids) & {c["id"] for c in control.customers(SCHEME)}


def test_expired_and_revoked_tokens_force_a_refresh(api: Api, control: FakeLoyaleControl) -> None:
    assert api.get("/api/Customer").status_code == 200
    assert control.expire_tokens() >= 1
    assert_envelope(api.get("/api/Customer"), 401, "Unauthorized")
    api.login()
    assert api.get("/api/Customer").status_code == 200
    # a single token can be revoked too
    control.expire_tokens(api.token)
    assert api.get("/api/Customer").status_code == 401


def test_token_ttl_runs_on_the_fake_clock(api: Api, control: FakeLoyaleControl) -> None:
    control.set_knobs(token_ttl_s=60)
    api.login()
    control.advance_clock(59)
    assert api.get("/api/Customer").status_code == 200
    control.advance_clock(2)
    assert_envelope(api.get("/api/Customer"), 401, "Unauthorized")


# ---- customers ----------------------------------------------------------------------------------------

VIEW_KEYS = {
    "id", "email", "firstName", "lastName", "name", "dob", "gender", "areaCode", "mobileNumber", "addressLine1",
    "addressLine2", "town", "state", "postCode", "country", "marketingSub", "barCode", "createdBy", "updatedBy",
    "detailedLevels", "schemes", "createdDate", "updatedDate", "lastConnectedDate", "lastTransactionDate",
    "Levels", "alerts", "additionalCustomerFields", "profileImageUrl", "onHold", "deleted", "emailVerified",
    "mobileNumberVerified", "signUpPlatform", "externalRefId", "balance", "tags",
}


def test_customer_by_id_is_a_customer_result_view(api: Api, control: FakeLoyaleControl) -> None:
    stored = control.customers(SCHEME)
    with_levels = next(c for c in stored if c["Levels"] and c["additionalCustomerFields"])
    view = api.ok(f"/api/Customer/{with_levels['id']}")
    assert view == with_levels
    assert set(view) == VIEW_KEYS
    assert STAMP.match(view["createdDate"]) and STAMP.match(view["updatedDate"])
    assert view["Levels"][0] == {"customerId": view["id"], "levelId": view["Levels"][0]["levelId"]}
    assert set(view["additionalCustomerFields"][0]) == {
        "id", "customerId", "schemeId", "name", "key", "value", "internal", "createdDate", "updatedDate",
        "createdBy", "updatedBy"}
    assert set(view["balance"]) == {"pointsValue", "monetaryValue"}
    # GUIDs are matched case-insensitively, unknown ids are a 404 envelope
    assert api.ok(f"/api/Customer/{view['id'].upper()}")["id"] == view["id"]
    assert_envelope(api.get("/api/Customer/00000000-0000-4000-8000-00000000dead"), 404, "Not Found")
    assert_envelope(api.get("/api/NoSuchThing"), 404, "Not Found")
    assert_envelope(api.http.post("/api/Customer", headers={"Authorization": f"Bearer {api.token}"}),
                    405, "Method Not Allowed")


def test_list_paging_headers_cap_and_end(api: Api, control: FakeLoyaleControl) -> None:
    total = len(visible(control))
    assert 250 < total < 300  # a few of the 300 synthetic customers are deleted
    first = api.get("/api/Customer")
    assert len(first.json()) == 100  # default page size
    assert first.headers["X-Total-Count"] == str(total)
    assert first.headers["X-Total-Pages"] == str(math.ceil(total / 100))

    page = api.get("/api/Customer", {"Page": 3, "PageSize": 50})
    assert page.headers["X-Total-Pages"] == str(math.ceil(total / 50))
    assert [c["id"] for c in page.json()] == [c["id"] for c in visible(control)[100:150]]
    last = api.ok("/api/Customer", {"Page": math.ceil(total / 50), "PageSize": 50})
    assert len(last) == total - 50 * (math.ceil(total / 50) - 1)
    assert api.ok("/api/Customer", {"Page": 99, "PageSize": 50}) == []
    # query names bind case-insensitively, like ASP.NET
    assert api.ok("/api/Customer", {"page": 3, "pagesize": 50}) == page.json()
    # PageSize above the cap: at most 100 rows
    assert len(api.ok("/api/Customer", {"PageSize": 1000})) == 100
    assert_envelope(api.get("/api/Customer", {"Page": 0}), 400, "Bad Request")
    assert_envelope(api.get("/api/Customer", {"PageSize": "ten"}), 400, "Bad Request")


def test_page_size_above_the_cap_skips_like_sieve(api: Api, control: FakeLoyaleControl) -> None:
    ids = [c["id"] for c in visible(control)]
    page2 = api.get("/api/Customer", {"Page": 2, "PageSize": 200})
    assert [c["id"] for c in page2.json()] == ids[200:300]  # rows 100..199 are never served
    control.set_knobs(clamp_page_size=True)
    assert [c["id"] for c in api.ok("/api/Customer", {"Page": 2, "PageSize": 200})] == ids[100:200]


def test_sorted_walk_by_updated_date_then_id(api: Api, control: FakeLoyaleControl) -> None:
    rows = api.walk("/api/Customer", Sorts="updatedDate,id", PageSize=40)
    expected = sorted(visible(control), key=lambda c: (c["updatedDate"], c["id"]))
    assert [r["id"] for r in rows] == [c["id"] for c in expected]
    newest = api.ok("/api/Customer", {"Sorts": "-updatedDate,id", "PageSize": 5})
    assert [r["id"] for r in newest] == [c["id"] for c in sorted(
        expected, key=lambda c: (-_micros(c["updatedDate"]), c["id"]))[:5]]


def _micros(stamp: str) -> int:
    return int(re.sub(r"\D", "", stamp))


def test_filters_over_http(api: Api, control: FakeLoyaleControl) -> None:
    people = visible(control)
    opted_out = [c["id"] for c in people if c["marketingSub"] is False]
    assert [c["id"] for c in api.walk("/api/Customer", Filters="marketingSub==false")] == opted_out

    two = [c for c in people if c["email"] and re.fullmatch(r"[\w.+-]+@[\w.-]+", c["email"])][:2]
    found = api.ok("/api/Customer", {"Filters": f"email=={two[0]['email']}|{two[1]['email']}"})
    assert {c["id"] for c in found} == {two[0]["id"], two[1]["id"]}

    needle = people[0]["lastName"][:3].upper()
    both = api.walk("/api/Customer", Filters=f"(firstName|lastName)@=*{needle}")
    assert {c["id"] for c in both} == {
        c["id"] for c in people if needle in c["firstName"].upper() or needle in c["lastName"].upper()}

    # an unknown filter name is silently ignored: the whole list comes back (the trap a client must detect)
    response = api.get("/api/Customer", {"Filters": "updatedSince>=2024-01-01"})
    assert response.headers["X-Total-Count"] == str(len(people))
    # so is a value Sieve cannot convert: an unencoded "+00:00" arrives as " 00:00" and drops every filter
    future = "updatedDate>=2999-01-01T00:00:00"
    assert api.get("/api/Customer", {"Filters": future}).headers["X-Total-Count"] == "0"
    raw = api.http.get(f"/api/Customer?Filters={future}+00:00",
                       headers={"Authorization": f"Bearer {api.token}", "X-Scheme": SCHEME})
    assert raw.headers["X-Total-Count"] == str(len(people))
    assert api.get("/api/Customer", {"Filters": future + "+00:00"}).headers["X-Total-Count"] == "0"
    control.set_knobs(ignore_unknown_filters=False)
    assert_envelope(api.get("/api/Customer", {"Filters": "updatedSince>=2024-01-01"}), 400, "Bad Request")
    assert_envelope(api.get("/api/Customer", {"Sorts": "nosuch"}), 400, "Bad Request")


def test_incremental_poll_sees_mutations_and_cache_is_invalidated(api: Api, control: FakeLoyaleControl) -> None:
    opted_in = [c for c in visible(control) if c["marketingSub"] is True]
    before = int(api.get("/api/Customer", {"Filters": "marketingSub==false"}).headers["X-Total-Count"])
    watermark = control.clock()["now"]
    changed = [control.update_customer(SCHEME, c["id"], marketingSub=False) for c in opted_in[:3]]
    assert int(api.get("/api/Customer", {"Filters": "marketingSub==false"}).headers["X-Total-Count"]) == before + 3
    since = api.ok("/api/Customer", {"Filters": f"updatedDate>={watermark}", "Sorts": "updatedDate,id"})
    assert [c["id"] for c in since] == [c["id"] for c in changed]
    assert all(c["updatedDate"] >= watermark for c in since)
    assert api.ok("/api/Customer", {"Sorts": "-updatedDate", "PageSize": 1})[0]["id"] == changed[-1]["id"]


def test_deleted_and_departed_customers(api: Api, control: FakeLoyaleControl) -> None:
    people = visible(control)
    total = len(people)
    gone, leaver = people[0], people[1]
    control.action(SCHEME, gone["id"], "delete")
    view = api.ok(f"/api/Customer/{gone['id']}")
    assert view["deleted"] is True
    assert int(api.get("/api/Customer").headers["X-Total-Count"]) == total - 1
    deleted = api.walk("/api/Customer", Filters="deleted==true")
    assert gone["id"] in {c["id"] for c in deleted} and all(c["deleted"] for c in deleted)

    left = control.action(SCHEME, leaver["id"], "leave")
    assert all(s["id"] != SCHEME for s in left["schemes"])
    assert leaver["id"] not in {c["id"] for c in api.walk("/api/Customer")}
    assert api.ok(f"/api/Customer/{leaver['id']}")["id"] == leaver["id"]
    joined = control.action(SCHEME, leaver["id"], "join")
    assert any(s["id"] == SCHEME for s in joined["schemes"])
    assert leaver["id"] in {c["id"] for c in api.walk("/api/Customer")}


def test_levels_and_point_balances(api: Api, control: FakeLoyaleControl) -> None:
    levels = api.get("/api/Level")
    assert levels.status_code == 200 and levels.headers["X-Total-Count"] == str(len(levels.json()))
    by_id = {lv["id"]: lv for lv in levels.json()}
    assert {"Bronze", "Silver", "Gold"} <= {lv["name"] for lv in by_id.values()}
    some = next(iter(by_id))
    assert api.ok(f"/api/Level/{some}") == by_id[some]
    assert api.ok("/api/Level", {"Filters": f"id=={some}"}) == [by_id[some]]
    assert_envelope(api.get("/api/Level/00000000-0000-4000-8000-000000000000"), 404, "Not Found")

    customer = visible(control)[7]
    filters = f"customerId=={customer['id']},schemeId=={SCHEME}"
    [row] = api.ok("/api/PointBalance", {"Filters": filters})
    assert row == {"customerId": customer["id"], "schemeId": SCHEME, **customer["balance"]}
    assert api.ok("/api/PointBalance", {"Filters": f"customerId=={customer['id']},schemeId==" + "0" * 8
                                        + "-0000-4000-8000-000000000000"}) == []
    updated = control.set_balance(SCHEME, customer["id"], points=4321, monetary=43.21)
    assert updated["balance"] == {"pointsValue": 4321, "monetaryValue": 43.21}
    assert updated["updatedDate"] > customer["updatedDate"]
    assert api.ok("/api/PointBalance", {"Filters": filters})[0]["pointsValue"] == 4321
    assert api.ok(f"/api/Customer/{customer['id']}")["balance"]["pointsValue"] == 4321

    control.set_knobs(balance_bumps_updated_date=False)
    again = control.set_balance(SCHEME, customer["id"], points_delta=-21)
    assert again["balance"]["pointsValue"] == 4300
    assert again["updatedDate"] == updated["updatedDate"]
    assert again["lastTransactionDate"] > updated["lastTransactionDate"]


# ---- faults ---------------------------------------------------------------------------------------------


def test_fail_next_scripts_the_next_answers(api: Api, control: FakeLoyaleControl) -> None:
    page1 = api.ok("/api/Customer", {"Page": 1})
    control.set_knobs(fail_next=[429, 500])
    assert control.health() and control.knobs()["fail_next"] == [429, 500]  # /_fake/* is never faulted
    api.login()  # nor is AdminToken, unless faults_on_auth
    assert_envelope(api.get("/api/Customer", {"Page": 2}), 429, "Too Many Requests")
    assert_envelope(api.get("/api/Customer", {"Page": 2}), 500, "Internal Server Error")
    page2 = api.ok("/api/Customer", {"Page": 2})  # a producer that retries its page resumes cleanly
    assert not {c["id"] for c in page1} & {c["id"] for c in page2}
    assert control.knobs()["fail_next"] == []

    control.set_knobs(fail_next=[503], faults_on_auth=True)
    response = api.http.post("/api/AdminToken", json={"email": EMAIL, "password": PASSWORD},
                             headers={"Scheme": SCHEME})
    assert_envelope(response, 503, "Service Unavailable")


def test_random_faults_and_latency(api: Api, control: FakeLoyaleControl) -> None:
    control.set_knobs(throttle_rate=1.0, retry_after_s=7)
    response = api.get("/api/Customer")
    assert_envelope(response, 429, "Too Many Requests")
    assert response.headers["Retry-After"] == "7"
    control.set_knobs(throttle_rate=0.0, error_rate=1.0)
    assert_envelope(api.get("/api/Level"), 500, "Internal Server Error")
    control.set_knobs(error_rate=0.5, seed=1)
    statuses = [api.get("/api/Level").status_code for _ in range(40)]
    assert 5 <= statuses.count(500) <= 35 and statuses.count(200) + statuses.count(500) == 40
    control.set_knobs(seed=1)  # the same seed replays the same faults
    assert [api.get("/api/Level").status_code for _ in range(40)] == statuses
    control.set_knobs(error_rate=0.0, latency_s=0.3)
    started = time.perf_counter()
    assert api.get("/api/Level").status_code == 200
    assert time.perf_counter() - started >= 0.3
    with pytest.raises(FakeLoyaleError):
        control.set_knobs(error_rate=2)
    with pytest.raises(FakeLoyaleError):
        control.set_knobs(no_such_knob=1)


# ---- clock, mutations, hostile data ------------------------------------------------------------------


def test_updated_date_strictly_increases_whatever_the_clock(control: FakeLoyaleControl) -> None:
    customer = control.customers(SCHEME)[0]
    stamps = [customer["updatedDate"]]
    for i in range(20):  # faster than the clock ticks
        stamps.append(control.update_customer(SCHEME, customer["id"], firstName=f"N{i}")["updatedDate"])
    control.set_clock_offset(-3 * 365 * 86400)  # the clock goes back three years
    stamps.append(control.update_customer(SCHEME, customer["id"], firstName="Back")["updatedDate"])
    assert all(STAMP.match(s) for s in stamps)
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))
    control.set_clock_offset(0)
    now = control.advance_clock(30 * 86400)["now"]
    later = control.update_customer(SCHEME, customer["id"], lastName="Later")
    assert later["updatedDate"] >= now
    assert later["name"] == "Back Later"  # the readonly `name` follows first and last name


def test_mutation_helpers(control: FakeLoyaleControl, api: Api) -> None:
    c = visible(control)[3]
    updated = control.update_customer(SCHEME, c["id"], updated_by="ops@brand.test", email="new@x.test")
    assert updated["email"] == "new@x.test" and updated["updatedBy"] == "ops@brand.test"
    suspended = control.action(SCHEME, c["id"], "suspend")
    assert suspended["onHold"] is True and suspended["updatedBy"] == "fake-admin@loyale.test"
    assert control.action(SCHEME, c["id"], "activate")["onHold"] is False
    added = control.set_additional_field(SCHEME, c["id"], "LoyaltyCard", "A-1", internal=True)
    field = next(f for f in added["additionalCustomerFields"] if f["key"] == "LoyaltyCard")
    assert field["internal"] is True and field["value"] == "A-1" and field["name"] == "LoyaltyCard"
    changed = control.set_additional_field(SCHEME, c["id"], "LoyaltyCard", "A-2")
    same = next(f for f in changed["additionalCustomerFields"] if f["key"] == "LoyaltyCard")
    assert same["id"] == field["id"] and same["value"] == "A-2" and same["internal"] is True
    level = control.schemes()[0]["levels"][0]["id"]
    leveled = control.set_levels(SCHEME, c["id"], [level])
    assert leveled["Levels"] == [{"customerId": c["id"], "levelId": level}]
    assert api.ok(f"/api/Customer/{c['id']}") == leveled
    with pytest.raises(FakeLoyaleError):
        control.action(SCHEME, c["id"], "explode")
    with pytest.raises(FakeLoyaleError):
        control.customer(SCHEME, "00000000-0000-4000-8000-00000000beef")


def test_hostile_customers_are_stored_as_given(api: Api, control: FakeLoyaleControl) -> None:
    hostile = [
        {"email": "Weird@X.com ", "marketingSub": "yes", "gender": "female", "unknownField": {"nested": [1]}},
        {"id": "not-a-guid", "firstName": 42, "updatedDate": "yesterday", "Levels": "gold"},
    ]
    ids = control.add_customers(SCHEME, hostile)
    assert ids[1] == "not-a-guid"
    first = api.ok(f"/api/Customer/{ids[0]}")
    assert first["marketingSub"] == "yes" and first["unknownField"] == {"nested": [1]}
    assert STAMP.match(first["createdDate"]) and first["updatedDate"] == first["createdDate"]
    assert set(first) == {"id", "email", "marketingSub", "gender", "unknownField", "createdDate", "updatedDate"}
    second = api.ok("/api/Customer/not-a-guid")
    assert second["firstName"] == 42 and second["updatedDate"] == "yesterday"
    # typed filters and sorts survive wrong types: they count as null
    rows = api.walk("/api/Customer", Filters="marketingSub==true", Sorts="-updatedDate,firstName")
    assert ids[0] not in {r["id"] for r in rows}
    everything = api.walk("/api/Customer", Sorts="firstName")
    assert [r["id"] for r in everything[:2]] == ids  # both "null" names sort first, in insertion order
    assert all(isinstance(r["firstName"], str) for r in everything[2:])
    # a mutation of a customer with an unparsable stamp still stamps it
    assert STAMP.match(control.update_customer(SCHEME, "not-a-guid", firstName="Ok")["updatedDate"])
    with pytest.raises(FakeLoyaleError):
        control.add_customers(SCHEME, [{"id": "not-a-guid"}])  # duplicate id


# ---- control API --------------------------------------------------------------------------------------


def test_request_counters(api: Api, control: FakeLoyaleControl) -> None:
    control.reset_requests()
    api.get("/api/Customer")
    api.get("/api/Customer")
    api.get(f"/api/Customer/{control.customers(SCHEME)[0]['id']}")
    api.get("/api/Customer", token="forged")
    stats = control.requests()
    assert stats["total"] == 4
    assert stats["by_route"] == {"GET /api/Customer": 3, "GET /api/Customer/{customer_id}": 1}
    assert stats["by_status"] == {"200": 3, "401": 1}
    assert stats["recent"][-1]["scheme_id"] == SCHEME


def test_reset_restores_the_startup_config(api: Api, control: FakeLoyaleControl) -> None:
    original = control.customers(SCHEME)
    control.create_scheme(customers=1)
    control.update_customer(SCHEME, original[0]["id"], email="changed@x.test")
    control.set_knobs(error_rate=1.0)
    control.advance_clock(1000)
    control.reset()
    assert [s["scheme_id"] for s in control.schemes()] == [SCHEME]
    assert control.customers(SCHEME) == original
    assert control.knobs()["error_rate"] == 0.0 and control.clock()["offset_s"] == 0.0
    assert api.get("/api/Customer").status_code == 401  # tokens are gone too


def test_cli_prints_where_and_how_to_log_in() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fakes.loyale", "--port", str(port), "--customers", "3", "--admin-email",
         "ops@brand.test"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = dict(line.strip().split("=", 1) for line in (proc.stdout.readline() for _ in range(5)) if "=" in line)
        url = lines["LOYALE_BASE_URL"]
        assert url == f"http://127.0.0.1:{port}"
        assert lines["LOYALE_ADMIN_EMAIL"] == "ops@brand.test" and len(lines["LOYALE_ADMIN_PASSWORD"]) >= 12
        wait_until_healthy(f"{url}/_fake/health", proc=proc)
        client = Api(url, scheme=lines["LOYALE_SCHEME_ID"], email="ops@brand.test",
                     password=lines["LOYALE_ADMIN_PASSWORD"])
        client.login()
        assert client.get("/api/Customer").headers["X-Total-Count"] in ("2", "3")
        client.http.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_create_app_with_a_config_in_process() -> None:
    tenants = [SchemeConfig(scheme_id="11111111-1111-4111-8111-111111111111", admin_password="p1", customers=12,
                            seed=1, name="One"),
               SchemeConfig(scheme_id="22222222-2222-4222-8222-222222222222", admin_email="b@brand.test",
                            admin_password="p2", customers=0)]
    app = create_app(FakeLoyaleConfig(schemes=tenants, knobs=Knobs(max_page_size=5, ignore_unknown_filters=False)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(f"{url}/_fake/health")
        one = Api(url, scheme=tenants[0].scheme_id, password="p1")
        one.login()
        page = one.get("/api/Customer")
        assert len(page.json()) == 5 and page.headers["X-Total-Pages"] == str(
            math.ceil(int(page.headers["X-Total-Count"]) / 5))
        assert one.get("/api/Customer", {"Filters": "nosuch==1"}).status_code == 400
        two = Api(url, scheme=tenants[1].scheme_id, email="b@brand.test", password="p2")
        two.login()
        assert two.ok("/api/Customer") == []
        with FakeLoyaleControl(url) as ctl:
            ctl.set_knobs(max_page_size=100)
            ctl.reset()
            assert ctl.knobs()["max_page_size"] == 5
            assert [s["name"] for s in ctl.schemes()] == ["One", "Fake Scheme"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
