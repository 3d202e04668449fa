"""The webhook intake app (producers/webhooks.py) in process: which posts become hints.

Webhooks caused by our own Loyale admin login are synced by default: this service never writes to
Loyale, so such an event is a staff edit made with the same login. Dropping them is an opt-in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from producers.webhooks import create_app
from worker.settings import TenantConfig

ADMIN = "Integrations@Acme.example"
TOKEN = "t" * 40


def tenant(**overrides: Any) -> TenantConfig:
    return TenantConfig(id="acme", loyale_scheme_id="8f4089bc-91b6-4078-8403-cfd07b285cdb",
                        loyale_admin_email=ADMIN, loyale_admin_password="secret",
                        klaviyo_private_key="pk_" + "ab12" * 9, webhook_token=TOKEN, **overrides)


def post(config: TenantConfig, payload: dict[str, Any]) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    hints: list[tuple[str, str]] = []
    app = create_app({config.id: config}, lambda t, c: hints.append((t, c)))

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as client:
            return await client.post(f"/webhooks/loyale/{TOKEN}", json=payload)

    response = asyncio.run(call())
    return response.status_code, response.json(), hints


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
