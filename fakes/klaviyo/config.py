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
    #: Knobs below make the fake as unkind as Klaviyo; all are off by default. `POST /_fake/realistic`
    #: sets them together (`realistic_knobs`), `POST /_fake/kind` puts them back (`KIND_REALISM`).
    #: Every duration is read on the fake clock (`POST /_fake/clock`).
    #:
    #: Bulk import jobs advance by time when either is > 0: duration = job_seconds +
    #: job_seconds_per_1000_rows * rows / 1000 (then `bulk_job_gets_per_step` is ignored).
    job_seconds: float = 0.0
    job_seconds_per_1000_rows: float = 0.0
    #: Share of a timed job's duration spent `queued`; rows are applied evenly over the rest.
    job_queued_share: float = 0.0
    #: Leave `completed_count` and `failed_count` null for the whole job (the spec makes both nullable).
    job_counts_null: bool = False
    #: Share of new jobs that end `cancelled` after applying `job_cancel_after_share` of their rows.
    job_cancel_rate: float = 0.0
    job_cancel_after_share: float = 0.5
    #: Share of new jobs that stay `processing` forever after applying `job_stuck_after_share` of their rows.
    job_stuck_rate: float = 0.0
    job_stuck_after_share: float = 0.5
    #: Import errors point at their row (`/data/attributes/profiles/data/<i>`); False = the spec's
    #: default `/data`, so only `original_payload` tells the row (what Klaviyo documents).
    import_error_row_pointer: bool = True
    #: Seconds after a write (create, update, bulk row, merge) during which `GET /api/profiles` does not
    #: list the profile. `GET /api/profiles/{id}` and duplicate checks (409) always see it.
    read_lag_s: float = 0.0
    #: Seconds before a suppress / unsuppress job applies; the job reads `processing` until then.
    suppression_lag_s: float = 0.0
    #: ISO regions whose phone numbers are refused: "Phone number is valid but is not in a supported
    #: region for this account." (400 on single writes; see `unsupported_phone_bulk_import_error`).
    unsupported_phone_regions: list[str] = field(default_factory=list)
    #: Bulk import: False refuses the whole request at submit (400, the row's phone pointer: observed
    #: live); True accepts it and records the row as an import error instead.
    unsupported_phone_bulk_import_error: bool = False
    #: A bulk import row whose email and phone belong to two profiles merges them (Klaviyo's
    #: deterministic profile merge) instead of failing as `duplicate_profile`. See `GET /_fake/merges`.
    merge_on_link: bool = False
    #: Seconds (fake clock) between accepting an event (`202`) and processing it: until then it is not
    #: listed, has no metric and creates or changes no profile. Klaviyo: "does not guarantee that
    #: processing is complete" (spec, create_event); how long it takes is not documented.
    event_lag_s: float = 0.0
    #: A bulk event job one of whose events repeats an event already recorded (same profile, metric and
    #: unique_id, or time to the second without one) records nothing at all: the spec says "the request
    #: will fail and no events will be processed" (UNCONFIRMED whether that covers events of earlier
    #: requests: the least kind reading is the default). False = such events are dropped one by one,
    #: as `POST /api/events` documents ("only the first processed event will be recorded").
    event_bulk_repeat_fails_job: bool = True
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
    if name == "unsupported_phone_regions":
        if isinstance(raw, str):
            raw = [r for r in raw.split(",") if r.strip()]
        if isinstance(raw, list) and all(isinstance(r, str) and len(r.strip()) == 2 and r.strip().isalpha()
                                         for r in raw):
            return [r.strip().upper() for r in raw]
        raise ValueError("unsupported_phone_regions must be a list of 2-letter ISO region codes")
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
            if name.endswith(("_rate", "_share")) and raw > 1:
                raise ValueError(f"{name} is a share between 0 and 1")
            if name.endswith("_scale") and raw == 0:
                raise ValueError(f"{name} must be greater than 0")
            return float(raw)
        raise ValueError(f"{name} must be a non-negative number")
    raise ValueError(f"cannot set {name}")


#: The knobs the presets set; everything else (rate limits, faults, seed) is left alone by them.
REALISM_KNOBS = ("job_seconds", "job_seconds_per_1000_rows", "job_queued_share", "job_counts_null",
                 "job_cancel_rate", "job_cancel_after_share", "job_stuck_rate", "job_stuck_after_share",
                 "import_error_row_pointer", "read_lag_s", "suppression_lag_s", "unsupported_phone_regions",
                 "unsupported_phone_bulk_import_error", "merge_on_link", "event_lag_s")
KIND_REALISM: dict[str, Any] = {name: Knobs().as_dict()[name] for name in REALISM_KNOBS}


def realistic_knobs(time_scale: float = 1.0) -> dict[str, Any]:
    """Klaviyo's orders of magnitude, durations multiplied by `time_scale` (0 = the kind defaults).

    Sources (reference/klaviyo-api.md): job durations are UNCONFIRMED ("tens of seconds to minutes",
    DESIGN.md), so 30 s + 10 s per 1,000 rows is an estimate; read lag is not documented at all
    (read-your-writes is "not guaranteed for filtered list queries"), 5 s is an estimate; suppression
    was observed to take ~2-4 h once in a sandbox: 60 s is deliberately shorter so runs stay
    practical (set `suppression_lag_s` for more); the phone region refusal was observed live (Italy
    as the example region is our pick); the merge is Klaviyo's documented deterministic merge; events
    are processed after they are accepted (spec), 5 s is an estimate.
    """
    if not isinstance(time_scale, int | float) or isinstance(time_scale, bool) or time_scale < 0:
        raise ValueError("time_scale must be a non-negative number")
    if time_scale == 0:
        return dict(KIND_REALISM)
    def scaled(seconds: float) -> float:
        return round(seconds * float(time_scale), 9)

    return {
        **KIND_REALISM,
        "job_seconds": scaled(30.0),
        "job_seconds_per_1000_rows": scaled(10.0),
        "job_queued_share": 0.2,
        "import_error_row_pointer": False,
        "read_lag_s": scaled(5.0),
        "suppression_lag_s": scaled(60.0),
        "unsupported_phone_regions": ["IT"],
        "merge_on_link": True,
        "event_lag_s": scaled(5.0),
    }


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
