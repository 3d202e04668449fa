"""Asynchronous work: bulk import jobs, suppression jobs, and the deterministic profile merge.

Two ways a bulk import job advances:

* By GETs (the kind default, `job_seconds` = `job_seconds_per_1000_rows` = 0): every
  `bulk_job_gets_per_step` GETs of the job move it one step, `queued` -> `processing` -> `complete`,
  and all rows are applied at the last step.
* By time on the fake clock (either knob > 0): the job is `queued` for `job_queued_share` of its
  duration, then `processing` while its rows are applied evenly in order (row k is applied once
  k/total of the processing time has passed; a GET, any other request or a control read settles
  what is due), then `complete`. `completed_count` counts the rows applied so far; `failed_count`
  is null until the job has ended (both are nullable in the spec; `job_counts_null` keeps both null).

A job's fate is drawn when it is submitted (`job_cancel_rate`, then `job_stuck_rate`, from a
generator seeded by `seed`): `cancelled` ends it after `job_cancel_after_share` of its rows (the rest
are never applied), `stuck` applies `job_stuck_after_share` of them and reads `processing` forever.

Suppress / unsuppress jobs apply at once and read `complete` unless `suppression_lag_s` > 0: then
they read `processing` and change nothing until the lag has passed on the fake clock, and `complete`
(with their counts) after it.

Merge (`merge_on_link`): Klaviyo "merges two separate profiles when an action occurs linking an
email address, phone number, or device ID" (help centre, "Understanding identity resolution in
Klaviyo", https://help.klaviyo.com/hc/en-us/articles/12902308138011; and "if a phone-only profile
adds an email that matches an existing email-only profile, the two will merge",
https://help.klaviyo.com/hc/en-us/articles/360035588012). The fake merges only on bulk import rows
without `id` whose email and phone belong to two different profiles (any external_id in the row must
belong to one of them): the phone's profile is merged into the email's profile (email is Klaviyo's
primary identifier), which keeps its values and takes the other's where it has none, and the other
profile is deleted. Single writes (`POST /api/profiles`, `PATCH`, `profile-import`) never merge:
they answer 409 `duplicate_profile`, as reported live for email + phone requests whose phone is on
another profile (reference/klaviyo-api.md section 7.3: klaviyo-api-php#63, klaviyo-api-node#74/#75).
Rows with an `id` never merge either. Every merge is recorded (`GET /_fake/merges`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fakes.klaviyo import events
from fakes.klaviyo.profiles import (
    REGION_DETAIL,
    SCALARS,
    Profile,
    ProfileStore,
    identifiers_in,
    iso,
    unsupported_region,
)
from fakes.klaviyo.state import Account, BulkImportJob, FakeKlaviyo, SuppressionJob

ROW_PREFIX = "/data/attributes/profiles/data"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# ---------------------------------------------------------------------------------------------
# Bulk import jobs


def new_bulk_job(fake: FakeKlaviyo, account: Account, rows: list[dict[str, Any]],
                 list_ids: list[str]) -> BulkImportJob:
    knobs = fake.knobs
    now = fake.clock.time()
    draw = fake.job_dice.random()   # one draw per job, whatever the knobs, so a seed fixes the sequence
    if draw < knobs.job_cancel_rate:
        fate, share = "cancelled", knobs.job_cancel_after_share
    elif draw < knobs.job_cancel_rate + knobs.job_stuck_rate:
        fate, share = "stuck", knobs.job_stuck_after_share
    else:
        fate, share = "complete", 1.0
    job = BulkImportJob(id=fake.ids.new(), created_at=_dt(now), total_count=len(rows), rows=rows,
                        list_ids=list_ids, fate=fate, fate_share=share, counts_null=knobs.job_counts_null)
    duration = knobs.job_seconds + knobs.job_seconds_per_1000_rows * len(rows) / 1000
    if duration > 0:
        job.queued_until = now + duration * knobs.job_queued_share
        job.ends_at = now + duration
        fake.pending[job.id] = (account, job)
    account.bulk_jobs[job.id] = job
    if job.timed:
        progress(fake, account, job, now)
    return job


def rows_for(total: int, share: float) -> int:
    return total if share >= 1 else min(total, math.floor(total * share + 1e-9))


def progress(fake: FakeKlaviyo, account: Account, job: BulkImportJob, now: float) -> None:
    """Bring a timed job to where the fake clock says it is."""
    if job.ended or job.halted or job.queued_until is None or job.ends_at is None or now < job.queued_until:
        return
    if job.status == "queued":
        job.status = "processing"
        job.started_at = _dt(job.queued_until)
    span = job.ends_at - job.queued_until
    done = 1.0 if span <= 0 else min(1.0, (now - job.queued_until) / span)
    limit = job.fate_share if job.fate != "complete" else 1.0
    start, total = job.queued_until, job.total_count

    def row_time(i: int) -> float:
        # When row i was due: a late settle still stamps the write (read lag) at that instant.
        return min(now, start + span * (i + 1) / total)

    apply_rows(fake, account, job, rows_for(total, min(done, limit)), row_time)
    if done >= limit:
        _end(fake, job, _dt(job.queued_until + limit * span))


def advance_on_get(fake: FakeKlaviyo, account: Account, job: BulkImportJob) -> None:
    """The GET-driven steps (`bulk_job_gets_per_step`), for jobs that are not timed."""
    if job.timed or job.ended or job.halted:
        return
    per_step = fake.knobs.bulk_job_gets_per_step
    job.gets += 1
    if per_step and job.gets < per_step:
        return
    job.gets = 0
    now = fake.clock.now()
    if job.status == "queued" and per_step:
        job.status = "processing"
        job.started_at = now
        return
    job.started_at = job.started_at or now
    limit = job.fate_share if job.fate != "complete" else 1.0
    apply_rows(fake, account, job, rows_for(job.total_count, limit))
    _end(fake, job, now)


def _end(fake: FakeKlaviyo, job: BulkImportJob, at: datetime) -> None:
    if job.fate == "stuck":
        job.status, job.halted = "processing", True
    else:
        job.status, job.completed_at = job.fate, at
    job.rows = None
    fake.pending.pop(job.id, None)


def render_counts(job: BulkImportJob) -> tuple[int | None, int | None]:
    """(completed_count, failed_count) as the job answers them."""
    if job.counts_null:
        return None, None
    return job.completed_count, job.failed_count if job.ended or not job.timed else None


def import_error(fake: FakeKlaviyo, code: str, title: str, detail: str, index: int, row: dict[str, Any],
                 field: str | None = None) -> dict[str, Any]:
    if fake.knobs.import_error_row_pointer:
        pointer = f"{ROW_PREFIX}/{index}" + (f"/attributes/{field}" if field else "")
    else:
        pointer = "/data"   # the spec's default for ErrorSource.pointer: only original_payload names the row
    return {
        "type": "import-error",
        "id": str(uuid.uuid4()),
        "attributes": {"code": code, "title": title, "detail": detail, "source": {"pointer": pointer},
                       "original_payload": row},
    }


def _duplicate(fake: FakeKlaviyo, index: int, row: dict[str, Any]) -> dict[str, Any]:
    return import_error(fake, "duplicate_profile", "Conflict.",
                        "A profile already exists with one of these identifiers.", index, row)


def apply_rows(fake: FakeKlaviyo, account: Account, job: BulkImportJob, upto: int,
               row_time: Callable[[int], float] | None = None) -> None:
    """Apply rows [job.applied, upto): upserts in order; nulls never clear (the bulk-import rule).
    `row_time(i)`: the fake-clock time row i counts as written (default: now)."""
    store = account.store
    rows = job.rows or []
    knobs = fake.knobs
    while job.applied < min(upto, len(rows)):
        i = job.applied
        job.applied += 1
        written = row_time(i) if row_time is not None else fake.clock.time()
        row = rows[i]
        attrs = row.get("attributes") or {}
        meta = row.get("meta")
        if knobs.unsupported_phone_bulk_import_error and unsupported_region(
                attrs.get("phone_number"), knobs.unsupported_phone_regions):
            job.errors.append(import_error(fake, "invalid", "Invalid input.", REGION_DETAIL, i, row,
                                           field="phone_number"))
            continue
        row_id = row.get("id")
        if row_id is not None:
            p = store.profiles.get(str(row_id))
            if p is None:
                job.errors.append(import_error(fake, "not_found", "Not found.",
                                               f"A profile with id {row_id} does not exist.", i, row))
                continue
            if store.conflict(p.id, attrs) is not None:
                job.errors.append(_duplicate(fake, i, row))
                continue
        else:
            idents = identifiers_in(attrs)
            owners = store.owners(idents)
            if len(owners) > 1:
                kept = (merge_on_link(fake, account, idents, owners, job.id, i, written)
                        if knobs.merge_on_link else None)
                if kept is None:
                    job.errors.append(_duplicate(fake, i, row))
                    continue
                owners = [kept]
            p = store.profiles[owners[0]] if owners else None
        if p is None:
            p = store.create(attrs, meta)
            store.written[p.id] = written
        elif store.update(p, attrs, meta, ignore_nulls=True):
            store.written[p.id] = written
        job.profile_ids.append(p.id)


def merge_on_link(fake: FakeKlaviyo, account: Account, idents: dict[str, str], owners: list[str],
                  job_id: str, index: int, at: float) -> str | None:
    """Merge the phone's profile into the email's when a row links them; None = not a linking row."""
    store = account.store
    email_owner = store.owner("email", idents["email"]) if "email" in idents else None
    phone_owner = store.owner("phone_number", idents["phone_number"]) if "phone_number" in idents else None
    if email_owner is None or phone_owner is None or email_owner == phone_owner:
        return None
    if not set(owners) <= {email_owner, phone_owner}:
        return None     # the external_id belongs to a third profile: still a conflict
    kept, source = store.profiles[email_owner], store.delete(phone_owner)
    _absorb(store, kept, source)
    account.events.move_profile(source.id, kept.id)
    store.written[kept.id] = at
    fake.merges.append({
        "account_id": account.id, "kept_id": kept.id, "merged_id": source.id,
        "email": idents["email"], "phone_number": idents["phone_number"],
        "via": "profile-bulk-import-job", "job_id": job_id, "row": index, "at": iso(_dt(at)),
    })
    return kept.id


def _absorb(store: ProfileStore, kept: Profile, source: Profile) -> None:
    """The kept profile's values win; it takes the source's where it has none."""
    fill: dict[str, Any] = {n: source.scalars[n] for n in SCALARS
                            if kept.scalars.get(n) in (None, "") and source.scalars.get(n) not in (None, "")}
    location = {k: v for k, v in source.location.items() if v is not None and kept.location.get(k) is None}
    if location:
        fill["location"] = location
    properties = {k: v for k, v in source.properties.items() if k not in kept.properties}
    if properties:
        fill["properties"] = properties
    store.update(kept, fill, None, ignore_nulls=True)
    reasons = {s["reason"] for s in kept.suppressions}
    kept.suppressions += [s for s in source.suppressions if s["reason"] not in reasons]
    if kept.consent == "NEVER_SUBSCRIBED" and source.consent != "NEVER_SUBSCRIBED":
        kept.consent, kept.consent_timestamp = source.consent, source.consent_timestamp
    kept.created = min(kept.created, source.created)
    if kept.last_event_date is None or (source.last_event_date and source.last_event_date > kept.last_event_date):
        kept.last_event_date = source.last_event_date or kept.last_event_date



# ---------------------------------------------------------------------------------------------
# Suppression jobs


def new_suppression_job(fake: FakeKlaviyo, account: Account, kind: str, emails: list[str]) -> SuppressionJob:
    now = fake.clock.time()
    job = SuppressionJob(fake.ids.new(), kind, _dt(now), len(emails), 0, 0, None, status="processing",
                         emails=emails)
    account.suppression_jobs[job.id] = job
    lag = fake.knobs.suppression_lag_s
    if lag > 0:
        job.due = now + lag
        fake.pending[job.id] = (account, job)
    else:
        apply_suppression(fake, account, job, _dt(now))
    return job


def apply_suppression(fake: FakeKlaviyo, account: Account, job: SuppressionJob, at: datetime) -> None:
    store = account.store
    done = skipped = 0
    for email in job.emails or []:
        pid = store.owner("email", email)
        if job.kind == "create":
            # Klaviyo's docs say an unknown email gets a new, suppressed profile.
            if pid is None:
                p = store.create({"email": email})
                store.written[p.id] = at.timestamp()
            else:
                p = store.profiles[pid]
            if not any(s["reason"] == "USER_SUPPRESSED" for s in p.suppressions):
                # Consent is left as it is; `updated` does not move for subscription changes.
                p.suppressions.append({"reason": "USER_SUPPRESSED", "timestamp": at})
                p.subscriptions_updated = at
            done += 1
            continue
        if pid is None:
            skipped += 1
            continue
        p = store.profiles[pid]
        kept = [s for s in p.suppressions if s["reason"] != "USER_SUPPRESSED"]
        if len(kept) != len(p.suppressions):
            p.suppressions = kept  # HARD_BOUNCE, SPAM_COMPLAINT, UNSUBSCRIBE, INVALID_EMAIL stay
            p.subscriptions_updated = at
        done += 1
    job.completed_count, job.skipped_count = done, skipped
    job.status, job.completed_at, job.emails = "complete", at, None
    fake.pending.pop(job.id, None)


# ---------------------------------------------------------------------------------------------


def settle(fake: FakeKlaviyo) -> None:
    """Apply whatever the fake clock says is due: timed job rows, lagged suppressions and events."""
    if not fake.pending:
        return
    now = fake.clock.time()
    for account, job in list(fake.pending.values()):
        if isinstance(job, BulkImportJob):
            progress(fake, account, job, now)
            if job.halted:
                fake.pending.pop(job.id, None)
        elif isinstance(job, events.EventSubmission):
            if now >= job.due:
                events.process(fake, account, job)
        elif job.due is not None and now >= job.due:
            apply_suppression(fake, account, job, _dt(job.due))
