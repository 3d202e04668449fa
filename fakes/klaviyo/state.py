"""The fake's whole mutable state: accounts and keys, profiles, jobs, knobs, counters, fault dice."""

from __future__ import annotations

import random
import string
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fakes.klaviyo.config import AccountSpec, FakeKlaviyoConfig, KeySpec, Knobs, default_spec_path
from fakes.klaviyo.events import EventLog, EventSubmission
from fakes.klaviyo.profiles import ProfileStore, UlidGenerator
from fakes.klaviyo.ratelimit import RateLimiter
from fakes.klaviyo.spec import SpecInfo, SpecValidator, load_spec_info


class FakeClock:
    """The time every timed behaviour reads (jobs, read lag, suppression lag): the wall clock plus an
    offset, or frozen. It never goes backwards: unfreezing carries on from the frozen instant."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._frozen_at: float | None = None

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def time(self) -> float:
        """Seconds since the epoch on the fake clock."""
        return self._frozen_at if self._frozen_at is not None else time.time() + self._offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def freeze(self) -> None:
        if self._frozen_at is None:
            self._frozen_at = self.time()

    def unfreeze(self) -> None:
        if self._frozen_at is not None:
            self._offset = self._frozen_at - time.time()
            self._frozen_at = None

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the fake clock does not go backwards")
        if self._frozen_at is not None:
            self._frozen_at += seconds
        else:
            self._offset += seconds

    def as_dict(self) -> dict[str, Any]:
        now = self.time()
        return {"frozen": self.frozen, "time": now, "now": datetime.fromtimestamp(now, UTC).isoformat(),
                "offset_s": now - time.time()}


@dataclass
class BulkImportJob:
    id: str
    created_at: datetime
    total_count: int
    #: Rows not applied yet; dropped once the job has ended.
    rows: list[dict[str, Any]] | None
    list_ids: list[str]
    status: str = "queued"
    gets: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    profile_ids: list[str] = field(default_factory=list)
    #: Rows applied so far (successes + errors), in order.
    applied: int = 0
    #: How the job ends: "complete", "cancelled" or "stuck" (stays `processing`), after `fate_share`.
    fate: str = "complete"
    fate_share: float = 1.0
    #: Timed jobs (fake clock seconds); None = the job advances by GETs (`bulk_job_gets_per_step`).
    queued_until: float | None = None
    ends_at: float | None = None
    counts_null: bool = False
    #: A "stuck" job that has applied its share: it reads `processing` from now on.
    halted: bool = False

    @property
    def timed(self) -> bool:
        return self.queued_until is not None

    @property
    def ended(self) -> bool:
        return self.status in ("complete", "cancelled")

    @property
    def completed_count(self) -> int:
        return self.applied - len(self.errors)

    @property
    def failed_count(self) -> int:
        return len(self.errors)


@dataclass
class SuppressionJob:
    id: str
    #: "create" (suppress) or "delete" (unsuppress).
    kind: str
    created_at: datetime
    total_count: int
    completed_count: int
    skipped_count: int
    completed_at: datetime | None
    status: str = "complete"
    #: Emails still to apply and when (fake clock seconds); None once applied.
    emails: list[str] | None = None
    due: float | None = None


@dataclass
class Account:
    id: str
    store: ProfileStore
    bulk_jobs: dict[str, BulkImportJob] = field(default_factory=dict)
    suppression_jobs: dict[str, SuppressionJob] = field(default_factory=dict)
    events: EventLog = field(default_factory=EventLog)


@dataclass
class KeyRecord:
    key: str
    account_id: str
    #: None = every scope.
    scopes: frozenset[str] | None
    revoked: bool = False

    def allows(self, needed: tuple[str, ...]) -> bool:
        return self.scopes is None or all(s in self.scopes for s in needed)


@dataclass(frozen=True)
class FaultPlan:
    drop: bool = False
    stall: bool = False
    non_json_403: bool = False
    error_status: int | None = None


class FaultDice:
    """Draws the same number of values for every request, so a seed fixes the whole sequence."""

    def __init__(self, seed: int | None):
        self._rng = random.Random(seed)

    def draw(self, knobs: Knobs) -> FaultPlan:
        drop, stall, html, error, pick = (self._rng.random() for _ in range(5))
        statuses = knobs.error_statuses
        return FaultPlan(
            drop=drop < knobs.drop_rate,
            stall=stall < knobs.stall_rate,
            non_json_403=html < knobs.non_json_403_rate,
            error_status=statuses[int(pick * len(statuses))] if error < knobs.error_rate else None,
        )


class RequestStats:
    def __init__(self, log_size: int):
        self.total = 0
        self.by_endpoint: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_endpoint_status: dict[str, Counter[str]] = {}
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)

    def record(self, endpoint: str, status: str, entry: dict[str, Any]) -> None:
        self.total += 1
        self.by_endpoint[endpoint] += 1
        self.by_status[status] += 1
        self.by_endpoint_status.setdefault(endpoint, Counter())[status] += 1
        self.log.append(entry)

    def resize(self, size: int) -> None:
        if size != self.log.maxlen:
            self.log = deque(self.log, maxlen=size)

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_endpoint": dict(self.by_endpoint),
            "by_status": dict(self.by_status),
            "by_endpoint_status": {k: dict(v) for k, v in self.by_endpoint_status.items()},
        }


_ALNUM = string.ascii_letters + string.digits


class FakeKlaviyo:
    def __init__(self, config: FakeKlaviyoConfig):
        self.config = config
        self.spec: SpecInfo = load_spec_info(
            default_spec_path() if config.spec_path is None else Path(config.spec_path)
        )
        self.validator: SpecValidator | None = None
        if config.validate_requests_against_spec:
            if self.spec.raw is None:
                raise RuntimeError(f"spec validation asked for, but no spec at {self.spec.path}")
            self.validator = SpecValidator(self.spec.raw)
        # Generated startup accounts/keys are fixed here, so reset returns to the same ones.
        names = random.Random(config.knobs.seed)
        self.startup_accounts: list[AccountSpec] = []
        for spec in config.accounts or [AccountSpec()]:
            keys = spec.keys or [KeySpec("pk_" + "".join(names.choice("0123456789abcdef") for _ in range(34)))]
            account_id = spec.account_id or "".join(names.choice(_ALNUM) for _ in range(6))
            self.startup_accounts.append(AccountSpec(account_id, list(keys)))
        self.reset()

    def reset(self) -> None:
        self.knobs: Knobs = Knobs(**self.config.knobs.as_dict())
        self.ids = UlidGenerator(self.knobs.seed)
        self.dice = FaultDice(self.knobs.seed)
        self._names = random.Random(self.knobs.seed)
        self.accounts: dict[str, Account] = {}
        self.keys: dict[str, KeyRecord] = {}
        self.limiter = RateLimiter()
        self.stats = RequestStats(self.knobs.request_log_size)
        #: The longest the fake's event loop was late since the last read (`GET /_fake/loop-lag`): a
        #: request waits that long before the fake counts it against a rate limit.
        self.loop_lag_max_s = 0.0
        self.violations: deque[dict[str, Any]] = deque(maxlen=1000)
        self.clock = FakeClock()
        #: Draws the fate of bulk jobs (cancelled / stuck); seeded like the fault dice.
        self.job_dice = random.Random(self.knobs.seed)
        #: Profiles merged by `merge_on_link`, oldest first (`GET /_fake/merges`).
        self.merges: list[dict[str, Any]] = []
        #: Generates metric ids; seeded like the rest.
        self.metric_names = random.Random(self.knobs.seed)
        #: Timed bulk jobs, lagged suppression jobs and events still to settle, by job id.
        self.pending: dict[str, tuple[Account, BulkImportJob | SuppressionJob | EventSubmission]] = {}
        for spec in self.startup_accounts:
            self.add_account(spec.account_id, spec.keys)

    # -- accounts and keys -------------------------------------------------------------------

    @property
    def default_account(self) -> Account:
        return next(iter(self.accounts.values()))

    def add_account(self, account_id: str | None, keys: list[KeySpec]) -> Account:
        if account_id is None:
            account_id = "".join(self._names.choice(_ALNUM) for _ in range(6))
            while account_id in self.accounts:
                account_id = "".join(self._names.choice(_ALNUM) for _ in range(6))
        for k in keys:
            owner = self.keys.get(k.key)
            if owner is not None and owner.account_id != account_id:
                raise ValueError(f"key {k.key[:6]}... already belongs to account {owner.account_id}")
        account = self.accounts.get(account_id)
        if account is None:
            account = self.accounts[account_id] = Account(account_id, ProfileStore(self.ids))
        for k in keys:
            self.add_key(k.key, account_id, k.scopes)
        return account

    def add_key(self, key: str, account_id: str, scopes: list[str] | None) -> KeyRecord:
        if account_id not in self.accounts:
            raise KeyError(account_id)
        record = KeyRecord(key, account_id, None if scopes is None else frozenset(scopes))
        self.keys[key] = record
        return record

    def set_knobs(self, changes: dict[str, Any]) -> Knobs:
        new = self.knobs.updated(changes)
        if "seed" in changes:
            self.dice = FaultDice(new.seed)
            self.job_dice = random.Random(new.seed)
        limits = ("rate_limit_scale", "window_scale", "rate_limits_enabled")
        if any(getattr(new, k) != getattr(self.knobs, k) for k in limits):
            self.limiter.clear()
        self.stats.resize(new.request_log_size)
        self.knobs = new
        return new

    def profile_anywhere(self, profile_id: str) -> tuple[Account, Any] | None:
        for account in self.accounts.values():
            p = account.store.profiles.get(profile_id)
            if p is not None:
                return account, p
        return None

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()

