"""A small sync client for the fake Klaviyo's `/_fake/*` control API (tests, demo, benchmark)."""

from __future__ import annotations

from typing import Any

import httpx

REVISION = "2026-07-15"


class FakeKlaviyoControl:
    """Mirrors the control endpoints one method each; raises `httpx.HTTPStatusError` on a refusal."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, http: httpx.Client | None = None):
        """`http`: a client to send through instead of a new one, e.g. Starlette's `TestClient` over
        `create_app()` to drive the fake in process (closed by `close()` too)."""
        self.base_url = base_url.rstrip("/")
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FakeKlaviyoControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = self._http.request(method, f"/_fake{path}", **kw)
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        return bool(self._call("GET", "/health").get("ok"))

    def reset(self) -> None:
        self._call("POST", "/reset")

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info")

    def accounts(self) -> list[dict[str, Any]]:
        return self._call("GET", "/accounts")["accounts"]

    def add_account(self, keys: list[str | dict[str, Any]], account_id: str | None = None) -> str:
        """`keys`: "pk_..." (all scopes) or {"key": "pk_...", "scopes": [...]}; returns the account id."""
        body: dict[str, Any] = {"keys": [{"key": k} if isinstance(k, str) else k for k in keys]}
        if account_id is not None:
            body["account_id"] = account_id
        return self._call("POST", "/accounts", json=body)["account_id"]

    def add_key(self, key: str, account_id: str | None = None, scopes: list[str] | None = None) -> None:
        body: dict[str, Any] = {"key": key, "account_id": account_id}
        if scopes is not None:
            body["scopes"] = scopes
        self._call("POST", "/keys", json=body)

    def revoke_key(self, key: str) -> None:
        self._call("POST", "/keys/revoke", json={"key": key})

    def seed_profiles(self, profiles: list[dict[str, Any]], account_id: str | None = None) -> list[str]:
        body: dict[str, Any] = {"profiles": profiles}
        if account_id is not None:
            body["account_id"] = account_id
        return self._call("POST", "/profiles", json=body)["ids"]

    def profiles(self, account_id: str | None = None) -> list[dict[str, Any]]:
        params = {"account_id": account_id} if account_id is not None else None
        return self._call("GET", "/profiles", params=params)["profiles"]

    def profile(self, profile_id: str) -> dict[str, Any]:
        return self._call("GET", f"/profiles/{profile_id}")

    def requests(self) -> dict[str, Any]:
        return self._call("GET", "/requests")

    def request_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        params = {"limit": limit} if limit is not None else None
        return self._call("GET", "/requests/log", params=params)["requests"]

    def knobs(self) -> dict[str, Any]:
        return self._call("GET", "/knobs")

    def set_knobs(self, **knobs: Any) -> dict[str, Any]:
        return self._call("POST", "/knobs", json=knobs)

    def realistic(self, time_scale: float = 1.0) -> dict[str, Any]:
        """Klaviyo's unkind behaviour, durations scaled by `time_scale` (0 = kind); returns the knobs."""
        return self._call("POST", "/realistic", json={"time_scale": time_scale})

    def kind(self) -> dict[str, Any]:
        """The realism knobs back to their kind defaults (other knobs unchanged); returns the knobs."""
        return self._call("POST", "/kind")

    def clock(self) -> dict[str, Any]:
        """{"frozen", "time" (epoch s), "now" (ISO), "offset_s"} of the fake clock."""
        return self._call("GET", "/clock")

    def freeze_clock(self) -> dict[str, Any]:
        return self._call("POST", "/clock", json={"freeze": True})

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the fake clock forward (frozen or not) and settle whatever became due."""
        return self._call("POST", "/clock", json={"advance_s": seconds})

    def unfreeze_clock(self) -> dict[str, Any]:
        """Let the fake clock run again from where it stands (it never goes backwards)."""
        return self._call("POST", "/clock", json={"freeze": False})

    def merges(self) -> list[dict[str, Any]]:
        """Profiles merged by `merge_on_link`: {account_id, kept_id, merged_id, email, phone_number,
        via, job_id, row, at}, oldest first."""
        return self._call("GET", "/merges")["merges"]

    def loop_lag_max_s(self) -> float:
        """The longest the fake's event loop was late since the last call (requests wait that long)."""
        return float(self._call("GET", "/loop-lag")["loop_lag_max_s"])

    def bulk_jobs(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Bulk import jobs of an account: {id, status, rows, created, completed} (epoch seconds on the
        fake clock; completed is None until the job has ended), in the order they were submitted."""
        params = {"account_id": account_id} if account_id is not None else None
        return self._call("GET", "/bulk-jobs", params=params)["jobs"]

    def event_log(self, account_id: str | None = None, metric: str | None = None,
                  profile_id: str | None = None) -> dict[str, Any]:
        """{"events": [...], "dropped": [...], "pending": n} of an account (see `events`)."""
        params = {k: v for k, v in (("account_id", account_id), ("metric", metric), ("profile_id", profile_id))
                  if v is not None}
        return self._call("GET", "/events", params=params or None)

    def events(self, account_id: str | None = None, metric: str | None = None,
               profile_id: str | None = None) -> list[dict[str, Any]]:
        """The events Klaviyo holds (processed, not dropped), in time order then in the order they were
        processed: {id, metric, metric_id, profile_id, time, timestamp, unique_id, properties, value,
        value_currency, backfill, via, job_id, received, recorded, profile_created, profile_changed}.
        `metric` (a name) and `profile_id` narrow the list."""
        return self.event_log(account_id, metric, profile_id)["events"]

    def dropped_events(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Events accepted (202) but not recorded, in processing order, each with its `reason`:
        "duplicate" (`duplicate_of` names the event kept), "unknown_profile", "job_failed_on_repeat"."""
        return self.event_log(account_id)["dropped"]

    def pending_events(self, account_id: str | None = None) -> int:
        """Events accepted but not processed yet (`event_lag_s`): advance the clock to process them."""
        return int(self.event_log(account_id)["pending"])

    def metrics(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """{id, name, service, created} of each metric, in the order events created them."""
        params = {"account_id": account_id} if account_id is not None else None
        return self._call("GET", "/metrics", params=params)["metrics"]

    def event_jobs(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Event bulk jobs: {id, status (queued, complete, failed), events, recorded, dropped, reason,
        created, completed (fake-clock epoch seconds)}; Klaviyo itself has no GET for them."""
        params = {"account_id": account_id} if account_id is not None else None
        return self._call("GET", "/event-jobs", params=params)["jobs"]

    def profiles_created_by_events(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Profiles an event created because it named an identifier no profile held: {profile_id,
        identifiers, via, job_id, metric, unique_id, at}, oldest first."""
        params = {"account_id": account_id} if account_id is not None else None
        return self._call("GET", "/event-profiles", params=params)["profiles"]

    def set_event_lag(self, seconds: float) -> dict[str, Any]:
        return self.set_knobs(event_lag_s=seconds)

    def set_job_timing(self, job_seconds: float, job_seconds_per_1000_rows: float = 0.0,
                       job_queued_share: float = 0.0) -> dict[str, Any]:
        return self.set_knobs(job_seconds=job_seconds, job_seconds_per_1000_rows=job_seconds_per_1000_rows,
                              job_queued_share=job_queued_share)

    def set_job_fates(self, cancel_rate: float = 0.0, cancel_after_share: float = 0.5, stuck_rate: float = 0.0,
                      stuck_after_share: float = 0.5) -> dict[str, Any]:
        return self.set_knobs(job_cancel_rate=cancel_rate, job_cancel_after_share=cancel_after_share,
                              job_stuck_rate=stuck_rate, job_stuck_after_share=stuck_after_share)

    def set_read_lag(self, seconds: float) -> dict[str, Any]:
        return self.set_knobs(read_lag_s=seconds)

    def set_suppression_lag(self, seconds: float) -> dict[str, Any]:
        return self.set_knobs(suppression_lag_s=seconds)

    def set_unsupported_phone_regions(self, regions: list[str], bulk_import_error: bool = False
                                      ) -> dict[str, Any]:
        return self.set_knobs(unsupported_phone_regions=regions, unsupported_phone_bulk_import_error=bulk_import_error)

    def set_merge_on_link(self, enabled: bool = True) -> dict[str, Any]:
        return self.set_knobs(merge_on_link=enabled)

    def spec_violations(self) -> list[dict[str, Any]]:
        return self._call("GET", "/spec-violations")["violations"]

    def api_client(self, key: str, revision: str = REVISION, **kw: Any) -> httpx.Client:
        """An httpx client for the fake's `/api` with the key and revision headers set."""
        headers = {"Authorization": f"Klaviyo-API-Key {key}", "revision": revision,
                   "Accept": "application/vnd.api+json", **kw.pop("headers", {})}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=kw.pop("timeout", 30.0), **kw)
