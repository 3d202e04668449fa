"""`FakeLoyaleControl`: a small synchronous client for the fake Loyale's `/_fake/*` control API.

Tests, the demo and the benchmarks use it to create schemes, add hostile customers, mutate customers
(each mutation emits its webhook), steer knobs and the clock, and read what the fake saw. It does not
talk to the `/api/*` surface: that is what the product's own Loyale client is for.
"""

from __future__ import annotations

import time
from typing import Any

import httpx


def _given(body: dict[str, Any]) -> dict[str, Any]:
    """The body without the arguments left out (None)."""
    return {k: v for k, v in body.items() if v is not None}


class FakeLoyaleError(RuntimeError):
    """The control API refused a call (unknown scheme or customer, bad knob, ...)."""


class FakeLoyaleControl:
    def __init__(self, base_url: str, timeout_s: float = 30.0, http: httpx.Client | None = None) -> None:
        """`http`: a client to send through instead of a new one, e.g. Starlette's `TestClient` over
        `create_app()` to drive the fake in process (closed by `close()` too)."""
        self.base_url = base_url.rstrip("/")
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout_s)

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

    def earn(self, scheme_id: str, customer_id: str, points: float, monetary: float | None = None, *,
             value: float | None = None, currency: str | None = None, outlet: str | None = None,
             external_ref: str | None = None, description: str | None = None, transaction_date: str | None = None,
             coupons_used: list[str] | None = None, updated_by: str | None = None) -> dict[str, Any]:
        """A purchase earning `points` (topic 2): `monetary` = their money (default points / 100),
        `value` the sale, `outlet` a name or id (made on first use), `external_ref` the till's reference,
        `transaction_date` Loyale's time of it (default: the fake clock). -> the TransactionResultView,
        with `cachedResultantPointValue` the balance after."""
        return self.transaction(scheme_id, customer_id, points, monetary, value=value, currency=currency,
                                outlet=outlet, external_ref=external_ref, description=description,
                                transaction_date=transaction_date, coupons_used=coupons_used, updated_by=updated_by)

    def spend(self, scheme_id: str, customer_id: str, points: float, monetary: float | None = None, *,
              outlet: str | None = None, external_ref: str | None = None, description: str | None = None,
              transaction_date: str | None = None, coupons_used: list[str] | None = None,
              updated_by: str | None = None) -> dict[str, Any]:
        """A redemption of `points` (> 0; a Redeem with a negative pointValue, topic 2); refused beyond the
        balance."""
        return self.transaction(scheme_id, customer_id, -points, None if monetary is None else -monetary,
                                outlet=outlet, external_ref=external_ref, description=description,
                                transaction_date=transaction_date, coupons_used=coupons_used, updated_by=updated_by)

    def transaction(self, scheme_id: str, customer_id: str, points: float, monetary: float | None = None, *,
                    kind: int | None = None, value: float | None = None, currency: str | None = None,
                    outlet: str | None = None, external_ref: str | None = None, description: str | None = None,
                    transaction_date: str | None = None, coupons_used: list[str] | None = None,
                    updated_by: str | None = None) -> dict[str, Any]:
        """Any transaction (`kind`: LoyaleTransactionType, default Purchase or Redeem by the sign; TopUp = 5
        sends no webhook). Uses the customer coupons in `coupons_used` (topic 7 each)."""
        body = {"points": points, "monetary": monetary, "kind": kind, "value": value, "currency": currency,
                "outlet": outlet, "external_ref": external_ref, "description": description,
                "transaction_date": transaction_date, "coupons_used": coupons_used, "updated_by": updated_by}
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers/{customer_id}/transactions", _given(body))

    def transactions(self, scheme_id: str, customer_id: str | None = None) -> list[dict[str, Any]]:
        """The scheme's transactions (of one customer), in the order they were made."""
        query = f"?customer_id={customer_id}" if customer_id else ""
        return self._call("GET", f"/_fake/schemes/{scheme_id}/transactions{query}")["transactions"]

    def define_coupon(self, scheme_id: str, name: str, uses: int = 1, *, description: str | None = None,
                      valid_from: str | None = None, valid_to: str | None = None,
                      external_reference: str | None = None) -> dict[str, Any]:
        """A coupon of the scheme (CouponResultView, no webhook); `uses` = initialNumberOfUses."""
        body = {"name": name, "uses": uses, "description": description, "valid_from": valid_from,
                "valid_to": valid_to, "external_reference": external_reference}
        return self._call("POST", f"/_fake/schemes/{scheme_id}/coupons", _given(body))

    def issue_coupon(self, scheme_id: str, customer_id: str, *, coupon_id: str | None = None,
                     name: str | None = None, uses: int = 1, updated_by: str | None = None) -> dict[str, Any]:
        """Link a coupon to the customer (topic 6): `coupon_id`, or a new coupon `name` of `uses` uses.
        -> the CustomerCouponResultView (its `id` is what `use_coupon` takes)."""
        body = {"coupon_id": coupon_id, "name": name, "uses": uses, "updated_by": updated_by}
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers/{customer_id}/coupons", _given(body))

    def use_coupon(self, scheme_id: str, customer_coupon_id: str, updated_by: str | None = None) -> dict[str, Any]:
        """One use of a customer's coupon (topic 7); refused (409) when none is left."""
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customer-coupons/{customer_coupon_id}/use",
                          {"updated_by": updated_by} if updated_by else {})

    def customer_coupons(self, scheme_id: str, customer_id: str | None = None) -> list[dict[str, Any]]:
        query = f"?customer_id={customer_id}" if customer_id else ""
        return self._call("GET", f"/_fake/schemes/{scheme_id}/customer-coupons{query}")["customer_coupons"]

    def join_scheme(self, scheme_id: str, customer_id: str, updated_by: str | None = None) -> dict[str, Any]:
        """The customer joins the scheme again (topic 0); new customers join by `add_customers`."""
        return self.action(scheme_id, customer_id, "join", updated_by)

    def leave_scheme(self, scheme_id: str, customer_id: str, updated_by: str | None = None) -> dict[str, Any]:
        """The customer leaves the scheme (topic 3): no longer listed, still readable by id."""
        return self.action(scheme_id, customer_id, "leave", updated_by)

    def set_balance(self, scheme_id: str, customer_id: str, points: float | None = None,
                    monetary: float | None = None, *, points_delta: float | None = None,
                    monetary_delta: float | None = None, updated_by: str | None = None) -> dict[str, Any]:
        """A balance change as a transaction (stored, topic 2): absolute values and/or deltas."""
        body = {"points": points, "monetary": monetary, "points_delta": points_delta,
                "monetary_delta": monetary_delta, "updated_by": updated_by}
        return self._call("POST", f"/_fake/schemes/{scheme_id}/customers/{customer_id}/balance", _given(body))

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

    def lost_webhooks(self) -> list[dict[str, Any]]:
        """Events lost on purpose (knobs `webhook_loss_rate`, `webhook_lose_next`): {event_id, topic,
        customer_id, data, subscriptions, at}; no subscription received them."""
        return self._call("GET", "/_fake/webhooks/deliveries")["lost"]

    def lose_next_webhook(self, *topics: int) -> dict[str, Any]:
        """The next event of each topic given is lost (e.g. `lose_next_webhook(2)`: the next transaction's)."""
        return self.set_knobs(webhook_lose_next=[*self.knobs()["webhook_lose_next"], *topics])

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
