"""`loyale-sync verify`: check each tenant's credentials before a sync needs them, one line per check.

For every tenant (or the one named by --tenant):

    configuration   the tenant's entry is valid; a public Klaviyo key (6 characters) is refused here
    loyale          the admin login works and the scheme answers a one-customer page
    loyale levels   the level route answers (without it customers sync without `Levels`)
    klaviyo key     Klaviyo accepts the private key (GET /api/accounts) and names its account
    scope ...       each scope the sync needs, probed with a request that changes nothing
                    (`worker.klaviyo.SCOPE_PROBES`: Klaviyo checks scopes before it reads a request)
    paused          a tenant paused after Klaviyo refused its key is resumed once all its checks pass

Before the tenants, Redis is checked: every Klaviyo request goes through the fleet's rate limiter
there, as the workers' requests do (GET /api/accounts allows 1/s), and this command waits for it inline.
Nothing is written to Loyale or Klaviyo (in Redis: the limiter's counts, the key's cached account, and
a resumed tenant). Exit code: 0 when every check passed, 1 when one failed, 2 when no tenant could be
read at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Annotated, TypeVar

import redis
import typer
from rich.markup import escape

from cli import context as ctx
from producers.loyale import LoyaleClient, LoyaleRouteMissing
from worker.errors import ConfigError, Deferred, RetryableError, TenantFatalError, Throttled
from worker.klaviyo import (
    BULK_CREATE_EVENTS,
    BULK_IMPORT,
    GET_BULK_IMPORT,
    GET_PROFILES,
    UNSUPPRESS,
    UPDATE_PROFILE,
    KlaviyoClient,
)
from worker.ratelimit import LimiterUnavailable
from worker.retry import Retry, RetryPolicy, decide
from worker.runtime import Runtime
from worker.settings import TenantConfig
from worker.store import Store

T = TypeVar("T")

#: A 429 from Klaviyo during verify is waited out this many times, each wait capped, without jitter
#: (one operator, one request at a time).
THROTTLE_RETRIES = 2
THROTTLE_WAIT_MAX_S = 30.0
VERIFY_POLICY = RetryPolicy(base_s=1.0, max_countdown_s=THROTTLE_WAIT_MAX_S, max_throttles=THROTTLE_RETRIES + 1,
                            rand=lambda: 0.0)
NEW_KEY = "Klaviyo > Settings > API Keys > Create Private API Key"


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    WARNING = "warning"  # worth fixing, but the sync works
    SKIPPED = "skipped"  # could not be checked because an earlier check failed


MARKS = {Status.OK: "[green]✓[/]", Status.FAILED: "[bold red]✗[/]", Status.WARNING: "[yellow]![/]",
         Status.SKIPPED: "[dim]-[/]"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    #: What to do about it (failed and warning checks).
    fix: str = ""


@dataclass(frozen=True)
class ScopeProbe:
    scope: str
    #: The endpoint probed (`worker.klaviyo.SCOPE_PROBES`); it may need other scopes too, probed first.
    endpoint: str
    also_needs: tuple[str, ...]
    used_for: str


#: The scopes the sync needs, in probing order. lists:write and lists:read are needed by the batched
#: backfill: POST /api/profile-bulk-import-jobs needs lists:write + profiles:write, and following the
#: job (GET .../{job_id}) needs lists:read + profiles:read (Klaviyo's spec, x-klaviyo-scopes).
SCOPES = (
    ScopeProbe("profiles:read", GET_PROFILES, (), "looking customers up"),
    ScopeProbe("profiles:write", UPDATE_PROFILE, (), "creating and updating profiles"),
    ScopeProbe("subscriptions:write", UNSUPPRESS, (), "suppressing and unsuppressing opted-out customers"),
    ScopeProbe("lists:write", BULK_IMPORT, ("profiles:write",), "backfill's bulk imports"),
    ScopeProbe("lists:read", GET_BULK_IMPORT, ("profiles:read",), "following backfill's bulk import jobs"),
)
REQUIRED_SCOPES = ", ".join(probe.scope for probe in SCOPES)


def render(check: Check) -> str:
    """One line: mark, name, detail and, for a problem, what to do (Rich markup; values escaped)."""
    fix = f" → {escape(check.fix)}" if check.fix and check.status in (Status.FAILED, Status.WARNING) else ""
    return f"  {MARKS[check.status]} {escape(check.name)}: {escape(check.detail)}{fix}"


# --- the checks ------------------------------------------------------------------------------------


def check_redis(client: redis.Redis) -> Check:
    try:
        client.ping()
    except redis.RedisError as exc:
        return Check("redis", Status.FAILED, f"the state store does not answer ({type(exc).__name__}: {exc})",
                     "start Redis or fix SYNC_REDIS_URL; the Klaviyo checks need it (every request goes through "
                     "the fleet's rate limiter there)")
    return Check("redis", Status.OK, "the state store answers")


def check_configuration(tenant_id: str, config: TenantConfig | ConfigError) -> list[Check]:
    if isinstance(config, ConfigError):
        return [Check("configuration", Status.FAILED, str(config)),  # the message says what to fix
                Check("loyale, klaviyo", Status.SKIPPED, "not checked until the configuration is valid")]
    return [Check("klaviyo key shape", Status.OK, "a private key (pk_...), not the public site key")]


def check_loyale(loyale: LoyaleClient, tenant: TenantConfig) -> Check:
    """Admin login, then one customer of the scheme."""
    where = f"Loyale at {tenant.loyale_base_url}"
    try:
        loyale.login()
        page = loyale.page(1, page_size=1)
    except TenantFatalError as exc:
        return Check("loyale", Status.FAILED, exc.reason)
    except LoyaleRouteMissing:
        return Check("loyale", Status.FAILED, f"{where} has no customer list (404 to GET /api/Customer)",
                     "set loyale_base_url to the root of Loyale's API, e.g. https://api.loyale.io")
    except RetryableError as exc:
        return Check("loyale", Status.FAILED, f"{where} did not answer: {exc}",
                     "check loyale_base_url and that Loyale is reachable from this machine, then run verify again")
    count = f"{page.total_count} customers" if page.total_count is not None else "customers readable"
    return Check("loyale", Status.OK, f"admin login works; scheme {tenant.loyale_scheme_id} answers ({count})")


def check_levels(loyale: LoyaleClient, tenant: TenantConfig) -> Check:
    """GET /api/Level (a route Loyale's docs name but do not spell out): level ids -> names for `Levels`."""
    name = "loyale levels"
    try:
        levels = loyale.level_names(refresh=True)
    except LoyaleRouteMissing:
        return Check(name, Status.WARNING,
                     f"Loyale at {tenant.loyale_base_url} has no level route (404 to GET /api/Level): customers "
                     "sync without Levels, and Klaviyo's Levels property is left as it is",
                     "ask Loyale which route lists a scheme's levels for an admin user; nothing else is affected")
    except TenantFatalError as exc:
        return Check(name, Status.WARNING, f"the level route refused the admin user: {exc.reason}; customers "
                                           "sync without Levels", "give the admin user access to the scheme's levels")
    except RetryableError as exc:
        return Check(name, Status.WARNING, f"the level route did not answer: {exc}; customers sync without "
                                           "Levels meanwhile", "run verify again; if it persists, ask Loyale")
    return Check(name, Status.OK, f"GET /api/Level answers ({len(levels)} level{'s' if len(levels) != 1 else ''})")


def check_account(klaviyo: KlaviyoClient, tenant: TenantConfig) -> tuple[Check, str | None]:
    """GET /api/accounts: does Klaviyo accept the key, and whose account is it? -> (check, account id)"""
    name = "klaviyo key"
    try:
        account = _klaviyo_call(klaviyo.account)
    except TenantFatalError as exc:
        if exc.status == 401:
            return Check(name, Status.FAILED, "Klaviyo rejects it (401): the key is wrong or revoked",
                         f"create a private key ({NEW_KEY}, scopes {REQUIRED_SCOPES}, accounts:read) and set "
                         f"klaviyo_private_key of tenant {tenant.id!r}"), None
        if exc.status == 403:
            return Check(name, Status.WARNING, "accepted, but it lacks accounts:read, so its account is unknown",
                         "optional: tenants sharing one Klaviyo account then do not share one rate limit; include "
                         "accounts:read when you next create the key"), None
        return Check(name, Status.FAILED, exc.reason), None
    except RetryableError as exc:
        return _unanswered(name, klaviyo, tenant, exc), None
    attrs = account.get("attributes") or {}
    organization = (attrs.get("contact_information") or {}).get("organization_name")
    described = f"account {account.get('id')}" + (f" ({organization})" if organization else "")
    test = ", a test account" if attrs.get("test_account") else ""
    return Check(name, Status.OK, f"accepted; {described}{test}"), str(account.get("id"))


def check_scopes(klaviyo: KlaviyoClient, tenant: TenantConfig) -> list[Check]:
    """One check per scope in SCOPES. A scope whose probe also needs a missing scope is not checked."""
    checks: list[Check] = []
    held: dict[str, bool] = {}
    for probe in SCOPES:
        name = f"scope {probe.scope}"
        lacking = [s for s in probe.also_needs if not held.get(s)]
        if lacking:
            checks.append(Check(name, Status.SKIPPED, f"not checked: its probe also needs {', '.join(lacking)}"))
            continue
        try:
            held[probe.scope] = _klaviyo_call(partial(klaviyo.permitted, probe.endpoint))
        except TenantFatalError as exc:
            checks.append(Check(name, Status.FAILED, exc.reason))
            break
        except RetryableError as exc:
            checks.append(_unanswered(name, klaviyo, tenant, exc))
            break
        if held[probe.scope]:
            checks.append(Check(name, Status.OK, f"held ({probe.used_for})"))
        else:
            checks.append(Check(name, Status.FAILED, f"missing; the sync needs it for {probe.used_for}",
                                f"scopes cannot be added to a key: create a new private key ({NEW_KEY}) with "
                                f"{REQUIRED_SCOPES} and accounts:read, and set klaviyo_private_key of tenant "
                                f"{tenant.id!r}"))
    return checks


def _klaviyo_call(call: Callable[[], T]) -> T:
    """`call()`, waiting out a 429 from Klaviyo (its Retry-After, capped) a couple of times."""
    throttles = 0
    while True:
        try:
            return call()
        except Throttled as exc:
            decision = decide(exc, 1, throttles, VERIFY_POLICY)
            if not isinstance(decision, Retry):
                raise
            time.sleep(decision.countdown_s)
            throttles = decision.throttles


def _unanswered(name: str, klaviyo: KlaviyoClient, tenant: TenantConfig, exc: RetryableError) -> Check:
    if isinstance(exc, Deferred):
        return Check(name, Status.FAILED, f"not checked: the fleet's {exc} is spent for {exc.retry_after_s or 0:.0f}s",
                     "run verify again then (workers are using the quota)")
    if isinstance(exc, Throttled):
        return Check(name, Status.FAILED, f"not checked: {exc}",
                     "the account's quota is spent (other integrations?); run verify again in a minute")
    return Check(name, Status.FAILED, f"Klaviyo at {tenant.klaviyo_base_url} did not answer: {exc}",
                 "check klaviyo_base_url and this machine's network, then run verify again")


def loyale_client(rt: Runtime, tenant: TenantConfig) -> LoyaleClient:
    """The tenant's Loyale client, retrying once only: an unreachable Loyale is reported, not waited for."""
    return LoyaleClient(rt.http, tenant=tenant.id, base_url=tenant.loyale_base_url, scheme_id=tenant.loyale_scheme_id,
                        admin_email=tenant.loyale_admin_email, admin_password=tenant.loyale_admin_password,
                        max_attempts=2, max_wait_s=2.0)


def verify_tenant(rt: Runtime, tenant: TenantConfig) -> list[Check]:
    """Every check of one valid tenant, in order; Klaviyo's scopes only once it accepts the key."""
    loyale = loyale_client(rt, tenant)
    checks = [check_loyale(loyale, tenant)]
    if checks[0].status == Status.OK:
        checks.append(check_levels(loyale, tenant))
    klaviyo = rt.klaviyo(tenant.id)
    try:
        account, account_id = check_account(klaviyo, tenant)
        checks.append(account)
        if account.status == Status.FAILED:
            checks.append(Check("klaviyo scopes", Status.SKIPPED, "not checked until Klaviyo accepts the key"))
        else:
            # cached as the workers do, so the limiter in front of the probes does not ask GET /api/accounts
            # again (it is paced at 15/min per key: one more call would cost 4 s)
            rt.gate.accounts.remember(tenant.id, account_id)
            checks += check_scopes(klaviyo, tenant)
            if all(c.status == Status.OK for c in checks if c.name.startswith("scope ")):
                checks.append(check_events_scope(rt.store, klaviyo, tenant))
    except (redis.RedisError, LimiterUnavailable) as exc:
        checks.append(Check("klaviyo", Status.FAILED, f"not checked: the rate limiter in Redis failed ({exc})",
                            "make Redis reachable (SYNC_REDIS_URL), then run verify again"))
    return checks


def check_events_scope(store: Store, klaviyo: KlaviyoClient, tenant: TenantConfig) -> Check:
    """`events:write`, for loyalty events: a warning when it is missing (the profiles sync without it; the
    events are rejected), skipped for a tenant with events off. When held, events the workers stopped
    after a 403 start again."""
    name = "scope events:write"
    if not tenant.events:
        return Check(name, Status.SKIPPED, "not needed: loyalty events are off for this tenant (events = false)")
    try:
        held = _klaviyo_call(partial(klaviyo.permitted, BULK_CREATE_EVENTS))
    except TenantFatalError as exc:
        return Check(name, Status.FAILED, exc.reason)
    except RetryableError as exc:
        return _unanswered(name, klaviyo, tenant, exc)
    if not held:
        return Check(name, Status.WARNING, "missing; loyalty events are rejected (profiles still sync)",
                     f"create a private key ({NEW_KEY}) with {REQUIRED_SCOPES}, events:write and accounts:read, "
                     f"or set events = false for tenant {tenant.id!r}")
    if store.unblock_events(tenant.id):
        return Check(name, Status.OK, "held (loyalty events); the events stopped after a 403 start again")
    return Check(name, Status.OK, "held (loyalty events)")


def check_paused(store: Store, tenant_id: str, checks: list[Check]) -> Check | None:
    """A tenant paused after Klaviyo refused its key is resumed once every one of its checks passed (the
    workers' hint: "fix the key, then run `loyale-sync verify`"); None when it is not paused."""
    reason = store.tenant_paused(tenant_id)
    if reason is None:
        return None
    if any(c.status == Status.FAILED for c in checks):
        return Check("paused", Status.FAILED, f"the tenant is paused ({reason}); its customers end `failed`",
                     "fix what failed above and run verify again: it resumes the tenant once every check passes")
    store.resume_tenant(tenant_id)
    return Check("paused", Status.OK, f"resumed (it was paused: {reason}); `loyale-sync retry-failures` "
                                      "re-drives the customers that failed meanwhile")


# --- the command -----------------------------------------------------------------------------------


def _print(line: str) -> None:
    ctx.console.print(line, soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def verify(
        tenant: Annotated[str | None, typer.Option(
            "--tenant", "-t", help="Tenant id (default: every tenant).")] = None,
    ) -> None:
        """Check each tenant's Loyale login and Klaviyo key (account and scopes), writing nothing.

        One line per check, with what to do when it fails; the exit code is 1 if any check failed."""
        config = ctx.settings()
        try:
            each = config.load_tenants_each()
        except ConfigError as exc:
            raise ctx.fail(str(exc)) from None
        if tenant is not None and tenant not in each:
            raise ctx.fail(f"no tenant {tenant!r}; configured: {', '.join(sorted(each)) or 'none'}")
        chosen = {tenant: each[tenant]} if tenant is not None else each
        valid = {tid: c for tid, c in chosen.items() if isinstance(c, TenantConfig)}
        rt = Runtime.build(config, valid, wait_inline_s=ctx.INLINE_WAIT_S)
        try:
            redis_check = check_redis(rt.redis)
            _print(render(redis_check))
            results = [redis_check]
            for tid, tenant_config in chosen.items():
                _print(f"tenant [bold]{escape(tid)}[/]")
                checks = check_configuration(tid, tenant_config)
                if isinstance(tenant_config, TenantConfig):
                    if redis_check.status == Status.OK:
                        checks += verify_tenant(rt, tenant_config)
                    else:
                        checks += [check_loyale(loyale_client(rt, tenant_config), tenant_config),
                                   Check("klaviyo", Status.SKIPPED, "not checked without Redis")]
                if redis_check.status == Status.OK and (paused := check_paused(rt.store, tid, checks)) is not None:
                    checks.append(paused)
                for check in checks:
                    _print(render(check))
                results += checks
        finally:
            rt.close()
        _print(summary(results))
        if any(c.status == Status.FAILED for c in results):
            raise typer.Exit(1)


def summary(checks: list[Check]) -> str:
    failed = sum(c.status == Status.FAILED for c in checks)
    warnings = sum(c.status == Status.WARNING for c in checks)
    noted = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
    if failed:
        return f"[bold red]{failed} of {len(checks)} checks failed[/]{noted}"
    return f"[green]all {len(checks)} checks passed[/]{noted}"
