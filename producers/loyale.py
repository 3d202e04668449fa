"""Typed client for the Loyale admin API: login, paging through customers, one customer, levels.

The admin token is fetched on first use and again on any 401 (Loyale does not document its
lifetime). Throttling (429), 5xx, timeouts and resets are retried here as `worker.retry.decide` says
(capped exponential backoff, or Loyale's Retry-After when it sends one), so a producer paging through a
scheme resumes from the page that failed instead of starting over.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import structlog
from pydantic import SecretStr

from worker.errors import RetryableError, SyncError, TenantFatalError
from worker.messages import Snapshot, UnreadableCustomer, read_snapshot
from worker.retry import Retry, RetryPolicy, decide, parse_retry_after

log = structlog.get_logger("loyale")

T = TypeVar("T")

PAGE_SIZE_MAX = 100
#: The Loyale fields the sync maps; everything else (barcode, devices, password state) stays out of
#: the queue, so the least personal data possible sits in Redis.
SNAPSHOT_FIELDS = (
    "id", "email", "firstName", "lastName", "dob", "areaCode", "mobileNumber", "addressLine1", "addressLine2",
    "town", "state", "postCode", "country", "profileImageUrl", "marketingSub", "deleted", "onHold",
    "updatedDate", "updatedBy", "tags",
)


#: Loyale webhook topics that change what we sync: join (0), account update (1), transaction (2),
#: leave (3), additional fields (4, 5), coupon linked and used (6, 7: loyalty events), activate (8),
#: suspend (9), points transfer (10), delete (11).
WEBHOOK_TOPICS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)


class CustomerNotFound(Exception):
    """Raised when Loyale has no customer with the id asked for: a 404 to `GET /api/Customer/{id}`.

    The only 404 that means "this customer is gone" (its Klaviyo profile is then suppressed)."""


class LoyaleRouteMissing(SyncError):
    """Raised on a 404 to any other route (the customer list, levels, balances, a mistyped base URL).

    Not a statement about any customer: nothing is suppressed because of it. The message names the
    route and what to check."""

    def __init__(self, tenant: str, route: str, base_url: str, message: str) -> None:
        super().__init__(
            f"tenant {tenant!r}: Loyale at {base_url} answered 404 to {route} ({message}): the route is missing. "
            "Check loyale_base_url (the root of Loyale's API, e.g. https://api.loyale.io) and that this Loyale "
            "offers the route to the admin user")
        self.tenant = tenant
        self.route = route


#: `GET /api/Customer/{id}`: the one route whose 404 means the customer is gone.
_CUSTOMER_BY_ID = re.compile(r"^/api/Customer/[^/]+$", re.IGNORECASE)
#: After a failed level lookup, levels are not asked for again for this long (each customer would
#: otherwise pay the client's retries); customers meanwhile sync without `Levels` (levelsUnknown).
LEVELS_RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class Page:
    number: int
    customers: list[Any]
    total_pages: int | None
    total_count: int | None


class LoyaleClient:
    """One tenant's Loyale scheme, read with its admin user. `http` is passed in and shared."""

    def __init__(self, http: httpx.Client, *, tenant: str, base_url: str, scheme_id: str, admin_email: str,
                 admin_password: SecretStr, max_attempts: int = 6, max_wait_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._http = http
        self.tenant = tenant
        self._base = base_url.rstrip("/")
        self.scheme_id = scheme_id
        self._email = admin_email
        self._password = admin_password
        self._token: str | None = None
        self._levels: dict[str, str] = {}
        self._levels_failed_at: float | None = None
        # Waits 0.5 s, 1 s, 2 s... plus up to 0.5 s, at most `max_wait_s`; Loyale's Retry-After as it is.
        self._policy = RetryPolicy(max_attempts=max_attempts, base_s=0.5, max_s=max_wait_s, additive_jitter_s=0.5,
                                   min_countdown_s=0.0, max_countdown_s=math.inf)
        self._sleep = sleep

    def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, its passing failures retried as the policy decides (the last one raised)."""
        attempt = 1
        while True:
            try:
                return fn(*args)
            except RetryableError as exc:
                decision = decide(exc, attempt, 0, self._policy)
                if not isinstance(decision, Retry):
                    raise
                log.info("loyale_retry", tenant=self.tenant, attempt=attempt, error=str(exc))
                self._sleep(decision.countdown_s)
                attempt = decision.attempt

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
            raise RetryableError(f"Loyale throttled {what} (429)",
                                 retry_after_s=parse_retry_after(response.headers.get("Retry-After")))
        if status >= 500:
            raise RetryableError(f"Loyale answered {status} to {what}: {message}")
        if status == 401 and what == "login":
            raise TenantFatalError(self.tenant, f"Loyale refused the admin login ({message}); check "
                                                "loyale_admin_email and loyale_admin_password")
        if status == 403 or (status == 400 and what == "login"):
            raise TenantFatalError(self.tenant, f"Loyale refused access to scheme {self.scheme_id} ({status}: "
                                                f"{message}); check loyale_scheme_id and the admin's rights")
        if status == 404:
            route = what.removeprefix("GET ")
            if what.startswith("GET ") and _CUSTOMER_BY_ID.match(route):
                raise CustomerNotFound(message)
            raise LoyaleRouteMissing(self.tenant, "POST /api/AdminToken" if what == "login" else what,
                                     self._base, message)
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
        return self.list_page("/api/Customer", number, filters=filters, sorts=sorts, page_size=page_size)

    def list_page(self, route: str, number: int, *, filters: str | None = None, sorts: str | None = None,
                  page_size: int = PAGE_SIZE_MAX) -> Page:
        """One page of a Loyale list route (a bare JSON array, Sieve `Filters`/`Sorts`, paging headers)."""
        params: dict[str, Any] = {"Page": number, "PageSize": min(page_size, PAGE_SIZE_MAX)}
        if filters:
            params["Filters"] = filters
        if sorts:
            params["Sorts"] = sorts
        response = self.get(route, params)
        body = _json(response)
        if not isinstance(body, list):
            raise RetryableError(f"Loyale's answer to GET {route} was not a JSON array")
        return Page(number, body, _int(response.headers.get("X-Total-Pages")),
                    _int(response.headers.get("X-Total-Count")))

    def pages(self, *, filters: str | None = None, sorts: str | None = None,
              page_size: int = PAGE_SIZE_MAX) -> Iterator[Page]:
        """Every page of customers, one at a time (memory does not grow with the scheme)."""
        number = 1
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
        """Level id -> name for the scheme, cached for the life of the client.

        Raises LoyaleRouteMissing (404), RetryableError or TenantFatalError when the lookup fails;
        `snapshot` turns that into "levels unknown" for the customer, never into a missing customer."""
        if self._levels and not refresh:
            return self._levels
        levels: dict[str, str] = {}
        number = 1
        while True:
            response = self.get("/api/Level", {"Page": number, "PageSize": PAGE_SIZE_MAX})
            body = _json(response)
            if not isinstance(body, list):
                raise RetryableError("Loyale's level list was not a JSON array")
            for item in body:
                if isinstance(item, dict) and item.get("id") and item.get("name"):
                    levels[str(item["id"])] = str(item["name"])
            total = _int(response.headers.get("X-Total-Pages"))
            if not body or (total is not None and number >= total) or len(body) < PAGE_SIZE_MAX:
                break
            number += 1
        self._levels = levels
        return levels

    def _level_names_for(self, level_ids: list[str]) -> list[str] | None:
        """The names of the levels a customer holds, or None when they cannot be known now.

        Cached names are used while they cover every id (also after the level route started
        failing: "last good names"); an id not in the cache refreshes it once. A failed lookup logs
        a warning and is not tried again for LEVELS_RETRY_AFTER_S."""
        if self._levels and all(lid in self._levels for lid in level_ids):
            return [self._levels[lid] for lid in level_ids]
        if self._levels_failed_at is not None and time.monotonic() - self._levels_failed_at < LEVELS_RETRY_AFTER_S:
            return None
        try:
            names = self.level_names(refresh=bool(self._levels))
        except (LoyaleRouteMissing, RetryableError, TenantFatalError) as exc:
            self._levels_failed_at = time.monotonic()
            log.warning("loyale_levels_unknown", tenant=self.tenant, error=str(exc),
                        effect="customers sync without Levels (Klaviyo's Levels property is left as it is) "
                               f"until the level lookup works again; retried after {LEVELS_RETRY_AFTER_S:.0f}s")
            return None
        self._levels_failed_at = None
        # An id the scheme's own level list does not hold (a deleted level) has no name to send.
        return [names[lid] for lid in level_ids if lid in names]

    # --- snapshot --------------------------------------------------------------------------------

    def snapshot(self, raw: Any) -> Snapshot:
        """The customer as a message carries it (see `customer_snapshot`), with this scheme's level names."""
        return customer_snapshot(raw, scheme_id=self.scheme_id, level_names=self._level_names_for)


def customer_snapshot(raw: Any, *, scheme_id: str | None,
                      level_names: Callable[[list[str]], list[str] | None]) -> Snapshot:
    """The customer as a message carries it: the mapped fields only, level ids resolved to names, parsed
    into `LoyaleCustomer` (a value of the wrong type is dropped with a warning the snapshot carries), or
    `UnreadableCustomer` when the record has no usable id (the worker records it `invalid`).

    Internal additional fields never leave the producer, nor does a field whose `internal` flag is not
    plainly true or false (its warning does)."""
    customer = read_snapshot(_loyale_payload(raw, scheme_id=scheme_id, level_names=level_names))
    if isinstance(customer, UnreadableCustomer):
        return customer
    return customer.model_copy(update={"additional_fields": [f for f in customer.additional_fields if not f.internal]})


def _loyale_payload(raw: Any, *, scheme_id: str | None,
                    level_names: Callable[[list[str]], list[str] | None]) -> dict[str, Any]:
    """The mapped fields of a raw Loyale customer, in Loyale's keys plus these (LoyaleCustomer's aliases):
      levelNames     the names of the customer's levels; `[]` when Loyale lists no level for them
      levelSince     level name -> when the customer reached it (`detailedLevels[].createdDate`), where given
      levelsUnknown  true when the levels could not be read (no `Levels` list on the customer, or the
                     level lookup failed): Klaviyo's `Levels` is then left untouched
      points_balance, monetary_balance
                     only when Loyale's `balance` carries `pointsValue` / `monetaryValue` with a value
      leftScheme     true when Loyale sends a non-empty `schemes` list without the tenant's scheme
                     (`scheme_id`): the customer left it, and counts as opted out. An absent or
                     empty list never counts as left.
    """
    if not isinstance(raw, dict):
        return {"id": None}
    payload = {key: raw[key] for key in SNAPSHOT_FIELDS if key in raw}
    held = raw["Levels"] if "Levels" in raw else raw.get("levels")
    if isinstance(held, list):
        level_ids = [str(lv.get("levelId")) for lv in held if isinstance(lv, dict) and lv.get("levelId")]
        names = level_names(level_ids) if level_ids else []
        if names is None:
            payload["levelsUnknown"] = True
        else:
            payload["levelNames"] = names
            if since := _level_since(raw, level_names):
                payload["levelSince"] = since
    else:
        payload["levelsUnknown"] = True   # not sent (or not a list): unknown, never "no levels"
    balance = raw.get("balance")
    if isinstance(balance, dict):
        for source, target in (("pointsValue", "points_balance"), ("monetaryValue", "monetary_balance")):
            if balance.get(source) is not None:
                payload[target] = balance[source]
    if scheme_id is not None and left_scheme(raw, scheme_id):
        payload["leftScheme"] = True
    fields = raw.get("additionalCustomerFields")
    if isinstance(fields, list):
        # Internal fields are left out. A flag that is neither plainly public nor plainly internal
        # ("true", 2, ...) is kept without its value, for the parse to warn and drop it (worker/models.py).
        payload["additionalCustomerFields"] = [
            {"key": f.get("key"), "value": f.get("value") if f.get("internal") in (None, False) else None,
             "internal": f.get("internal") or False}
            for f in fields if isinstance(f, dict) and f.get("internal") is not True
        ]
    return payload


def _level_since(raw: dict[str, Any], level_names: Callable[[list[str]], list[str] | None]) -> dict[str, str]:
    """Level name -> when the customer reached it (`detailedLevels[].createdDate`, as Loyale wrote it)."""
    detailed = raw.get("detailedLevels")
    since: dict[str, str] = {}
    for item in detailed if isinstance(detailed, list) else []:
        if isinstance(item, dict) and item.get("levelId") and isinstance(item.get("createdDate"), str):
            names = level_names([str(item["levelId"])])   # the names are cached: no request per level
            if names:
                since[names[0]] = item["createdDate"]
    return since


def gone_snapshot(customer_id: str) -> Snapshot:
    """A customer Loyale answers 404 for: deleted, so its Klaviyo profile is suppressed (never deleted)."""
    return read_snapshot({"id": customer_id, "deleted": True})


def fresh_snapshot(loyale: LoyaleClient, customer_id: str) -> Snapshot:
    """The customer as Loyale holds it now (as `sync.customer_hint` reads it); gone if Loyale answers 404."""
    try:
        return loyale.snapshot(loyale.customer(customer_id))
    except CustomerNotFound:
        return gone_snapshot(customer_id)


def left_scheme(raw: dict[str, Any], scheme_id: str) -> bool:
    """True only when Loyale sends a non-empty `schemes` list that lacks the tenant's scheme.

    A missing or empty list (Loyale's list route may not fill it) proves nothing, so it never counts."""
    schemes = raw.get("schemes")
    if not isinstance(schemes, list):
        return False
    ids = [str(s.get("id")).strip().lower() for s in schemes if isinstance(s, dict) and s.get("id")]
    return bool(ids) and scheme_id.strip().lower() not in ids


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
