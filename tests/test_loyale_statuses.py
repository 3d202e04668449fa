"""The Loyale client's reading of statuses and the snapshot it builds, against a status table
(httpx.MockTransport): only a 404 to GET /api/Customer/{id} means the customer is gone; a failed level
lookup leaves levels unknown (never suppresses, never clears); `schemes` counts only when it proves a
departure; balances only as Loyale sends them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from producers.loyale import CustomerNotFound, LoyaleClient, LoyaleRouteMissing
from tests.builders import klaviyo_profile, loyale_payload
from worker.mapping import map_customer
from worker.merge import Match, Memory, Policy, plan_sync
from worker.messages import read_snapshot, snapshot_json
from worker.models import parse_customer
from worker.outcomes import Outcome

SCHEME = "8f4089bc-91b6-4078-8403-cfd07b285cdb"
OTHER_SCHEME = "11111111-2222-3333-4444-555555555555"
GOLD = "0d1c0000-0000-0000-0000-000000000001"
SILVER = "0d1c0000-0000-0000-0000-000000000002"


def not_found(what: str) -> httpx.Response:
    return httpx.Response(404, json={"errors": [f"{what} not found."], "code": 404, "errorId": "Not Found"})


class Loyale:
    """A status table: the routes this Loyale has, and a log of the requests it saw."""

    def __init__(self) -> None:
        self.customers: dict[str, dict[str, Any]] = {}
        self.levels: list[dict[str, Any]] | None = [{"id": GOLD, "name": "Gold"}, {"id": SILVER, "name": "Silver"}]
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen.append(f"{request.method} {path}")
        if path == "/api/AdminToken":
            return httpx.Response(200, json={"token": "tok"})
        if path == "/api/Level":
            if self.levels is None:
                return not_found("Route")
            return httpx.Response(200, json=self.levels, headers={"X-Total-Pages": "1"})
        if path == "/api/Customer":
            return httpx.Response(200, json=list(self.customers.values()), headers={"X-Total-Pages": "1"})
        if path.startswith("/api/Customer/"):
            found = self.customers.get(path.rsplit("/", 1)[1])
            return httpx.Response(200, json=found) if found else not_found("Customer")
        return not_found("Route")

    def asked(self, route: str) -> int:
        return sum(1 for s in self.seen if s == f"GET {route}")


@pytest.fixture
def loyale() -> Loyale:
    return Loyale()


@pytest.fixture
def client(loyale: Loyale) -> Callable[..., LoyaleClient]:
    made: list[httpx.Client] = []

    def make(**kw: Any) -> LoyaleClient:
        http = httpx.Client(transport=httpx.MockTransport(loyale))
        made.append(http)
        return LoyaleClient(http, tenant="acme", base_url="https://loyale.test", scheme_id=SCHEME,
                            admin_email="admin@acme.example", admin_password=SecretStr("pw"), max_attempts=1, **kw)

    yield make
    for http in made:
        http.close()


def raw_customer(**overrides: Any) -> dict[str, Any]:
    customer = {"id": "c-1", "email": "jane@example.com", "marketingSub": True, "deleted": False, "onHold": False,
                "updatedDate": "2026-01-02T10:00:00Z", "Levels": [{"customerId": "c-1", "levelId": GOLD}],
                "balance": {"pointsValue": 1200, "monetaryValue": 12.0},
                "schemes": [{"id": SCHEME, "name": "Acme"}]}
    customer.update(overrides)
    return customer


# --- 404s -------------------------------------------------------------------------------------------


def test_only_a_404_to_get_customer_by_id_means_the_customer_is_gone(loyale, client):
    with pytest.raises(CustomerNotFound):
        client().customer("nobody")


@pytest.mark.parametrize("path", ["/api/Level", "/api/PointBalance", "/api/Customer/c-1/Nothing", "/api/Nope"])
def test_a_404_to_any_other_route_is_a_missing_route_that_names_it(loyale, client, path):
    loyale.levels = None
    with pytest.raises(LoyaleRouteMissing) as raised:
        client().get(path)
    assert not isinstance(raised.value, CustomerNotFound)
    message = str(raised.value)
    assert f"GET {path}" in message and "loyale_base_url" in message and "https://loyale.test" in message


def test_a_customer_list_that_answers_404_is_a_missing_route_not_a_missing_customer(client):
    broken = client()
    broken.login()
    broken._base = "https://loyale.test/wrong-prefix"   # every route under it is missing
    with pytest.raises(LoyaleRouteMissing, match="GET /api/Customer"):
        broken.page(1)


# --- levels ---------------------------------------------------------------------------------------


def test_a_missing_level_route_syncs_the_customer_without_levels_and_never_as_gone(loyale, client):
    """Given a Loyale without /api/Level, when a customer holding a level is snapshotted, then the
    snapshot marks its levels unknown (no levelNames), it is not deleted, and the plan is an ordinary
    sync that leaves Klaviyo's Levels alone (never a suppression, never a clear)."""
    loyale.levels = None
    loyale.customers["c-1"] = raw_customer()
    reader = client()
    payload = reader.snapshot(reader.customer("c-1"))
    assert payload.levels_unknown is True and payload.level_names == []
    assert payload.deleted is False and payload.marketing_sub is True

    customer, _ = parse_customer(payload)
    assert customer.levels_unknown and customer.opted_in
    mapped = map_customer(customer)
    assert "properties.Levels" not in mapped.fields and "properties.Levels" not in mapped.cleared
    existing = klaviyo_profile(external_id="c-1", properties={"Levels": ["Gold"]})
    plan = plan_sync(customer, mapped, Match(by_email=existing, by_external_id=existing),
                     Policy(merge_customers=True), Memory())
    assert plan.outcome in (Outcome.UPDATED, Outcome.UNCHANGED)
    assert all(change.field != "properties.Levels" for change in plan.changes)


def test_a_failed_level_lookup_is_not_asked_again_for_every_customer(loyale, client):
    loyale.levels = None
    reader = client()
    for n in range(5):
        assert reader.snapshot(raw_customer(id=f"c-{n}")).levels_unknown is True
    assert loyale.asked("/api/Level") == 1


def test_last_good_level_names_are_reused_when_the_level_route_goes_missing(loyale, client):
    reader = client()
    assert reader.snapshot(raw_customer()).level_names == ["Gold"]
    loyale.levels = None
    assert reader.snapshot(raw_customer()).level_names == ["Gold"]            # cached names cover it
    silver = raw_customer(Levels=[{"levelId": SILVER}, {"levelId": "0d1c-new"}])  # an id not cached
    assert reader.snapshot(silver).levels_unknown is True
    assert reader.snapshot(silver).level_names == []


def test_no_levels_in_loyale_is_an_empty_list_that_the_mapping_may_clear(client):
    """Levels [] means the customer has none: `levelNames: []`, and the mapping lists Levels as
    cleared (Merge Customers on may unset it). An absent or null Levels is unknown, never cleared."""
    reader = client()
    payload = reader.snapshot(raw_customer(Levels=[]))
    assert payload.level_names == [] and payload.levels_unknown is False
    assert "properties.Levels" in map_customer(parse_customer(payload)[0]).cleared
    for raw in (raw_customer(Levels=None), {k: v for k, v in raw_customer().items() if k != "Levels"}):
        payload = reader.snapshot(raw)
        assert payload.levels_unknown is True and payload.level_names == []
        mapped = map_customer(parse_customer(payload)[0])
        assert "properties.Levels" not in mapped.fields and "properties.Levels" not in mapped.cleared


def test_the_snapshot_carries_when_each_level_was_reached_and_reads_back_from_the_queue(client):
    """`detailedLevels[].createdDate` times a `Loyale Level Reached` event (worker/events.py)."""
    reader = client()
    payload = reader.snapshot(raw_customer(detailedLevels=[
        {"levelId": GOLD, "createdDate": "2026-01-02T09:30:00Z"}, {"levelId": "unknown-id", "createdDate": "x"}]))
    assert payload.level_since == {"Gold": datetime(2026, 1, 2, 9, 30, tzinfo=UTC)}
    assert read_snapshot(snapshot_json(payload)).level_since == payload.level_since   # type: ignore[union-attr]
    assert reader.snapshot(raw_customer()).level_since == {}


def test_a_payload_without_level_names_reads_as_levels_unknown():
    """Fail safe for payloads queued before levelsUnknown existed: no levelNames is not "no levels"."""
    customer, _ = parse_customer({k: v for k, v in loyale_payload().items() if k != "levelNames"})
    assert customer.levels_unknown
    assert not parse_customer(loyale_payload())[0].levels_unknown
    assert "properties.Levels" not in map_customer(customer).cleared


# --- balances -------------------------------------------------------------------------------------


def test_only_the_balance_keys_loyale_sends_are_in_the_snapshot(client):
    reader = client()
    full = reader.snapshot(raw_customer())
    assert (full.points_balance, full.monetary_balance) == (1200, 12.0)
    only_points = reader.snapshot(raw_customer(balance={"pointsValue": 0}))
    assert only_points.points_balance == 0 and only_points.monetary_balance is None
    assert reader.snapshot(raw_customer(balance={"pointsValue": None})).points_balance is None
    none = reader.snapshot(raw_customer(balance=None))
    assert none.points_balance is None and none.monetary_balance is None


# --- schemes --------------------------------------------------------------------------------------


def test_a_customer_whose_schemes_no_longer_hold_the_tenants_scheme_has_left_and_is_suppressed(client):
    """Given Loyale sends `schemes` with only another scheme, the customer left ours: the snapshot says
    leftScheme, consent is withdrawn, and an existing profile is suppressed (as any opt-out)."""
    payload = client().snapshot(raw_customer(schemes=[{"id": OTHER_SCHEME.upper(), "name": "Other"}]))
    assert payload.left_scheme is True
    customer, _ = parse_customer(payload)
    assert customer.marketing_sub is True and not customer.opted_in
    existing = klaviyo_profile(external_id="c-1")
    plan = plan_sync(customer, map_customer(customer), Match(by_email=existing, by_external_id=existing),
                     Policy(merge_customers=False), Memory())
    assert plan.outcome == Outcome.SUPPRESSED and "left the scheme" in plan.reason


@pytest.mark.parametrize("schemes", ["absent", [], None, [{"name": "no id"}], [{"id": SCHEME.upper()}]])
def test_an_absent_or_empty_schemes_list_never_counts_as_left(client, schemes):
    raw = raw_customer() if schemes == "absent" else raw_customer(schemes=schemes)
    if schemes == "absent":
        del raw["schemes"]
    payload = client().snapshot(raw)
    assert payload.left_scheme is False
    assert parse_customer(payload)[0].opted_in
