"""`loyale-sync verify` against both fakes over HTTP, as a real subprocess: one line per check, a clear
failed line for each broken credential, the exit code, and nothing written to Klaviyo."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.loyale_control import FakeLoyaleControl
from fakes.serving import free_port
from tests.harness import REPO, sync_env, write_tenants_file
from tests.integration.scenario import build_scenario, private_key

ALL_BUT_SUBSCRIPTIONS = ["accounts:read", "profiles:read", "profiles:write", "lists:read", "lists:write"]
READ_ONLY = ["accounts:read", "profiles:read", "lists:read"]
ALL_BUT_ACCOUNTS = ["profiles:read", "profiles:write", "subscriptions:write", "lists:read", "lists:write",
                    "events:write"]
ALL_BUT_EVENTS = ["accounts:read", "profiles:read", "profiles:write", "subscriptions:write", "lists:read",
                  "lists:write"]


def cli(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s)


def brand(loyale: FakeLoyaleControl, klaviyo: FakeKlaviyoControl, scopes: list[str] | None = None,
          **overrides: Any) -> dict[str, Any]:
    """A tenants-file entry for a new scheme and a new Klaviyo account whose key holds `scopes` (all if None)."""
    scheme = loyale.create_scheme(customers=3)
    key = private_key()
    klaviyo.add_account(keys=[key if scopes is None else {"key": key, "scopes": scopes}])
    return {"loyale_base_url": loyale.base_url, "loyale_scheme_id": scheme["scheme_id"],
            "loyale_admin_email": scheme["admin_email"], "loyale_admin_password": scheme["admin_password"],
            "klaviyo_base_url": klaviyo.base_url, "klaviyo_private_key": key, **overrides}


def sections(stdout: str) -> dict[str, list[str]]:
    """Output lines per tenant (the lines under `tenant <id>`)."""
    found: dict[str, list[str]] = {}
    current: list[str] = found.setdefault("", [])
    for line in stdout.splitlines():
        if line.startswith("tenant "):
            current = found.setdefault(line.split()[1], [])
        else:
            current.append(line.strip())
    return found


def line(lines: list[str], start: str) -> str:
    matching = [entry for entry in lines if entry.startswith(start)]
    assert len(matching) == 1, f"no single line starting {start!r} in:\n" + "\n".join(lines)
    return matching[0]


def test_a_good_tenant_passes_every_check_and_nothing_is_written(loyale, klaviyo, redis_url):
    """Given a tenant whose Loyale admin and full-access Klaviyo key are right, when verify runs, then every
    check is ✓ (Loyale, the key's account, each scope), the exit code is 0, and Klaviyo's profiles are as
    they were: every probe that could write was refused by validation."""
    scenario = build_scenario(loyale, klaviyo, "good", customers=12, merge_customers=True)
    before = klaviyo.profiles(account_id=scenario.account_id)
    env = sync_env(redis_url, write_tenants_file({"good": scenario.tenant_config()}))

    result = cli(env, "verify")

    assert result.returncode == 0, result.stdout + result.stderr
    good = sections(result.stdout)["good"]
    listed = sum(1 for c in loyale.customers(scenario.scheme_id) if not c.get("deleted"))   # Loyale lists these
    assert line(good, "✓ loyale:").endswith(f"scheme {scenario.scheme_id} answers ({listed} customers)")
    assert f"account {scenario.account_id}" in line(good, "✓ klaviyo key:")
    for scope in ("profiles:read", "profiles:write", "subscriptions:write", "lists:write", "lists:read",
                  "events:write"):
        line(good, f"✓ scope {scope}: held")
    assert not any(entry.startswith(("✗", "!", "-")) for entry in good)
    assert line(good, "✓ loyale levels:").startswith("✓ loyale levels: GET /api/Level answers (")
    assert "all 11 checks passed" in result.stdout
    assert klaviyo.profiles(account_id=scenario.account_id) == before
    writes = [e for e in klaviyo.request_log() if e["method"] in ("POST", "PATCH")]
    assert writes and all(400 <= e["status"] < 500 for e in writes), writes


def test_each_broken_credential_fails_with_its_own_clear_line(loyale, klaviyo, redis_url, store):
    """Given tenants with a wrong key, a public key, keys missing scopes, an unreachable Loyale and a Loyale
    password that is wrong, when verify checks them all, then each gets a ✗ line that names the problem and
    the fix, the good tenant among them still passes, a paused tenant whose key is still wrong stays paused,
    and the exit code is 1 (no traceback)."""
    tenants = {
        "good": brand(loyale, klaviyo),
        "wrong-key": brand(loyale, klaviyo, klaviyo_private_key=private_key()),  # no such key in Klaviyo
        "public-key": brand(loyale, klaviyo, klaviyo_private_key="AbC123"),
        "no-subscriptions": brand(loyale, klaviyo, scopes=ALL_BUT_SUBSCRIPTIONS),
        "read-only": brand(loyale, klaviyo, scopes=READ_ONLY),
        "loyale-down": brand(loyale, klaviyo, loyale_base_url=f"http://127.0.0.1:{free_port()}"),
        "bad-password": brand(loyale, klaviyo, loyale_admin_password="not-the-password"),
    }
    env = sync_env(redis_url, write_tenants_file(tenants))
    store.pause_tenant("wrong-key", "Klaviyo rejected the private API key")

    result = cli(env, "verify")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    out = sections(result.stdout)
    assert line(out[""], "✓ redis:")
    assert not any(entry.startswith("✗") for entry in out["good"])

    wrong = line(out["wrong-key"], "✗ klaviyo key:")
    assert "the key is wrong or revoked" in wrong and "Create Private API Key" in wrong
    line(out["wrong-key"], "- klaviyo scopes: not checked")
    line(out["wrong-key"], "✓ loyale:")
    assert "it resumes the tenant once every check passes" in line(out["wrong-key"], "✗ paused:")
    assert store.tenant_paused("wrong-key") is not None

    public = line(out["public-key"], "✗ configuration:")
    assert "6-character public API key" in public and "Create Private API Key" in public

    no_subscriptions = out["no-subscriptions"]
    assert "missing" in line(no_subscriptions, "✗ scope subscriptions:write:")
    assert "scopes cannot be added to a key" in line(no_subscriptions, "✗ scope subscriptions:write:")
    for held in ("profiles:read", "profiles:write", "lists:write", "lists:read"):
        line(no_subscriptions, f"✓ scope {held}: held")

    read_only = out["read-only"]
    line(read_only, "✓ scope profiles:read: held")
    line(read_only, "✗ scope profiles:write: missing")
    line(read_only, "✗ scope subscriptions:write: missing")
    line(read_only, "- scope lists:write: not checked: its probe also needs profiles:write")
    line(read_only, "✓ scope lists:read: held")

    down = line(out["loyale-down"], "✗ loyale:")
    assert "did not answer" in down and "connection to Loyale failed" in down and "check loyale_base_url" in down
    line(out["loyale-down"], "✓ klaviyo key:")

    assert "check loyale_admin_email and loyale_admin_password" in line(out["bad-password"], "✗ loyale:")
    assert "checks failed" in result.stdout


def test_a_loyale_without_the_level_route_is_reported_as_a_warning_that_names_it(loyale, klaviyo, redis_url):
    """Given a Loyale that answers 404 to GET /api/Level, when verify runs, then a warning line says the level
    route is missing and what that means (customers sync without Levels); the customer list was not read
    as a missing customer, the other checks pass and the exit code is 0."""
    loyale.set_knobs(missing_routes=["/api/Level"])
    env = sync_env(redis_url, write_tenants_file({"nolevels": brand(loyale, klaviyo)}))

    result = cli(env, "verify")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = sections(result.stdout)["nolevels"]
    line(lines, "✓ loyale:")
    warning = line(lines, "! loyale levels:")
    assert "no level route (404 to GET /api/Level)" in warning and "sync without Levels" in warning
    assert not any(entry.startswith("✗") for entry in lines)
    assert "(1 warning)" in result.stdout


def test_tenant_option_and_exit_codes(loyale, klaviyo, redis_url, store):
    """--tenant checks one tenant only: a good one exits 0 although another is broken (and is resumed if it
    was paused), a key without accounts:read is only a warning (exit 0), an unknown tenant exits 2 (a failed
    check exits 1: above)."""
    tenants = {"good": brand(loyale, klaviyo), "no-accounts": brand(loyale, klaviyo, scopes=ALL_BUT_ACCOUNTS),
               "public-key": brand(loyale, klaviyo, klaviyo_private_key="AbC123")}
    env = sync_env(redis_url, write_tenants_file(tenants))
    store.pause_tenant("good", "Klaviyo rejected the private API key")

    good = cli(env, "verify", "--tenant", "good")
    assert good.returncode == 0, good.stdout + good.stderr
    assert set(sections(good.stdout)) == {"", "good"}
    assert "resumed" in line(sections(good.stdout)["good"], "✓ paused:")
    assert store.tenant_paused("good") is None

    no_accounts = cli(env, "verify", "--tenant", "no-accounts")
    assert no_accounts.returncode == 0, no_accounts.stdout + no_accounts.stderr
    lines = sections(no_accounts.stdout)["no-accounts"]
    assert "lacks accounts:read" in line(lines, "! klaviyo key:")
    line(lines, "✓ scope subscriptions:write: held")
    assert "(1 warning)" in no_accounts.stdout

    unknown = cli(env, "verify", "--tenant", "nope")
    assert unknown.returncode == 2 and "no tenant 'nope'" in unknown.stderr


def test_a_key_without_events_write_is_a_warning_and_one_with_it_starts_stopped_events_again(loyale, klaviyo,
                                                                                              redis_url, store):
    """Loyalty events need events:write: without it the profiles still sync (a warning, exit 0); a tenant
    with events off does not need it; a key that holds it lifts the stop the workers set after a 403."""
    tenants = {"no-events": brand(loyale, klaviyo, scopes=ALL_BUT_EVENTS),
               "events-off": brand(loyale, klaviyo, scopes=ALL_BUT_EVENTS, events=False),
               "fixed": brand(loyale, klaviyo)}
    env = sync_env(redis_url, write_tenants_file(tenants))
    store.block_events("fixed", "Klaviyo refused the events (403)", 3600)

    result = cli(env, "verify")

    assert result.returncode == 0, result.stdout + result.stderr
    out = sections(result.stdout)
    missing = line(out["no-events"], "! scope events:write:")
    assert "missing" in missing and "events = false" in missing
    line(out["events-off"], "- scope events:write: not needed")
    assert "start again" in line(out["fixed"], "✓ scope events:write: held")
    assert store.events_blocked("fixed") is None
