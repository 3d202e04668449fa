"""Startup configuration and runtime knobs of the fake Klaviyo."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# <repo root>/../shared/klaviyo-openapi/stable.json: the spec is read at runtime, never copied in.
DEFAULT_SPEC_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "klaviyo-openapi" / "stable.json"


def default_spec_path() -> Path:
    return Path(os.environ.get("FAKE_KLAVIYO_SPEC") or DEFAULT_SPEC_PATH)


@dataclass
class Knobs:
    """Behaviour that tests and benchmarks change at runtime through `POST /_fake/knobs`."""

    #: Apply Klaviyo's per-account, per-endpoint burst and steady windows.
    rate_limits_enabled: bool = True
    #: Multiplies every limit (0.1 turns 75/s into 7/s); a limit never drops below 1.
    rate_limit_scale: float = 1.0
    #: Multiplies window lengths (0.05 turns the 60 s steady window into 3 s).
    window_scale: float = 1.0
    #: Send 429s without `Retry-After` (observed live); the wait is then only in `detail`.
    omit_retry_after: bool = False
    #: Seconds added before every /api answer.
    latency_s: float = 0.0
    #: Share of /api answers replaced by a JSON 5xx (the request is not applied).
    error_rate: float = 0.0
    #: Statuses an injected error picks from.
    error_statuses: list[int] = field(default_factory=lambda: [500, 503])
    #: Share of /api requests whose connection is cut mid-response.
    drop_rate: float = 0.0
    #: A dropped request is applied before its answer is cut (a lost response); False drops it unapplied.
    drop_after_apply: bool = True
    #: Share of /api requests answered only after `stall_s` (applied after the stall).
    stall_rate: float = 0.0
    stall_s: float = 5.0
    #: Share of /api requests answered with a Cloudflare-style HTML 403 (not applied).
    non_json_403_rate: float = 0.0
    #: GETs of a bulk import job needed per status step (queued -> processing -> complete).
    bulk_job_gets_per_step: int = 1
    #: Most values accepted in one `any(field,[...])` (UNCONFIRMED in Klaviyo; 0 = unlimited).
    max_any_values: int = 100
    #: Size of the request log ring buffer.
    request_log_size: int = 2000
    #: Seeds fault draws and generated ids; None = not reproducible.
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, Any]) -> Knobs:
        """A copy with `changes` applied; raises ValueError for unknown names or wrong types."""
        names = {f.name: f for f in dataclasses.fields(self)}
        values = self.as_dict()
        for name, raw in changes.items():
            if name not in names:
                raise ValueError(f"unknown knob {name!r}; known: {sorted(names)}")
            values[name] = _coerce(name, raw, getattr(self, name))
        return Knobs(**values)


def _coerce(name: str, raw: Any, current: Any) -> Any:
    """Check a knob value against the type of its default (JSON gives ints where floats are meant)."""
    if name == "seed":
        if raw is None or (isinstance(raw, int) and not isinstance(raw, bool)):
            return raw
        raise ValueError("seed must be an integer or null")
    if name == "error_statuses":
        if isinstance(raw, list) and raw and all(isinstance(s, int) and 400 <= s <= 599 for s in raw):
            return list(raw)
        raise ValueError("error_statuses must be a non-empty list of HTTP error statuses")
    if isinstance(current, bool):
        if isinstance(raw, bool):
            return raw
        raise ValueError(f"{name} must be a boolean")
    if isinstance(current, int):
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return raw
        raise ValueError(f"{name} must be a non-negative integer")
    if isinstance(current, float):
        if isinstance(raw, int | float) and not isinstance(raw, bool) and raw >= 0:
            if name.endswith("_rate") and raw > 1:
                raise ValueError(f"{name} is a share between 0 and 1")
            if name.endswith("_scale") and raw == 0:
                raise ValueError(f"{name} must be greater than 0")
            return float(raw)
        raise ValueError(f"{name} must be a non-negative number")
    raise ValueError(f"cannot set {name}")


@dataclass
class KeySpec:
    key: str
    #: None = every scope (a "Full access" key).
    scopes: list[str] | None = None


@dataclass
class AccountSpec:
    account_id: str | None = None
    keys: list[KeySpec] = field(default_factory=list)


@dataclass
class FakeKlaviyoConfig:
    """Everything the fake starts from; `POST /_fake/reset` returns to exactly this."""

    #: Empty = one account with a generated id and one generated full-access key.
    accounts: list[AccountSpec] = field(default_factory=list)
    knobs: Knobs = field(default_factory=Knobs)
    #: None = `$FAKE_KLAVIYO_SPEC` or `<repo root>/../shared/klaviyo-openapi/stable.json`.
    spec_path: str | None = None
    #: Validate every /api request with openapi-core and record violations (`GET /_fake/spec-violations`).
    validate_requests_against_spec: bool = field(
        default_factory=lambda: os.environ.get("FAKE_KLAVIYO_VALIDATE_SPEC", "") in ("1", "true", "yes")
    )
