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
    POST  /api/events                         202, no body; processed now or after `event_lag_s`
    POST  /api/event-bulk-create-jobs         202, no body; up to 1,000 events, 5 MB (no GET: none in the spec)
    GET   /api/events, /api/events/{id}       filter (metric_id, profile_id, has, datetime, timestamp), sort,
                                              page[size|cursor], include=metric,profile, fields[...]
    GET   /api/metrics, /api/metrics/{id}     a metric per name, made by the first event that names it

Events: what is documented and what the fake assumes (unique_id de-duplication, the profile an event
creates or updates, bulk repeats) is in the docstring of `fakes.klaviyo.events`.

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
  * A phone is valid when it is E.164 and `phonenumbers.is_possible_number` (regions: a knob).
  * A dropped response (drop_rate) is applied before the connection is cut (`drop_after_apply`);
    injected 5xx and HTML 403 answers are not applied.
  * Check order: route (404/405), key (401), revision (400), scopes (403), rate limit (429), then the
    handler (415, 413, 400, 404, 409...). Refused-by-429 requests do not count against the windows.
  * Validation mode (`validate_requests_against_spec`) treats `application/json` bodies as the spec's
    `application/vnd.api+json`, and reads `{nullable: true, oneOf: [...]}` as allowing null.

Realistic mode (knobs in `config.Knobs`, all off by default; `POST /_fake/realistic {"time_scale": s}`
sets them to Klaviyo's orders of magnitude, `POST /_fake/kind` undoes it). Every duration reads the
fake clock (`POST /_fake/clock`: freeze, advance, unfreeze); rate limits stay on the wall clock.
  * Bulk import jobs by time, cancelled or stuck jobs, nullable counts, and the profile merge: see
    `fakes.klaviyo.jobs` (its docstring gives the merge choice and its sources).
  * Import errors: `source.pointer` is the row (`/data/attributes/profiles/data/<i>`) by default
    (`import_error_row_pointer`, kept so existing clients and tests keep working); off = the spec's
    default `/data` (ErrorSource.pointer default), so only `original_payload` names the row.
  * `read_lag_s`: after a create, update (that changed something), bulk row, merge or a profile
    created by a suppression, `GET /api/profiles` (every filter, and unfiltered) leaves the profile
    out for that long. Simplest model: hidden, not its previous version. `GET /api/profiles/{id}`
    stays consistent, and a create during the lag still answers 409 with `meta.duplicate_profile_id`.
    No source documents the size of the lag (UNCONFIRMED; 5 s at time_scale 1 is an estimate).
  * `suppression_lag_s`: suppress/unsuppress jobs read `processing` (counts 0, `completed_at` null)
    and change nothing until the lag has passed; then they apply and read `complete`.
  * `unsupported_phone_regions` (ISO codes, via `phonenumbers.region_code_for_number`): create,
    PATCH and profile-import answer 400 `invalid` "Phone number is valid but is not in a supported
    region for this account." at `/data/attributes/phone_number`; a bulk import is refused whole at
    submit with the row's pointer `/data/attributes/profiles/data/<i>/attributes/phone_number` (the
    shape observed live, reference/klaviyo-api.md 3.6), or with `unsupported_phone_bulk_import_error`
    accepted and the row recorded as an import error with that detail.
  * `event_lag_s`: an accepted event (202) is processed that long after: until then it is not
    listed, makes no metric and creates or changes no profile (UNCONFIRMED size; 5 s is an estimate).

Not modelled (the real API does these; the fake does not):
  * Subscription (consent) latency; read lag shows a hidden profile, never its previous version.
  * Lists, segments, list relationships (`relationships.lists` on bulk import is accepted and ignored;
    list/segment suppression is a 400), `include=` of profiles and jobs (answers `included: []`), list
    suppressions.
  * Subscription (consent) endpoints, the explicit `POST /api/profile-merge`, profile deletion,
    push tokens, `_kx`; GET of job lists and of a job's `profiles`/`lists`.
  * Of events: attributions, custom and mapped metrics, metric aggregates and properties, flows
    (`backfill` is stored; nothing is triggered), the `/client` endpoints, events of `anonymous_id` or
    `_kx` profiles (400), a profile merge caused by an event (never: see `fakes.klaviyo.events`).
  * `meta.patch_identifiers` (secondary emails): accepted, ignored.
  * Silent dropping of a syntactically bad phone on bulk import (the fake rejects the whole request).
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
