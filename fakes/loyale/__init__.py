"""A faithful fake of Loyale's admin API (ASGI, Starlette), for tests, the demo and the benchmarks.

Served over real HTTP (`python -m fakes.loyale --port N`, or `fakes.serving.ServerProcess`), it models:
admin tokens (`POST /api/AdminToken`, expiry on the fake clock, revocation), the `X-Scheme`/`Scheme`
header and several schemes (tenants), Loyale's error envelope, `GET /api/Customer` with Sieve
`Filters`/`Sorts`/`Page`/`PageSize` and `X-Total-Count`/`X-Total-Pages`, `GET /api/Customer/{id}`
(CustomerResultView), `GET /api/Level[/{id}]`, `GET /api/PointBalance`, loyalty activity (transactions,
coupons linked to and used by customers, levels that may follow points: `fakes.loyale.activity`, with
`GET /api/Transaction`, `/api/CustomerCoupon`, `/api/Coupon` and their `/{id}`), webhook subscriptions
and asynchronous delivery with retries, duplicates, losses and a failed-jobs list, fault injection, and a
`/_fake/*` control API (see `fakes.loyale_control.FakeLoyaleControl`). Synthetic customers come from
`fakes.loyale_data`.

Not modelled (a client must not rely on the fake for these):
- write routes of the real API (POST/PUT Customer, PUT AdditionalCustomerFields, Suspend, Leave/Join,
  transactions, coupons, gift cards): changes are made through `/_fake/*` instead;
- `/api/v2/*` routes, `X-ApiKey` authentication, customer-user tokens, `POST /api/Customer/VerifyToken`,
  `GET /api/Scheme/{id}`, `GET /api/Transaction/GainRate`, "Get Information on Updated Customers";
- real rate limiting (429s only come from knobs), HTTPS, failure e-mails to the subscription's address,
  the "Retry Failed webhook" call, webhook topics 12, 13 and 14 (gift cards), line items, split
  transactions, dynamic coupons and rewards;
- Sieve's behaviour after an error when `ThrowExceptions` is false also skips sorting and paging (the
  whole table comes back); the fake drops only the filters and still sorts and pages;
- `signUpPlatform2`, `parent` and `customerDevices` of CustomerResultView (their types are unknown).

Modelling choices where the reference says UNCONFIRMED (guesses, chosen to be useful and documented):
- the list route `GET /api/Customer`, the Level routes, which properties are filterable/sortable
  (all scalar fields of each view), ordinal case-sensitive string comparison, nulls first ascending;
- `tags` (a list of tag names) lives on the customer view; Loyale's storage of tags is unknown;
- `balance` is `{"pointsValue", "monetaryValue"}`; PointBalance rows are `{customerId, schemeId,
  pointsValue, monetaryValue}`; a customer without a balance has no PointBalance row;
- the list excludes deleted customers unless `Filters` names `deleted`; `GET /api/Customer/{id}` still
  returns a deleted customer with `deleted: true`; a customer who left the scheme is not listed, stays
  readable by id, and loses the scheme from `schemes`; suspend sets `onHold: true`, activate clears it;
- every mutation bumps `updatedDate` (strictly increasing per customer) and sets `updatedBy`; a balance
  change does so only while knob `balance_bumps_updated_date` is on (default), and always stamps
  `lastTransactionDate`; additional-field changes bump the customer too;
- status codes: 401 for a missing/invalid/expired token (checked first), 400 for a missing or malformed
  scheme header, 403 for an unknown scheme or a token of another scheme; `errorId` is the reason phrase;
- AdminToken answers `{token, tokenType, expiresIn, expires, email, schemeId}` (only `token` is known);
  tokens live `token_ttl_s` (default 3600 s) on the fake clock;
- webhooks: a Bearer token is required to subscribe; re-subscribing the same (topic, url, email) is
  idempotent; http:// URLs are accepted while `allow_http_webhooks` is on (real Loyale wants https);
  unsubscribing nothing is a 404; 1 attempt + `webhook_max_retries` (10) retries; topic 2 sends the
  TransactionResultView, topics 6/7 the CustomerCouponResultView, topics 4/5 the
  AdditionalCustomerFieldsResultView, topic 10 `{sourceCustomerId: view, targetCustomerId: view, ...}`,
  the other customer topics the customer view (what `fakes.loyale.activity` guesses about transactions
  and coupons is in its docstring); a lost webhook (`webhook_loss_rate`, `webhook_lose_next`) reaches
  no subscription and is not retried nor listed as failed;
- Sieve paging: `PageSize` above the cap (100) returns 100 rows but skips `(Page-1)*PageSize` rows, as
  Sieve does (knob `clamp_page_size` switches to a consistent clamp).
- knob `missing_routes` (e.g. `["/api/Level"]`) answers those routes 404 "No route", as a Loyale
  without them would (the docs name a level route but never spell it out);
- knobs `paging_drift_per_page` / `paging_drift_max`: after each page of `GET /api/Customer`, that many of
  its customers are updated (updatedDate bumped, updatedBy `staff-edit@loyale.test`, no webhook), so a
  reader paging by number over `updatedDate` skips the customers that move up a page.
"""

from __future__ import annotations

from fakes.loyale.app import create_app
from fakes.loyale.state import FakeLoyaleConfig, Knobs, SchemeConfig

__all__ = ["FakeLoyaleConfig", "Knobs", "SchemeConfig", "create_app"]
