"""Typed client for the Loyale admin API: login, paging through customers, one customer, levels.

The admin token is fetched on first use and again on any 401 (Loyale does not document its
lifetime). Throttling (429), 5xx, timeouts and resets are retried here with capped exponential
backoff (tenacity), honouring Retry-After when Loyale sends one, so a producer paging through a
scheme resumes from the page that failed instead of starting over.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from pydantic import SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from worker.errors import RetryableError, TenantFatalError

log = structlog.get_logger("loyale")

PAGE_SIZE_MAX = 100
#: The Loyale fields the sync maps; everything else (barcode, devices, password state) stays out of
#: the queue, so the least personal data possible sits in Redis.
SNAPSHOT_FIELDS = (
    "id", "email", "firstName", "lastName", "dob", "areaCode", "mobileNumber", "addressLine1", "addressLine2",
    "town", "state", "postCode", "country", "profileImageUrl", "marketingSub", "deleted", "onHold",
    "updatedDate", "updatedBy", "tags",
)


#: Loyale webhook topics that change what we sync: join (0), account update (1), transaction (2),
#: leave (3), additional fields (4, 5), activate (8), suspend (9), points transfer (10), delete (11).
WEBHOOK_TOPICS = (0, 1, 2, 3, 4, 5, 8, 9, 10, 11)


class CustomerNotFound(Exception):
    """Raised when Loyale has no customer with the id asked for (404)."""


@dataclass(frozen=True)
class Page:
    number: int
    customers: list[Any]
    total_pages: int | None
    total_count: int | None


def _wait(fallback: Any) -> Any:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after_s", None)
        return float(hinted) if hinted is not None else float(fallback(state))
    return wait


class LoyaleClient:
    """One tenant's Loyale scheme, read with its admin user. `http` is passed in and shared."""

    def __init__(self, http: httpx.Client, *, tenant: str, base_url: str, scheme_id: str, admin_email: str,
                 admin_password: SecretStr, max_attempts: int = 6, max_wait_s: float = 30.0) -> None:
        self._http = http
        self.tenant = tenant
        self._base = base_url.rstrip("/")
        self.scheme_id = scheme_id
        self._email = admin_email
        self._password = admin_password
        self._token: str | None = None
        self._levels: dict[str, str] = {}
        self._retrying = Retrying(
            stop=stop_after_attempt(max_attempts),
            wait=_wait(wait_exponential_jitter(multiplier=0.5, max=max_wait_s, jitter=0.5)),
            retry=retry_if_exception_type(RetryableError),
            reraise=True,
            before_sleep=lambda s: log.info("loyale_retry", tenant=tenant, attempt=s.attempt_number,
                                            error=str(s.outcome.exception() if s.outcome else "")),
        )

    # --- transport -------------------------------------------------------------------------------

    def _scheme_headers(self) -> dict[str, str]:
        # Loyale's docs name the header X-Scheme; older routes use Scheme. Send both.
        return {"X-Scheme": self.scheme_id, "Scheme": self.scheme_id, "Accept": "application/json"}

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, f"{self._base}{path}", **kwargs)
        except httpx.TimeoutException as exc:
            raise RetryableError(f"Loyale did not answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise RetryableError(f"connection to Loyale failed ({type(exc).__name__}: {exc})") from exc

    def login(self) -> None:
        """Fetch an admin token; raises TenantFatalError if the credentials or the scheme are wrong."""
        response = self._send("POST", "/api/AdminToken", headers={**self._scheme_headers()},
                              json={"email": self._email, "password": self._password.get_secret_value()})
        self._check(response, "login")
        token = _json(response).get("token") if isinstance(_json(response), dict) else None
        if not token:
            raise RetryableError("Loyale's AdminToken answer carried no token")
        self._token = str(token)

    def _check(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _loyale_message(response)
        if status == 429:
            after = response.headers.get("Retry-After")
            raise RetryableError(f"Loyale throttled {what} (429)",
                                 retry_after_s=float(after) if after and after.isdigit() else None)
        if status >= 500:
            raise RetryableError(f"Loyale answered {status} to {what}: {message}")
        if status == 401 and what == "login":
            raise TenantFatalError(self.tenant, f"Loyale refused the admin login ({message}); check "
                                                "loyale_admin_email and loyale_admin_password")
        if status == 403 or (status == 400 and what == "login"):
            raise TenantFatalError(self.tenant, f"Loyale refused access to scheme {self.scheme_id} ({status}: "
                                                f"{message}); check loyale_scheme_id and the admin's rights")
        if status == 404:
            raise CustomerNotFound(message)
        raise TenantFatalError(self.tenant, f"Loyale answered {status} to {what}: {message}")

    def _get_once(self, path: str, params: dict[str, Any] | None) -> httpx.Response:
        if self._token is None:
            self.login()
        response = self._send("GET", path, params=params,
                              headers={**self._scheme_headers(), "Authorization": f"Bearer {self._token}"})
        if response.status_code == 401:
            self.login()  # the token expired or was revoked: one fresh login, then the answer stands
            response = self._send("GET", path, params=params,
                                  headers={**self._scheme_headers(), "Authorization": f"Bearer {self._token}"})
            if response.status_code == 401:
                raise TenantFatalError(self.tenant, "Loyale rejects a fresh admin token (401); check the admin user")
        self._check(response, f"GET {path}")
        return response

    def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """GET with auth, refresh-on-401 and retries of transient failures."""
        return self._retrying(self._get_once, path, params)

    # --- customers -------------------------------------------------------------------------------

    def page(self, number: int, *, filters: str | None = None, sorts: str | None = None,
             page_size: int = PAGE_SIZE_MAX) -> Page:
        params: dict[str, Any] = {"Page": number, "PageSize": min(page_size, PAGE_SIZE_MAX)}
        if filters:
            params["Filters"] = filters
        if sorts:
            params["Sorts"] = sorts
        response = self.get("/api/Customer", params)
        body = _json(response)
        if not isinstance(body, list):
            raise RetryableError("Loyale's customer list was not a JSON array")
        return Page(number, body, _int(response.headers.get("X-Total-Pages")),
                    _int(response.headers.get("X-Total-Count")))

    def pages(self, *, filters: str | None = None, sorts: str | None = None, page_size: int = PAGE_SIZE_MAX,
              start_page: int = 1) -> Iterator[Page]:
        """Every page of customers, one at a time (memory does not grow with the scheme)."""
        number = start_page
        while True:
            page = self.page(number, filters=filters, sorts=sorts, page_size=page_size)
            if page.customers:
                yield page
            last = page.total_pages is not None and number >= page.total_pages
            if not page.customers or last or len(page.customers) < min(page_size, PAGE_SIZE_MAX):
                return
            number += 1

    def customer(self, customer_id: str) -> dict[str, Any]:
        """One customer by id; raises CustomerNotFound."""
        body = _json(self.get(f"/api/Customer/{customer_id}"))
        if not isinstance(body, dict):
            raise RetryableError("Loyale's customer answer was not a JSON object")
        return body

    def subscribe(self, topic: int, url: str, email: str) -> None:
        """POST /api/Webhook/Subscribe (several subscriptions per topic are allowed)."""
        def once() -> None:
            if self._token is None:
                self.login()
            response = self._send("POST", "/api/Webhook/Subscribe", json={"topic": topic, "url": url, "email": email},
                                  headers={**self._scheme_headers(), "Authorization": f"Bearer {self._token}"})
            self._check(response, "POST /api/Webhook/Subscribe")
        self._retrying(once)

    # --- levels ----------------------------------------------------------------------------------

    def level_names(self, refresh: bool = False) -> dict[str, str]:
        """Level id -> name for the scheme, cached for the life of the client."""
        if self._levels and not refresh:
            return self._levels
        levels: dict[str, str] = {}
        number = 1
        while True:
            response = self.get("/api/Level", {"Page": number, "PageSize": PAGE_SIZE_MAX})
            body = _json(response)
            items = body if isinstance(body, list) else []
            for item in items:
                if isinstance(item, dict) and item.get("id") and item.get("name"):
                    levels[str(item["id"])] = str(item["name"])
            total = _int(response.headers.get("X-Total-Pages"))
            if not items or (total is not None and number >= total) or len(items) < PAGE_SIZE_MAX:
                break
            number += 1
        self._levels = levels
        return levels

    def snapshot(self, raw: Any) -> dict[str, Any]:
        """The task payload for a customer: the mapped fields only, level ids resolved to names."""
        if not isinstance(raw, dict):
            return {"id": None}
        payload = {key: raw[key] for key in SNAPSHOT_FIELDS if key in raw}
        held = raw.get("Levels") or raw.get("levels") or []
        level_ids = [str(lv.get("levelId")) for lv in (held if isinstance(held, list) else [])
                     if isinstance(lv, dict) and lv.get("levelId")]
        if level_ids:
            names = self.level_names()
            if any(lid not in names for lid in level_ids):
                names = self.level_names(refresh=True)  # a level created since we cached
            payload["levelNames"] = [names[lid] for lid in level_ids if lid in names]
        balance = raw.get("balance")
        if isinstance(balance, dict):
            payload["points_balance"] = balance.get("pointsValue")
            payload["monetary_balance"] = balance.get("monetaryValue")
        fields = raw.get("additionalCustomerFields")
        if isinstance(fields, list):
            # Internal fields never leave the producer. A flag that is neither plainly public nor
            # plainly internal ("true", 2, ...) travels without its value, for the worker to record
            # a warning and not sync it (worker/models.py).
            payload["additionalCustomerFields"] = [
                {"key": f.get("key"), "value": f.get("value") if f.get("internal") in (None, False) else None,
                 "internal": f.get("internal") or False}
                for f in fields if isinstance(f, dict) and f.get("internal") is not True
            ]
        return payload


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RetryableError(f"Loyale answered {response.status_code} with a body that is not JSON") from exc


def _loyale_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.reason_phrase or str(response.status_code)
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        return "; ".join(str(e) for e in body["errors"])[:300]
    return response.reason_phrase or str(response.status_code)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
