"""Settings and tenants: clear errors for every way the configuration can be wrong."""

from __future__ import annotations

import pytest

from tests.harness import REPO, write_tenants_file
from worker.errors import ConfigError
from worker.settings import Settings, load_tenants_file

KEY = "pk_0123456789abcdef0123456789abcdef01"
BASE = {"loyale_scheme_id": "s", "loyale_admin_email": "a@b.c", "loyale_admin_password": "pw",
        "klaviyo_private_key": KEY}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("SYNC_"):
            monkeypatch.delenv(name)


def test_the_public_key_is_refused_with_where_to_get_a_private_one():
    path = write_tenants_file({"acme": {**BASE, "klaviyo_private_key": "AbC123"}})
    with pytest.raises(ConfigError, match="6-character public API key.*Create Private API Key"):
        load_tenants_file(path)


def test_a_key_that_is_not_a_private_key_is_refused():
    path = write_tenants_file({"acme": {**BASE, "klaviyo_private_key": "sk_live_123"}})
    with pytest.raises(ConfigError, match="starts with 'pk_'"):
        load_tenants_file(path)


def test_secrets_come_from_env_references_and_are_never_shown(monkeypatch):
    monkeypatch.setenv("ACME_KEY", KEY)
    tenant = load_tenants_file(write_tenants_file({"acme": {**BASE, "klaviyo_private_key": "env:ACME_KEY"}}))["acme"]
    assert tenant.klaviyo_private_key.get_secret_value() == KEY
    assert KEY not in repr(tenant) and KEY not in str(tenant)


def test_a_missing_env_reference_names_the_variable():
    path = write_tenants_file({"acme": {**BASE, "loyale_admin_password": "env:NOPE_NOT_SET"}})
    with pytest.raises(ConfigError, match="NOPE_NOT_SET, which is not set"):
        load_tenants_file(path)


def test_unknown_settings_in_a_tenant_are_typos_and_refused():
    path = write_tenants_file({"acme": {**BASE, "merge_customer": True}})
    with pytest.raises(ConfigError, match="merge_customer"):
        load_tenants_file(path)


def test_no_tenants_configured_says_how_to_configure_them():
    with pytest.raises(ConfigError, match="SYNC_TENANTS_FILE"):
        Settings().load_tenants()


def test_single_tenant_from_the_environment(monkeypatch):
    monkeypatch.setenv("SYNC_TENANT_LOYALE_SCHEME_ID", "scheme")
    monkeypatch.setenv("SYNC_TENANT_LOYALE_ADMIN_EMAIL", "a@b.c")
    monkeypatch.setenv("SYNC_TENANT_LOYALE_ADMIN_PASSWORD", "pw")
    monkeypatch.setenv("SYNC_TENANT_KLAVIYO_PRIVATE_KEY", KEY)
    monkeypatch.setenv("SYNC_TENANT_MERGE_CUSTOMERS", "true")
    tenants = Settings().load_tenants()
    assert tenants["default"].merge_customers is True and tenants["default"].loyale_scheme_id == "scheme"


def test_the_example_tenants_file_is_valid(monkeypatch):
    monkeypatch.setenv("ACME_LOYALE_PASSWORD", "pw")
    monkeypatch.setenv("ACME_KLAVIYO_PRIVATE_KEY", KEY)
    tenants = load_tenants_file(REPO / "tenants.example.toml")
    assert tenants["acme"].headroom == 0.2 and tenants["acme"].existing_profiles == "skip"


def test_every_setting_is_listed_in_env_example():
    listed = (REPO / ".env.example").read_text()
    missing = [f"SYNC_{name.upper()}" for name in Settings.model_fields if f"SYNC_{name.upper()}" not in listed]
    assert missing == []
