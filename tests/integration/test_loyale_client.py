"""LoyaleClient against the fake Loyale over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import SecretStr

from producers.loyale import CustomerNotFound, LoyaleClient
from worker.errors import TenantFatalError
from worker.mapping import map_customer
from worker.messages import snapshot_json
from worker.models import parse_customer


@pytest.fixture
def scheme(loyale):
    return loyale.create_scheme(customers=250, seed=3)


def client(loyale, scheme, **overrides) -> LoyaleClient:
    values = dict(tenant="t", base_url=loyale.base_url, scheme_id=scheme["scheme_id"],
                  admin_email=scheme["admin_email"], admin_password=SecretStr(scheme["admin_password"]),
                  max_wait_s=0.2)
    values.update(overrides)
    return LoyaleClient(httpx.Client(timeout=10), **values)


def test_pages_through_every_customer_once(loyale, scheme):
    listed = [c["id"] for page in client(loyale, scheme).pages(sorts="createdDate") for c in page.customers]
    visible = [c["id"] for c in loyale.customers(scheme["scheme_id"]) if not c.get("deleted")]
    assert len(listed) == len(set(listed)) == len(visible)
    assert set(listed) == set(visible)


def test_a_throttled_or_failing_page_is_retried_and_paging_resumes_there(loyale, scheme):
    """Loyale answering 429 and 500 in the middle of paging: no customer skipped, none read twice."""
    lc = client(loyale, scheme)
    pages = lc.pages(sorts="createdDate")
    first = next(pages)
    loyale.set_knobs(fail_next=[429, 500, 503])
    rest = [c["id"] for page in pages for c in page.customers]
    ids = [c["id"] for c in first.customers] + rest
    assert len(ids) == len(set(ids)) == len([c for c in loyale.customers(scheme["scheme_id"]) if not c.get("deleted")])
    assert loyale.requests()["by_status"].get("429") == 1


def test_an_expired_token_is_refreshed_once(loyale, scheme):
    lc = client(loyale, scheme)
    first_id = next(lc.pages()).customers[0]["id"]
    loyale.expire_tokens()
    assert lc.customer(first_id)["id"] == first_id
    assert loyale.requests()["by_route"].get("POST /api/AdminToken") == 2


def test_wrong_password_stops_the_tenant_with_a_clear_error(loyale, scheme):
    with pytest.raises(TenantFatalError, match="refused the admin login.*loyale_admin_password"):
        client(loyale, scheme, admin_password=SecretStr("wrong")).customer("x")


def test_unknown_customer(loyale, scheme):
    with pytest.raises(CustomerNotFound):
        client(loyale, scheme).customer("00000000-0000-0000-0000-000000000000")


def test_snapshot_resolves_level_names_and_keeps_only_public_fields(loyale, scheme):
    lc = client(loyale, scheme)
    names = {lv["id"]: lv["name"] for lv in scheme["levels"]}
    with_levels = next(c for c in loyale.customers(scheme["scheme_id"]) if c.get("Levels"))
    snapshot = lc.snapshot(with_levels)
    assert snapshot.level_names == [names[lv["levelId"]] for lv in with_levels["Levels"]]
    assert "barCode" not in snapshot_json(snapshot) and "Levels" not in snapshot_json(snapshot)
    with_internal = next(c for c in loyale.customers(scheme["scheme_id"])
                         if any(f["internal"] for f in c.get("additionalCustomerFields") or []))
    keys = {f["key"] for f in snapshot_json(lc.snapshot(with_internal))["additionalCustomerFields"]}
    assert keys == {f["key"] for f in with_internal["additionalCustomerFields"] if not f["internal"]}
    assert snapshot.points_balance == with_levels["balance"]["pointsValue"]


def test_snapshot_never_forwards_a_field_whose_internal_flag_is_not_plainly_false(loyale, scheme):
    """A flag of "true" (text) or 2 is not `false`: the value does not travel, and the worker does not
    sync the field; odd shapes of `Levels` do not break the snapshot."""
    lc = client(loyale, scheme)
    # a plain email: the fake's generated customers include hostile ones, and this test is about the flags
    raw = {**loyale.customers(scheme["scheme_id"])[0], "email": "flags@example.com", "Levels": 7,
           "additionalCustomerFields": [
               {"key": "Notes", "value": "owes us money", "internal": "true"},
               {"key": "Odd", "value": "x", "internal": 2},
               {"key": "Colour", "value": "red", "internal": None},
           ]}
    snapshot = lc.snapshot(raw)
    assert snapshot.levels_unknown is True and snapshot.level_names == []
    assert "owes us money" not in json.dumps(snapshot_json(snapshot))
    customer, warnings = parse_customer(snapshot)
    mapped = map_customer(customer, None)
    assert "properties.Notes" not in mapped.fields and "properties.Odd" not in mapped.fields
    assert mapped.fields["properties.Colour"] == "red"
    assert any("Odd" in w or "internal" in w for w in warnings + mapped.warnings)
