"""Errors, split by what the caller should do.

    SyncError
    ├── RetryableError            try again later (429, 5xx, timeouts, connection resets)
    │   ├── Throttled             Klaviyo said 429: wait `retry_after_s`, the whole tenant backs off
    │   └── Deferred              our own limiter or a busy lock says wait; not a failed attempt
    ├── TenantFatalError          the tenant's credentials or configuration are wrong: stop its work
    └── RecordRejected            this one customer cannot be written (Klaviyo 4xx): record and go on
        └── DuplicateProfile      409: an identifier belongs to another Klaviyo profile
    ConfigError                   settings or tenants file are wrong (raised at start-up, not in tasks)
"""

from __future__ import annotations


class SyncError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(SyncError):
    """Raised when settings or the tenants file are invalid; the message says how to fix them."""


class RetryableError(SyncError):
    """Raised when the call may succeed later; `retry_after_s` is the server's hint, if any."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Throttled(RetryableError):
    """Raised on HTTP 429: the account's quota for an endpoint is spent until `retry_after_s`."""


class Deferred(RetryableError):
    """Raised when our own limiter or a per-customer lock says wait; it does not count as an attempt."""


class TenantFatalError(SyncError):
    """Raised on 401/403 or a broken tenant config: no task of this tenant can succeed until it is fixed."""

    def __init__(self, tenant: str, message: str, status: int | None = None) -> None:
        super().__init__(f"tenant {tenant!r}: {message}")
        self.tenant = tenant
        self.reason = message
        self.status = status


class RecordRejected(SyncError):
    """Raised when Klaviyo refuses one customer's data (4xx); `detail` and `pointer` are Klaviyo's."""

    def __init__(self, status: int, code: str, detail: str, pointer: str | None = None,
                 errors: list[RecordRejected] | None = None) -> None:
        where = f" at {pointer}" if pointer else ""
        super().__init__(f"Klaviyo {status} {code}: {detail}{where}")
        self.status = status
        self.code = code
        self.detail = detail
        self.pointer = pointer
        #: Every error of the answer (a bulk import's 400 names each bad row); [self] if one.
        self.errors = errors or [self]

    @property
    def about_phone(self) -> bool:
        """The refusal is about the phone number (an unsupported region, an invalid number)."""
        return "phone_number" in (self.pointer or "") or "phone" in self.detail.lower()


def refuses_region(detail: str) -> bool:
    """Klaviyo's refusal of a phone for its region, not the number itself: "Phone number is valid but is
    not in a supported region for this account." (reference: klaviyo-api.md 3.6, 3.8). The account's
    setting: every phone of that region would be refused the same way."""
    return "supported region" in detail.lower()


class DuplicateProfile(RecordRejected):
    """Raised on 409 duplicate_profile: an identifier we sent belongs to profile `duplicate_profile_id`."""

    def __init__(self, detail: str, duplicate_profile_id: str | None, pointer: str | None = None) -> None:
        super().__init__(409, "duplicate_profile", detail, pointer)
        self.duplicate_profile_id = duplicate_profile_id
