"""`FakeLoyaleControl`: a small synchronous client for the fake Loyale's `/_fake/*` control API.

Tests, the demo and the benchmarks use it to create schemes, add hostile customers, mutate customers
(each mutation emits its webhook), steer knobs and the clock, and read what the fake saw. It does not
talk to the `/api/*` surface: that is what the product's own Loyale client is for.
"""

from __future__ import annotations

import time
from typing import Any

import httpx


class FakeLoyaleError(RuntimeError):
    """The control API refused a call (unknown scheme or customer, bad knob, ...)."""


class FakeLoyaleControl:
    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FakeLoyaleControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            raise FakeLoyaleError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    # ---- lifecycle ------------------------------------------------------------------------------------

    def health(self) -> bool:
        try:
            return self._http.get("/_fake/health").status_code == 200
        except httpx.HTTPError:
            return False

    def reset(self) -> dict[str, Any]:
        """Schemes, customers, tokens, subscriptions, deliveries, counters, clock and knobs back to the
        startup config."""
        return self._call("POST", "/_fake/reset")

    # ---- schemes and customers ------------------------------------------------------------------------

    def create_scheme(self, scheme_id: str | None = None, *, customers: int = 0, seed: int | None = None,
                      admin_email: str | None = None, admin_password: str | None = None,
                      name: str | None = None) -> dict[str, Any]:
        """-> {"scheme_id", "admin_email", "admin_password", "levels": [{id, name}], "customers", "name"}"""
        body = {"scheme_id": scheme_id, "customers": customers, "seed": seed, "admin_email": admin_email,
                "admin_password": admin_password, "name": name}
        return self._call("POST", "/_fake/schemes", {k: v for k, v in body.items() if v is not None})

    def schemes(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_fake/schemes")["schemes"]

    def add_customers(self, scheme_id: str, customers: list[dict[str, Any]], *, emit: bool = True,
                      updated_by: str | None = None) -> list[str]:
        """Store partial or hostile CustomerResultView dicts as given; emits topic 0 per customer."""
        body: dict[str, Any] = {"customers": customers, "emit": emit}
        if updated_by:
            body["updated_by"] = updated_by
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers", body)["ids"]

    def customers(self, scheme_id: str) -> list[dict[str, Any]]:
        """Every customer of the scheme, deleted and departed ones included, in insertion order."""
        return self._call("GET", f"/_fake/schemes/{scheme_id}/customers")["customers"]

    def customer(self, scheme_id: str, customer_id: str) -> dict[str, Any]:
        return self._call("GET", f"/_fake/schemes/{scheme_id}/customers/{customer_id}")

    # ---- mutations (each bumps updatedDate, sets updatedBy, emits its webhook) ------------------------

    def update_customer(self, scheme_id: str, customer_id: str, updated_by: str | None = None,
                        **fields: Any) -> dict[str, Any]:
        """Set fields (topic 1). `update_customer(s, c, marketingSub=False)` toggles consent."""
        return self._call("PATCH", f"/_fake/schemes/{scheme_id}/customers/{customer_id}",
                          {"fields": fields, "updated_by": updated_by})

    def action(self, scheme_id: str, customer_id: str, name: str, updated_by: str | None = None
               ) -> dict[str, Any]:
        """name: delete (11) | suspend (9) | activate (8) | leave (3) | join (0)."""
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers/{customer_id}/{name}",
                          {"updated_by": updated_by})

    def set_balance(self, scheme_id: str, customer_id: str, points: float | None = None,
                    monetary: float | None = None, *, points_delta: float | None = None,
                    monetary_delta: float | None = None, updated_by: str | None = None) -> dict[str, Any]:
        """A transaction (topic 2): absolute values and/or deltas."""
        body = {"points": points, "monetary": monetary, "points_delta": points_delta,
                "monetary_delta": monetary_delta, "updated_by": updated_by}
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers/{customer_id}/balance",
                          {k: v for k, v in body.items() if v is not None})

    def set_additional_field(self, scheme_id: str, customer_id: str, key: str, value: Any, *,
                             name: str | None = None, internal: bool | None = None,
                             updated_by: str | None = None) -> dict[str, Any]:
        """Create (topic 4) or update (topic 5) the additional field with this key."""
        body = {"key": key, "value": value, "name": name, "internal": internal, "updated_by": updated_by}
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers/{customer_id}/additional-fields",
                          {k: v for k, v in body.items() if v is not None or k == "value"})

    def set_levels(self, scheme_id: str, customer_id: str, level_ids: list[str],
                   updated_by: str | None = None) -> dict[str, Any]:
        """Replace the customer's levels (topic 1)."""
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers/{customer_id}/levels",
                          {"level_ids": level_ids, "updated_by": updated_by})

    def transfer(self, scheme_id: str, source_id: str, target_id: str, points: float,
                 updated_by: str | None = None) -> dict[str, Any]:
        """Move points between customers (topic 10). -> {"source": view, "target": view}"""
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers/{source_id}/transfer",
                          {"target_id": target_id, "points": points, "updated_by": updated_by})

    # ---- tokens, knobs, clock -------------------------------------------------------------------------

    def expire_tokens(self, token: str | None = None) -> int:
        """Invalidate every token (or just `token`); the next /api call with it answers 401."""
        return self._call("POST", "/_fake/tokens/expire", {"token": token} if token else {})["expired"]

    def knobs(self) -> dict[str, Any]:
        return self._call("GET", "/_fake/knobs")

    def set_knobs(self, **knobs: Any) -> dict[str, Any]:
        """Partial update, e.g. set_knobs(fail_next=[429, 500], latency_s=0.05)."""
        return self._call("POST", "/_fake/knobs", knobs)

    def clock(self) -> dict[str, Any]:
        return self._call("GET", "/_fake/clock")

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """-> {"now": iso, "offset_s": f}"""
        return self._call("POST", "/_fake/clock", {"advance_s": seconds})

    def set_clock_offset(self, seconds: float) -> dict[str, Any]:
        return self._call("POST", "/_fake/clock", {"offset_s": seconds})

    # ---- inspection -----------------------------------------------------------------------------------

    def deliveries(self) -> list[dict[str, Any]]:
        """Every webhook delivery attempt: {topic, url, attempt, status, ok, customer_id, ...}."""
        return self._call("GET", "/_fake/webhooks/deliveries")["deliveries"]

    def wait_for_deliveries(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Poll until no delivery is in flight (retries included), then return the attempts."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self._call("GET", "/_fake/webhooks/deliveries")
            if state["pending"] == 0:
                return state["deliveries"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{state['pending']} webhook deliveries still pending after {timeout_s}s")
            time.sleep(0.02)

    def requests(self) -> dict[str, Any]:
        """{"total", "by_route": {"GET /api/Customer": n}, "by_status": {"200": n}, "recent": [...]}"""
        return self._call("GET", "/_fake/requests")

    def reset_requests(self) -> None:
        self._call("DELETE", "/_fake/requests")
