"""The webhook intake app (producers/webhooks.py) in process, through Starlette's TestClient: the
secret in the URL, bodies it cannot read, each Loyale topic's payload, and the hints it asks to enqueue.
(tests/integration/test_incremental.py has the end to end: the fake Loyale posting to the served app.)

Webhooks caused by our own Loyale admin login are synced by default: this service never writes to
Loyale, so such an event is a staff edit made with the same login. Dropping them is an opt-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from producers.webhooks import MAX_BODY_BYTES, create_app
from worker.settings import TenantConfig

ADMIN = "Integrations@Acme.example"
TOKEN = "t" * 40


def tenant(**overrides: Any) -> TenantConfig:
    return TenantConfig(**{"id": "acme", "loyale_scheme_id": "8f4089bc-91b6-4078-8403-cfd07b285cdb",
                           "loyale_admin_email": ADMIN, "loyale_admin_password": "secret",
                           "klaviyo_private_key": "pk_" + "ab12" * 9, "webhook_token": TOKEN, **overrides})


def post(config: TenantConfig, payload: dict[str, Any]) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    hints: list[tuple[str, str]] = []
    with TestClient(create_app({config.id: config}, lambda t, c, _events: hints.append((t, c)))) as client:
        response = client.post(f"/webhooks/loyale/{TOKEN}", json=payload)
    return response.status_code, response.json(), hints


class Intake:
    """The intake app for two tenants, with the hints it asked to enqueue."""

    OTHER_TOKEN = "o" * 40

    def __init__(self) -> None:
        self.hints: list[tuple[str, str]] = []
        tenants = [tenant(), tenant(id="other", webhook_token=self.OTHER_TOKEN),
                   tenant(id="silent", webhook_token=None)]
        app = create_app({t.id: t for t in tenants}, lambda t, c, _events: self.hints.append((t, c)))
        self.client = TestClient(app, base_url="http://intake")

    def post(self, payload: Any = None, *, token: str = TOKEN, content: bytes | None = None,
             topic: str | None = None) -> tuple[int, dict[str, Any]]:
        params = {"topic": topic} if topic else None
        if content is not None:
            response = self.client.post(f"/webhooks/loyale/{token}", content=content, params=params)
        else:
            response = self.client.post(f"/webhooks/loyale/{token}", json=payload, params=params)
        return response.status_code, response.json()


@pytest.fixture
def intake() -> Iterator[Intake]:
    made = Intake()
    with made.client:
        yield made


# --- the secret in the URL ---------------------------------------------------------------------------


def test_the_token_picks_the_tenant_and_an_unknown_one_is_404_with_nothing_enqueued(intake):
    assert intake.post({"id": "c-1", "email": "a@x.com"}) == (202, {"accepted": 1})
    assert intake.post({"id": "c-2", "email": "b@x.com"}, token=Intake.OTHER_TOKEN) == (202, {"accepted": 1})
    for wrong in ("t" * 39, "t" * 41, "T" * 40, "nope", TOKEN[:-1] + "u"):
        assert intake.post({"id": "c-3", "email": "c@x.com"}, token=wrong) == (404, {"error": "unknown webhook URL"})
    assert intake.hints == [("acme", "c-1"), ("other", "c-2")]


def test_only_post_is_accepted_and_health_counts_the_tenants_with_a_token(intake):
    assert intake.client.get(f"/webhooks/loyale/{TOKEN}").status_code == 405
    health = intake.client.get("/health")
    assert health.status_code == 200 and health.json() == {"ok": True, "tenants": 2}
    assert intake.hints == []


# --- bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"<xml/>"])
def test_a_body_that_is_not_json_is_acknowledged_and_dropped(intake, content):
    """Loyale retries any non-2xx for hours; a body that can never be read is acknowledged (202)."""
    status, body = intake.post(content=content)
    assert status == 202 and body == {"accepted": 0, "ignored": "body is not JSON"}
    assert intake.hints == []


def test_a_body_over_the_limit_is_413_before_it_is_read(intake):
    status, body = intake.post(content=b"[" + b" " * MAX_BODY_BYTES + b"]")
    assert status == 413 and body == {"error": "payload too large"} and intake.hints == []


@pytest.mark.parametrize("content", [b"", b"null", b"[]", b'"c-1"', b"42", b"{}", b'{"id": "lvl-1", "name": "Gold"}'])
def test_json_that_names_no_customer_is_accepted_with_nothing_enqueued(intake, content):
    status, body = intake.post(content=content)
    assert status == 202 and body == {"accepted": 0} and intake.hints == []


# --- topics: which customers a post names ----------------------------------------------------------------


@pytest.mark.parametrize(("topic", "payload", "hinted"), [
    ("customer-created", {"id": "c-1", "email": "a@x.com", "marketingSub": True}, ["c-1"]),
    ("customer-updated", {"id": "c-1", "firstName": "Jane"}, ["c-1"]),
    ("customer-deleted", {"id": "c-1", "email": "a@x.com", "deleted": True}, ["c-1"]),
    ("transaction", {"id": "tx-9", "customerId": "c-1", "value": 12.5}, ["c-1"]),
    ("additional-field", {"id": "af-1", "customerId": "c-1", "key": "ShoeSize", "value": "38"}, ["c-1"]),
    ("points-transfer", {"id": "pt-1", "sourceCustomerId": {"id": "c-1"}, "targetCustomerId": {"id": "c-2"}},
     ["c-1", "c-2"]),
    ("points-transfer", {"id": "pt-2", "sourceCustomerId": "c-1", "targetCustomerId": "c-2"}, ["c-1", "c-2"]),
    ("points-transfer", {"id": "pt-3", "sourceCustomerId": "c-1", "targetCustomerId": "c-1"}, ["c-1"]),
])
def test_each_topic_enqueues_a_hint_per_customer_it_names_once(intake, topic, payload, hinted):
    status, body = intake.post(payload, topic=topic)
    assert status == 202 and body == {"accepted": len(hinted)}
    assert intake.hints == [("acme", c) for c in hinted]


def test_a_redelivered_post_is_enqueued_again_the_sync_being_idempotent(intake):
    for _ in range(2):
        assert intake.post({"id": "c-1", "email": "a@x.com"}) == (202, {"accepted": 1})
    assert intake.hints == [("acme", "c-1")] * 2


def test_an_enqueue_that_fails_is_a_5xx_so_loyale_posts_again(intake):
    def broken(tenant_id: str, customer_id: str, events: list[dict[str, Any]]) -> None:
        raise ConnectionError("broker down")

    app = create_app({"acme": tenant()}, broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(f"/webhooks/loyale/{TOKEN}", json={"id": "c-1", "email": "a@x.com"})
    assert response.status_code == 500


# --- loyalty events: the facts a post carries to the customer's sync ---------------------------------------

TX = {"id": "tx-9", "customerId": "c-1", "schemeId": "s", "pointValue": 120, "transactionType": 0,
      "cachedResultantPointValue": 1320, "transactionDate": "2026-03-01T10:00:00Z"}
COUPON = {"id": "cc-1", "customerId": "c-1", "couponId": "k-1", "usesLeft": 0, "isUsed": True,
          "createdDate": "2026-03-01T10:00:00Z", "updatedDate": "2026-03-02T10:00:00Z", "coupon": {"name": "10% off"}}


@pytest.mark.parametrize(("topic", "payload", "metrics"), [
    ("2", TX, {"c-1": ["Loyale Points Earned"]}),
    (None, TX, {"c-1": ["Loyale Points Earned"]}),                       # told by its shape
    ("6", COUPON, {"c-1": ["Loyale Coupon Issued"]}),
    ("7", COUPON, {"c-1": ["Loyale Coupon Used"]}),
    (None, COUPON, {"c-1": ["Loyale Coupon Used"]}),                     # isUsed: a use
    ("10", {"sourceCustomerId": {"id": "c-1"}, "targetCustomerId": {"id": "c-2"},
            "createdDate": "2026-03-01T10:00:00Z"}, {"c-1": ["Loyale Points Transferred"],
                                                     "c-2": ["Loyale Points Transferred"]}),
    ("0", {"id": "c-1", "email": "a@x.com", "updatedDate": "2026-03-01T10:00:00Z"}, {"c-1": ["Loyale Joined Scheme"]}),
    ("3", {"id": "c-1", "email": "a@x.com", "updatedDate": "2026-03-01T10:00:00Z"}, {"c-1": ["Loyale Left Scheme"]}),
    ("1", {"id": "c-1", "email": "a@x.com", "updatedDate": "2026-03-01T10:00:00Z"}, {"c-1": []}),
    ("2", {**TX, "pointValue": 0}, {"c-1": []}),                         # a fact that makes no event
])
def test_a_post_carries_its_loyalty_events_to_the_hint_of_the_customer_they_are_about(topic, payload, metrics):
    carried: list[tuple[str, list[str]]] = []
    app = create_app({"acme": tenant()}, lambda t, c, events: carried.append((c, [e["metric"] for e in events])))
    with TestClient(app) as client:
        response = client.post(f"/webhooks/loyale/{TOKEN}", json=payload, params={"topic": topic} if topic else None)
    assert response.status_code == 202
    assert dict(carried) == metrics


def test_a_redelivered_post_carries_the_same_event_and_a_tenant_without_events_none():
    carried: list[list[dict[str, Any]]] = []
    for config in (tenant(), tenant(), tenant(events=False)):
        with TestClient(create_app({"acme": config}, lambda t, c, events: carried.append(events))) as client:
            client.post(f"/webhooks/loyale/{TOKEN}", json=TX, params={"topic": "2"})
    assert carried[0] == carried[1] and carried[0][0]["unique_id"] == "loyale-transaction-tx-9"
    assert carried[2] == []


def staff_edit(by: str) -> dict[str, Any]:
    return {"id": "c-1", "email": "jane@example.com", "marketingSub": False, "updatedBy": by}


def test_a_webhook_caused_by_our_own_admin_login_is_synced_by_default():
    """Given a tenant with default settings, when Loyale posts a customer update whose updatedBy is the
    tenant's own admin email (a staff member using the shared login), then it becomes a hint."""
    assert tenant().ignore_own_admin_webhooks is False
    status, body, hints = post(tenant(), staff_edit("integrations@acme.example"))
    assert status == 202 and body == {"accepted": 1}
    assert hints == [("acme", "c-1")]


@pytest.mark.parametrize("own", [None, "robot@acme.example"])
def test_dropping_our_own_admin_webhooks_is_an_opt_in(own):
    """Given a tenant that opted in (ignore_own_admin_webhooks), when the post names its own admin
    (loyale_own_admin_email, or loyale_admin_email by default) it is acknowledged and dropped; a change
    by anyone else still becomes a hint."""
    config = tenant(ignore_own_admin_webhooks=True, loyale_own_admin_email=own)
    status, body, hints = post(config, staff_edit((own or ADMIN).upper()))
    assert status == 202 and body["accepted"] == 0 and "admin user" in body["ignored"]
    assert hints == []
    status, body, hints = post(config, staff_edit("someone.else@acme.example"))
    assert body == {"accepted": 1} and hints == [("acme", "c-1")]


def test_single_tenant_environment_variables_carry_the_opt_in(monkeypatch):
    from worker.settings import Settings

    monkeypatch.setenv("SYNC_TENANT_LOYALE_SCHEME_ID", "8f4089bc-91b6-4078-8403-cfd07b285cdb")
    monkeypatch.setenv("SYNC_TENANT_LOYALE_ADMIN_EMAIL", ADMIN)
    monkeypatch.setenv("SYNC_TENANT_LOYALE_ADMIN_PASSWORD", "secret")
    monkeypatch.setenv("SYNC_TENANT_KLAVIYO_PRIVATE_KEY", "pk_" + "ab12" * 9)
    assert Settings(_env_file=None).load_tenants()["default"].ignore_own_admin_webhooks is False
    monkeypatch.setenv("SYNC_TENANT_IGNORE_OWN_ADMIN_WEBHOOKS", "true")
    assert Settings(_env_file=None).load_tenants()["default"].ignore_own_admin_webhooks is True
