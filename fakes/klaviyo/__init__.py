"""A faithful fake of Klaviyo's REST API (revision 2026-07-15) for the profile sync, served over HTTP.

Facts come from `shared/reference/klaviyo-api.md` and Klaviyo's OpenAPI file, which is read at
runtime (`FAKE_KLAVIYO_SPEC`, default `<repo root>/../shared/klaviyo-openapi/stable.json`) for the
rate limits and scopes of each operation; without it a built-in table is used and a warning logged.

Implemented (paths with or without a trailing slash; `application/json` or `application/vnd.api+json`):

    GET   /api/accounts
    GET   /api/profiles                       filter, page[size|cursor], sort, fields/additional-fields
    POST  /api/profiles                       201; 409 duplicate_profile
    GET   /api/profiles/{id}
    PATCH /api/profiles/{id}                  null clears, properties/location merged, patch_properties
    POST  /api/profile-import                 201 created / 200 updated
    POST  /api/profile-bulk-import-jobs       202; GET .../{job_id}; GET .../{id}/import-errors
    POST  /api/profile-suppression-bulk-create-jobs and -delete-jobs (202), GET .../{job_id}

Every `/api` request: `Authorization: Klaviyo-API-Key pk_...` (401 not_authenticated /
authentication_failed), a `revision` header (400), the key's scopes (403), then the account's
fixed burst and steady windows for that operation (429 `throttled` with `Retry-After`, or
`RateLimit-*` headers on every other answer). Errors use the JSON:API envelope observed live.

Choices where Klaviyo's behaviour is UNCONFIRMED (each picked, not known):
  * Emails are stored as given and matched case-insensitively (filters, uniqueness, upsert matching).
  * A missing or malformed `revision` is 400 `invalid` with `source.parameter = "revision"`.
  * Oversized bodies are 413; a bulk row over 100 KB is a 400 with that row's pointer.
  * `any(...)` takes at most `max_any_values` (100) values; `links.next`/`prev` are omitted (not null)
    when there is no such page, and collection links point back at the fake's own host.
  * PATCH with a body id different from the URL id is 400 at `/data/id`; a type mismatch is 400.
  * `profile-import` with `data.id` plus an identifier owned by another profile answers 404
    "A profile with id ... does not exist." (observed once live), not 409.
  * Without `data.id`, import rows whose identifiers hit two profiles get 409 with
    `meta.duplicate_profile_id` = the profile that does not own the email (the second match).
  * `can_receive_email_marketing` = no suppression and consent != UNSUBSCRIBED; suppression changes
    do not move `updated`; `updated` moves only when a value really changes (microsecond precision).
  * A phone is valid when it is E.164 and `phonenumbers.is_possible_number` (not region checks).
  * A dropped response (drop_rate) is applied before the connection is cut (`drop_after_apply`);
    injected 5xx and HTML 403 answers are not applied.
  * Check order: route (404/405), key (401), revision (400), scopes (403), rate limit (429), then the
    handler (415, 413, 400, 404, 409...). Refused-by-429 requests do not count against the windows.
  * Validation mode (`validate_requests_against_spec`) treats `application/json` bodies as the spec's
    `application/vnd.api+json`, and reads `{nullable: true, oneOf: [...]}` as allowing null.

Not modelled (the real API does these; the fake does not):
  * Suppression and subscription latency: suppress/unsuppress jobs apply at once and report
    `complete` (Klaviyo took ~2-4 h and kept the job `processing`); bulk import jobs advance by GETs,
    not by time. Eventual consistency of reads after writes.
  * Lists, segments, list relationships (`relationships.lists` on bulk import is accepted and ignored;
    list/segment suppression is a 400), `include=` (answers `included: []`), list suppressions.
  * Subscription (consent) endpoints, profile merge, profile deletion, events, push tokens, `_kx`.
  * `meta.patch_identifiers` (secondary emails): accepted, ignored.
  * Region checks on phone numbers ("valid but not in a supported region"), silent dropping of a bad
    phone on bulk import (the fake rejects the whole request instead).
  * Extra rate-limit buckets for `include=lists|segments` and `additional-fields=predictive_analytics`;
    predictive analytics values are all null.
  * Revision fall-forward, 410 for retired revisions, 404 for revisions older than an endpoint.
  * OAuth (`Bearer`) tokens, `/client/*` endpoints and public keys, gzip request bodies (415).
  * Sorting by suppression timestamps; filters on `_kx`, list suppressions, suppression timestamps.
  * Daily limits, per-app OAuth quotas, Cloudflare rules other than the injected HTML 403.
"""

from __future__ import annotations

from fakes.klaviyo.app import create_app
from fakes.klaviyo.config import AccountSpec, FakeKlaviyoConfig, KeySpec, Knobs

__all__ = ["AccountSpec", "FakeKlaviyoConfig", "KeySpec", "Knobs", "create_app"]
