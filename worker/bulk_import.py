"""Bulk import jobs: rows in, one verdict per row out. The mechanics only; `worker.batch` decides
what each verdict means for its customer.

  submit      rows go in jobs of at most 10,000 rows and under Klaviyo's 5 MB body limit, every job
              submitted before any is polled; a 400 that names rows of our request refuses those rows
              (the rest are submitted again), one that names none (a 413, say) is halved until it does
  poll        every job is polled (by the process's `worker.job_watcher.JobWatcher`, which polls the
              jobs of all its batches) until Klaviyo applied it or it is given up (`job_timeout_s`);
              the customers' locks are refreshed all along, so an incremental sync of one of them waits
              for the job instead of being overtaken by this older snapshot
  settle      a row is confirmed only when its job completed, the job's counts add up and no import
              error names the row. Import errors are matched to rows by `original_payload` (the spec's
              pointer is only `/data`; a pointer is trusted only where the payload agrees); an error
              that matches no row, or counts that do not add up, leave the job's rows unaccounted; a
              cancelled job (or one that never ends) leaves them not applied, to be sent again
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import structlog

from worker.errors import RecordRejected, SyncError
from worker.job_watcher import JobWatcher
from worker.klaviyo import MAX_BULK_PROFILES, BulkImportJob, ImportError_, KlaviyoClient, row_identifiers

log = structlog.get_logger("bulk_import")

K = TypeVar("K")
T = TypeVar("T")

ROW_POINTER = re.compile(r"^/data/attributes/profiles/data/(\d+)")
#: Stay under Klaviyo's 5 MB body limit with room for the envelope.
MAX_JOB_BYTES = 4_500_000

Row = tuple[K, dict[str, Any]]


@dataclass(frozen=True)
class Confirmed:
    """Klaviyo applied the row: its job completed, its counts add up, no import error names it."""


@dataclass(frozen=True)
class Refused:
    """Klaviyo refused the row: an import error names it, or a 400 of the submission pointed at it."""

    error: ImportError_ | RecordRejected


@dataclass(frozen=True)
class Rejected:
    """The submission carrying this row alone was refused without naming a row."""

    error: RecordRejected


@dataclass(frozen=True)
class Unaccounted:
    """The job completed but Klaviyo's account of it does not add up: the row may or may not be applied."""


@dataclass(frozen=True)
class NotApplied:
    """The job was cancelled part-way, or never ended: the row may not be applied."""


Verdict = Confirmed | Refused | Rejected | Unaccounted | NotApplied


@dataclass
class JobRows(Generic[K]):
    """One bulk import job and the rows it carries."""

    rows: list[Row[K]]
    job: BulkImportJob


class Caller(Protocol):
    """Makes one Klaviyo call for the batch (see `worker.batch.BatchSync.call`)."""

    def __call__(self, fn: Callable[[], T], /) -> T: ...


@dataclass(frozen=True)
class Polling:
    poll_first_s: float
    poll_max_s: float
    job_timeout_s: float
    lock_ttl_s: float


class BulkImport(Generic[K]):
    """One round of bulk jobs for a tenant. `call` makes a Klaviyo call as the batch does (retried in
    place; a failure for everyone raises); `fail` ends the batch's stage for a tenant-fatal error;
    `watcher` polls the jobs, each with `poll_job(job_id)`."""

    def __init__(self, klaviyo: KlaviyoClient, tenant: str, polling: Polling, *,
                 call: Caller, fail: Callable[[SyncError], NoReturn],
                 refresh_locks: Callable[[], None], watcher: JobWatcher,
                 poll_job: Callable[[str], BulkImportJob], clock: Callable[[], float] = time.monotonic) -> None:
        self.klaviyo = klaviyo
        self.tenant = tenant
        self.polling = polling
        self.call = call
        self.fail = fail
        self.refresh_locks = refresh_locks
        self.watcher = watcher
        self.poll_job = poll_job
        self.clock = clock

    def round(self, rows: list[Row[K]], verdict: Callable[[K, Verdict], None],
              again: Callable[[K], dict[str, Any] | None] | None = None) -> None:
        """Submit every row, wait for every job, and give each row its verdict as soon as it is known.
        `again`: asked for each row refused at submit, after its verdict; a row it gives back (the row
        without what Klaviyo refused) goes with the rest of its chunk now, not in a next round a job
        duration later."""
        jobs: list[JobRows[K]] = []
        queue = chunks(rows)
        while queue:
            chunk = queue.pop(0)
            try:
                job = self.call(partial(self.klaviyo.start_bulk_import, [r for _, r in chunk]))
            except RecordRejected as refused:
                # An all-or-nothing 400 names rows of our own request (these pointers are ours).
                named = {i: e for e in refused.errors if (i := row_index(e.pointer)) is not None and i < len(chunk)}
                if named:
                    retried: list[Row[K]] = []
                    for index, error in named.items():
                        key = chunk[index][0]
                        verdict(key, Refused(error))
                        if again is not None and (row := again(key)) is not None:
                            retried.append((key, row))
                    rest = [pair for i, pair in enumerate(chunk) if i not in named] + retried
                    if rest:
                        queue.insert(0, rest)
                elif len(chunk) > 1:     # refused without naming a row (e.g. 413 too large): halve
                    queue[:0] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2:]]
                else:
                    verdict(chunk[0][0], Rejected(refused))
                continue
            jobs.append(JobRows(chunk, job))
        self.wait_all(jobs)
        for entry in jobs:
            self.settle(entry, verdict)

    def settle(self, entry: JobRows[K], verdict: Callable[[K, Verdict], None]) -> None:
        """Map a finished (or given up) job back to its rows."""
        job, rows = entry.job, entry.rows
        errors: list[ImportError_] = []
        if job.done and job.failed_count != 0:
            errors = self.call(partial(self.klaviyo.import_errors, job.id))
        by_ident: dict[str, list[int]] = {}
        for i, (_, row) in enumerate(rows):
            for ident in row_identifiers(row["attributes"], row.get("id")):
                by_ident.setdefault(ident, []).append(i)
        failed: dict[int, ImportError_] = {}
        unmatched = 0
        for error in errors:
            candidates = {i for ident in error.identifiers for i in by_ident.get(ident, [])}
            hint = row_index(error.pointer)
            if hint is not None and hint in candidates:
                candidates = {hint}    # the pointer is trusted only where the payload agrees
            if len(candidates) == 1:
                failed[candidates.pop()] = error
            else:
                unmatched += 1
        accounted = job.counts_add_up and not unmatched and job.failed_count == len(failed)
        for i, (key, _) in enumerate(rows):
            if i in failed:
                verdict(key, Refused(failed[i]))
            elif job.status == "complete" and accounted:
                verdict(key, Confirmed())
            elif job.status == "complete":
                verdict(key, Unaccounted())
            else:
                verdict(key, NotApplied())
        if job.status == "complete" and not accounted:
            log.warning("bulk_job_unaccounted", tenant=self.tenant, job=job.id, total=job.total_count,
                        completed=job.completed_count, failed=job.failed_count, errors=len(errors),
                        unmatched=unmatched)
        elif job.status != "complete":
            log.warning("bulk_job_not_applied", tenant=self.tenant, job=job.id, status=job.status,
                        rows=len(rows) - len(failed))

    def wait_all(self, jobs: list[JobRows[K]]) -> None:
        """Hand every running job to the process's `JobWatcher` and wait until Klaviyo has applied each
        or it is given up (`job_timeout_s`; Klaviyo's jobs take seconds to minutes), refreshing the
        customers' locks all along. Other batches of the process run meanwhile."""
        running = [entry for entry in jobs if not entry.job.done]
        if not running:
            return
        polling = self.polling
        watches = [self.watcher.watch(self.tenant, entry.job, partial(self.poll_job, entry.job.id),
                                      first_s=polling.poll_first_s, max_s=polling.poll_max_s)
                   for entry in running]
        # Refresh several times per lock TTL, however slowly the job is polled.
        refresh_every_s = min(polling.poll_max_s, polling.lock_ttl_s / 3)
        deadline = self.clock() + polling.job_timeout_s
        try:
            while True:
                self.refresh_locks()
                settled = self.watcher.wait(watches, min(refresh_every_s, deadline - self.clock()))
                for entry, watch in zip(running, watches, strict=True):
                    entry.job = watch.job
                if (error := next((w.error for w in watches if w.error is not None), None)) is not None:
                    self.fail(error)
                if settled or self.clock() >= deadline:
                    return
        finally:
            self.watcher.forget(watches)


def row_index(pointer: str | None) -> int | None:
    found = ROW_POINTER.match(pointer or "")
    return int(found.group(1)) if found else None


def chunks(rows: list[Row[K]]) -> list[list[Row[K]]]:
    """Bulk jobs of at most 10,000 rows and under the 5 MB body limit."""
    out: list[list[Row[K]]] = []
    current: list[Row[K]] = []
    size = 0
    for pair in rows:
        row_size = len(json.dumps(pair[1], ensure_ascii=False).encode()) + 1
        if current and (len(current) >= MAX_BULK_PROFILES or size + row_size > MAX_JOB_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(pair)
        size += row_size
    if current:
        out.append(current)
    return out
