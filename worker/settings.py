"""Settings, loaded once per process from the environment (prefix `SYNC_`) and an optional `.env`.

Tenants (one per Loyale scheme / brand) come from a TOML file named by `SYNC_TENANTS_FILE`, or, for a
single tenant, from `SYNC_TENANT_*` variables. Secrets in the TOML file may be written as
`env:NAME` so the file itself can be committed to a deployment repository without keys in it.
"""

from __future__ import annotations

import os
import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError

#: Where the shared reference keeps Klaviyo's OpenAPI spec next to a checkout of this repository.
DEFAULT_SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "klaviyo-openapi" / "stable.json"
KLAVIYO_PRIVATE_KEY = re.compile(r"^pk_[A-Za-z0-9]+$")
KLAVIYO_PUBLIC_KEY = re.compile(r"^[A-Za-z0-9]{6}$")
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class TenantConfig(BaseModel):
    """One brand: its Loyale scheme, its Klaviyo account and its merge settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    loyale_base_url: str = "https://api.loyale.io"
    loyale_scheme_id: str
    loyale_admin_email: str
    loyale_admin_password: SecretStr
    klaviyo_base_url: str = "https://a.klaviyo.com"
    klaviyo_private_key: SecretStr
    #: Merge Customers: on = Loyale overwrites conflicting Klaviyo fields; off (default) = Klaviyo wins.
    merge_customers: bool = False
    #: With merge off: "skip" leaves existing profiles untouched, "fill_empty" sets only empty fields.
    existing_profiles: Literal["skip", "fill_empty"] = "skip"
    #: Share of each Klaviyo quota left for the brand's other integrations (0.0 - 0.9).
    headroom: float = Field(default=0.0, ge=0.0, le=0.9)
    #: ISO region used for phones that carry no country code (e.g. "MT"); None drops such phones.
    default_phone_region: str | None = None
    #: Optional nightly full backfill, cron syntax ("0 3 * * *"); None = no scheduled backfill.
    backfill_cron: str | None = None
    #: Opt-in: drop webhook events whose `updatedBy`/`createdBy` is our own Loyale admin user. Off by
    #: default: this service never writes to Loyale, so such events are staff edits made with the same
    #: login (an admin account shared with the back office), and dropping them loses changes.
    ignore_own_admin_webhooks: bool = False
    #: The admin email that filter compares with (default: loyale_admin_email).
    loyale_own_admin_email: str | None = None
    #: Secret token in the webhook URL (Loyale does not sign webhooks): /webhooks/loyale/<token>.
    webhook_token: SecretStr | None = None
    #: Loyalty events (points earned and spent, levels, coupons, transfers, joining and leaving) sent to
    #: Klaviyo for customers whose profile this service synced with their consent (README "Loyalty
    #: events"). Needs the key's events:write scope. Off: no event is sent; levels are still remembered.
    events: bool = True

    @field_validator("id")
    @classmethod
    def _tenant_id(cls, value: str) -> str:
        if not TENANT_ID.match(value):
            raise ValueError("tenant id must be 1-63 lower-case letters, digits, '-' or '_'")
        return value

    @field_validator("klaviyo_private_key")
    @classmethod
    def _private_key(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        if KLAVIYO_PUBLIC_KEY.match(raw):
            raise ValueError(
                "this is Klaviyo's 6-character public API key (site ID), which cannot read or write profiles. "
                "Create a private key in Klaviyo under Settings > API Keys > Create Private API Key "
                "(scopes: profiles:read, profiles:write, subscriptions:write, lists:read, lists:write; accounts:read "
                "for `loyale-sync verify`) and use that pk_... value"
            )
        if not KLAVIYO_PRIVATE_KEY.match(raw):
            raise ValueError(
                "a Klaviyo private API key starts with 'pk_' followed by letters and digits; "
                "copy it from Klaviyo under Settings > API Keys"
            )
        return SecretStr(raw)

    @field_validator("loyale_base_url", "klaviyo_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @property
    def own_admin_email(self) -> str:
        return (self.loyale_own_admin_email or self.loyale_admin_email).strip().lower()


#: Seconds from a grant until Klaviyo has counted its request, at most: each window's log is this much
#: longer than Klaviyo's (see `worker.ratelimit.limiter`). Measured on a loaded 2-core machine (load 4, four
#: processes taking a sync's two lookups together and sending them one after the other), grant to
#: response: 4 ms median, 29 ms at p99, 186 ms at worst (the second lookup, after the first's round
#: trip), which overran the 170 ms the old margin left a 12 s window (the benchmark's `quota-bound`,
#: where 8 requests met a 429). 0.5 s: a prepaid place is used within 0.25 s of its grant (`Gate`),
#: and the send itself took under 50 ms. It costs 0.8 % of Klaviyo's 60 s quota; against windows
#: scaled down it costs more (transit is real time): 1 s cut the benchmark's 0.2 s burst window to
#: 6 lookups per 1.2 s, 18 % of its rate.
TRANSIT_S = 0.5

BrokerTransport = Literal["redis", "amqp"]
#: URL schemes of the brokers we know how to run on and to ask about queue depths (`worker.broker`).
BROKER_SCHEMES: dict[str, BrokerTransport] = {
    "redis": "redis", "rediss": "redis", "unix": "redis", "redis+socket": "redis",
    "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp",
}


def broker_transport(url: str) -> BrokerTransport:
    """Which broker a `SYNC_BROKER_URL` names; a ConfigError names the schemes we support."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in BROKER_SCHEMES:
        raise ConfigError(f"broker URL scheme {scheme + '://' if scheme else '(none)'} is not supported: "
                          "use redis:// (or rediss://) or amqp:// (or amqps://) in SYNC_BROKER_URL")
    return BROKER_SCHEMES[scheme]

class Settings(BaseSettings):
    """Process-wide settings. Durations carry their unit in the name."""

    model_config = SettingsConfigDict(env_prefix="SYNC_", env_file=".env", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Celery broker; defaults to `redis_url`. `amqp://user:password@host:5672/vhost` for RabbitMQ
    #: (README "Choosing a broker"); Redis stays the state store either way.
    broker_url: str | None = None
    tenants_file: Path | None = None

    # Single-tenant configuration from the environment (used when no tenants file is given).
    tenant_id: str = "default"
    tenant_loyale_base_url: str | None = None
    tenant_loyale_scheme_id: str | None = None
    tenant_loyale_admin_email: str | None = None
    tenant_loyale_admin_password: SecretStr | None = None
    tenant_klaviyo_base_url: str | None = None
    tenant_klaviyo_private_key: SecretStr | None = None
    tenant_merge_customers: bool = False
    tenant_existing_profiles: Literal["skip", "fill_empty"] = "skip"
    tenant_headroom: float = 0.0
    tenant_default_phone_region: str | None = None
    tenant_backfill_cron: str | None = None
    tenant_webhook_token: SecretStr | None = None
    tenant_ignore_own_admin_webhooks: bool = False
    tenant_loyale_own_admin_email: str | None = None
    tenant_events: bool = True

    klaviyo_revision: str = "2026-07-15"
    #: Klaviyo's OpenAPI spec, read for the `x-klaviyo-ratelimit` numbers (built-in table if absent).
    klaviyo_spec_path: Path | None = DEFAULT_SPEC_PATH
    #: Multiply Klaviyo's limits / window lengths: only for running against a fake with scaled limits.
    limiter_rate_scale: float = 1.0
    limiter_window_scale: float = 1.0
    #: The longest a granted request may take to be counted by Klaviyo: each window of the limiter is
    #: this much longer than Klaviyo's (`TRANSIT_S` says why the default).
    limiter_transit_s: float = TRANSIT_S
    http_timeout_s: float = 20.0
    http_connect_timeout_s: float = 5.0

    #: Attempts per customer before the outcome is `failed` (deferrals by our limiter do not count).
    max_attempts: int = 8
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    #: Redis broker visibility timeout: an unacked message is redelivered after this long. Every
    #: countdown we schedule stays far below it (see `max_countdown_s`).
    visibility_timeout_s: int = 3600
    #: RabbitMQ's `consumer_timeout` (rabbitmq.conf; 30 min unless the server sets another): a delivery
    #: a worker holds unacknowledged longer is taken back by closing that worker's channel. Tell us the
    #: server's value; countdowns and the rescue are sized from it on an `amqp://` broker.
    consumer_timeout_s: int = 1800
    #: How long a run's ledger and outcomes are kept in Redis.
    retention_days: int = 30
    #: How long the journal of overwritten Klaviyo values is kept (`loyale-sync undo` needs it).
    journal_retention_days: int = 90

    #: Backfill batching: a backfill worker syncs the customers it holds together once it holds this
    #: many (or every `batch_flush_interval_s`): lookups of 100, bulk imports of up to 10,000.
    batch_size: int = 5000
    batch_flush_interval_s: float = 2.0
    #: While customers keep arriving, a batch waits for more up to this long (bigger batches spend
    #: fewer requests per customer); it is flushed at once when full or when arrivals stop.
    batch_max_wait_s: float = 30.0
    #: A batch waits for the limiter in place up to this long per request before it is deferred.
    batch_wait_inline_s: float = 5.0
    #: A bulk import job still not done after this long is given up and its rows sent again (Klaviyo's
    #: jobs take seconds to minutes; one that never ends must not hold its customers forever).
    bulk_job_timeout_s: float = 900.0
    #: How long a customer's lock lasts unless refreshed; a batch refreshes its locks while its bulk
    #: jobs run, so the lock covers the whole write however slow Klaviyo is.
    lock_ttl_s: float = 120.0
    #: How often pending suppressions are re-checked, and how long one may stay unapplied before it
    #: is sent again (Klaviyo applies them minutes to hours later).
    suppression_recheck_interval_s: float = 300.0
    suppression_recheck_max_s: float = 6 * 3600.0
    #: Backfill backpressure: at most this many of a run's customers wait (on the queue, in a worker's
    #: buffer, sent back for later) at once; those a running batch holds (lookups, bulk jobs) do not count.
    max_queued_per_tenant: int = 10_000
    incremental_interval_s: float = 60.0
    #: A run whose customers got no outcome for this long, with the queues empty, is rescued: its
    #: customers without an outcome are enqueued again (producers/rescue.py). Default (0): the
    #: visibility timeout (RabbitMQ: the consumer timeout) plus the longest countdown plus five minutes.
    stall_after_s: float = 0.0
    #: How often beat looks for such runs.
    rescue_interval_s: float = 60.0
    incremental_overlap_s: float = 120.0
    webhooks_host: str = "0.0.0.0"
    webhooks_port: int = 8080
    #: Where `loyale-sync metrics` serves Prometheus metrics (read from Redis at scrape time).
    metrics_port: int = 9808

    log_json: bool | None = None
    log_level: str = "INFO"

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_transport(self) -> BrokerTransport:
        return broker_transport(self.broker)

    @property
    def redelivery_timeout_s(self) -> float:
        """The longest a message a worker holds (reserved, in a batch, waiting out a countdown) stays away
        from the queue: Redis restores it after the visibility timeout, RabbitMQ takes it back after its
        consumer timeout (and at once when the worker's connection dies)."""
        return self.consumer_timeout_s if self.broker_transport == "amqp" else self.visibility_timeout_s

    @property
    def task_wait_inline_s(self) -> float:
        """How long a worker's per-customer task waits for the limiter in place instead of being deferred.
        Redis: 0, a deferral's countdown is held by the worker to the millisecond. RabbitMQ carries a
        countdown in whole seconds (Celery's delayed delivery): a shorter wait sent that way came back up to
        a second after the slot the limiter promised it, and the per-customer path ran at about half of
        Klaviyo's limit (bench real-limits); so a wait under a second is slept in place."""
        return 1.0 if self.broker_transport == "amqp" else 0.0

    @property
    def stall_after_effective_s(self) -> float:
        return self.stall_after_s or self.redelivery_timeout_s + self.max_countdown_s + 300

    @property
    def max_countdown_s(self) -> float:
        """Longest countdown a task may be given: a quarter of the redelivery timeout. On RabbitMQ a
        countdown waits in the broker (Celery's native delayed delivery), not in a worker, so the consumer
        timeout never takes it back; the bound stays for a worker that holds one all the same (a delay
        shorter than a second, or delayed delivery not set up: Celery then holds the message until due)."""
        return self.redelivery_timeout_s / 4

    def load_tenants(self) -> dict[str, TenantConfig]:
        """All configured tenants by id; raises ConfigError saying what is wrong and how to fix it."""
        if self.tenants_file is not None:
            return load_tenants_file(self.tenants_file)
        if not self.tenant_loyale_scheme_id:
            raise ConfigError(
                "no tenants configured: set SYNC_TENANTS_FILE to a tenants TOML file, or set "
                "SYNC_TENANT_LOYALE_SCHEME_ID, SYNC_TENANT_LOYALE_ADMIN_EMAIL, SYNC_TENANT_LOYALE_ADMIN_PASSWORD "
                "and SYNC_TENANT_KLAVIYO_PRIVATE_KEY (see .env.example)"
            )
        raw: dict[str, Any] = {
            "loyale_scheme_id": self.tenant_loyale_scheme_id,
            "loyale_admin_email": self.tenant_loyale_admin_email,
            "loyale_admin_password": _secret(self.tenant_loyale_admin_password),
            "klaviyo_private_key": _secret(self.tenant_klaviyo_private_key),
            "merge_customers": self.tenant_merge_customers,
            "existing_profiles": self.tenant_existing_profiles,
            "headroom": self.tenant_headroom,
            "default_phone_region": self.tenant_default_phone_region,
            "backfill_cron": self.tenant_backfill_cron,
            "webhook_token": _secret(self.tenant_webhook_token),
            "ignore_own_admin_webhooks": self.tenant_ignore_own_admin_webhooks,
            "loyale_own_admin_email": self.tenant_loyale_own_admin_email,
            "events": self.tenant_events,
        }
        if self.tenant_loyale_base_url:
            raw["loyale_base_url"] = self.tenant_loyale_base_url
        if self.tenant_klaviyo_base_url:
            raw["klaviyo_base_url"] = self.tenant_klaviyo_base_url
        return {self.tenant_id: _tenant(self.tenant_id, raw, "SYNC_TENANT_* environment variables")}

    def load_tenants_each(self) -> dict[str, TenantConfig | ConfigError]:
        """Like `load_tenants`, but an invalid tenant comes back as the ConfigError that says what is wrong
        instead of failing every tenant (`loyale-sync verify` reports each one). Raises ConfigError only
        when no tenant can be read at all: nothing configured, or a tenants file that cannot be parsed."""
        if self.tenants_file is None:
            if not self.tenant_loyale_scheme_id:
                return dict(self.load_tenants())  # raises the "no tenants configured" error
            try:
                return dict(self.load_tenants())
            except ConfigError as exc:
                return {self.tenant_id: exc}
        each: dict[str, TenantConfig | ConfigError] = {}
        for tid, raw in read_tenant_tables(self.tenants_file).items():
            try:
                each[tid] = _tenant(tid, dict(raw), str(self.tenants_file))
            except ConfigError as exc:
                each[tid] = exc
        return each


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _resolve_env_refs(tenant_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Replace `env:NAME` values by the environment variable NAME."""
    resolved = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("env:"):
            name = value[4:]
            if name not in os.environ:
                raise ConfigError(
                    f"tenant {tenant_id!r}: {key} refers to environment variable {name}, which is not set"
                )
            value = os.environ[name]
        resolved[key] = value
    return resolved


def _tenant(tenant_id: str, raw: dict[str, Any], source: str) -> TenantConfig:
    try:
        return TenantConfig(id=tenant_id, **_resolve_env_refs(tenant_id, raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'tenant'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"tenant {tenant_id!r} in {source} is invalid: {problems}") from None


def load_tenants_file(path: Path) -> dict[str, TenantConfig]:
    """Parse a tenants TOML file: one `[tenants.<id>]` table per brand."""
    return {tid: _tenant(tid, dict(raw), str(path)) for tid, raw in read_tenant_tables(path).items()}


def read_tenant_tables(path: Path) -> dict[str, Any]:
    """The `[tenants.<id>]` tables of a tenants TOML file, not yet validated."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"tenants file {path} does not exist (SYNC_TENANTS_FILE)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"tenants file {path} is not valid TOML: {exc}") from None
    tables = data.get("tenants")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"tenants file {path} has no [tenants.<id>] tables")
    return tables


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
