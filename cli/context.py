"""What every command needs: settings, the chosen tenant, clients. Errors become clear messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import httpx
import typer
from rich.console import Console

from producers.loyale import LoyaleClient
from worker.errors import ConfigError
from worker.runtime import Runtime
from worker.settings import Settings, TenantConfig, get_settings

#: --tenant of the commands that work on one tenant.
TenantOpt = Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id (default: the only tenant).")]

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


def settings() -> Settings:
    return get_settings()


def tenants(config: Settings) -> dict[str, TenantConfig]:
    try:
        return config.load_tenants()
    except ConfigError as exc:
        raise fail(str(exc)) from None


def pick_tenant(all_tenants: dict[str, TenantConfig], name: str | None) -> TenantConfig:
    if name is None:
        if len(all_tenants) == 1:
            return next(iter(all_tenants.values()))
        raise fail(f"several tenants are configured ({', '.join(sorted(all_tenants))}): choose one with --tenant")
    if name not in all_tenants:
        raise fail(f"no tenant {name!r}; configured: {', '.join(sorted(all_tenants)) or 'none'}")
    return all_tenants[name]


def selected(all_tenants: dict[str, TenantConfig], name: str | None) -> list[TenantConfig]:
    """--tenant T selects one; without it, every tenant."""
    return [pick_tenant(all_tenants, name)] if name else list(all_tenants.values())


def loyale_client(http: httpx.Client, tenant: TenantConfig) -> LoyaleClient:
    return LoyaleClient(http, tenant=tenant.id, base_url=tenant.loyale_base_url, scheme_id=tenant.loyale_scheme_id,
                        admin_email=tenant.loyale_admin_email, admin_password=tenant.loyale_admin_password)


#: Commands run in the operator's terminal wait for the fleet's rate limit rather than fail.
INLINE_WAIT_S = 60.0


@contextmanager
def runtime() -> Iterator[Runtime]:
    config = settings()
    rt = Runtime.build(config, tenants(config), wait_inline_s=INLINE_WAIT_S)
    try:
        yield rt
    finally:
        rt.close()
