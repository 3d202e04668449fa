"""Bulk import jobs in flight, polled from one place per worker process.

Klaviyo's bulk import jobs take seconds to minutes. A backfill worker runs its batches on threads
(`--pool threads`): while one batch waits for its job, others look up, plan and submit theirs, so an
account has many jobs in flight (bounded by the job-creation limit and by the backfill workers'
`--concurrency`). The batches do not poll: each hands its jobs to this process's `JobWatcher` and
waits. One watcher thread polls every job of the process when it is due (from `first_s`, doubling up
to `max_s`), through the same fleet-wide limiter as every other request. It never sleeps on a limit:
a job whose poll the limiter defers is polled again when the limiter says, and a 429 backs the tenant
off and delays all of that tenant's polls. A batch still settles its own rows (its customers' outcomes
are recorded only once Klaviyo confirmed them) and refreshes its own customers' locks while it waits.

The thread starts with the first job and ends when nothing is left to watch; after a fork the child
starts its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from worker.errors import Deferred, RetryableError, SyncError, TenantFatalError, Throttled
from worker.klaviyo import BulkImportJob
from worker.retry import RetryPolicy, throttle_wait_s

log = structlog.get_logger("job_watcher")


@dataclass(eq=False)
class Watch:
    """One job a batch waits for: its latest state, or the error that ends the wait."""

    tenant: str
    job: BulkImportJob
    #: Asks Klaviyo for the job once (in the waiting batch's context: its run, no waiting in place).
    poll: Callable[[], BulkImportJob]
    due_at: float
    delay_s: float
    max_s: float
    error: SyncError | None = None
    polls: int = 0

    @property
    def settled(self) -> bool:
        return self.job.done or self.error is not None


@dataclass
class JobWatcher:
    """Polls the bulk import jobs of every batch of this process. `back_off(tenant, s)` is the
    limiter's fleet-wide back-off for a 429; `retry` turns a 429 into a wait."""

    back_off: Callable[[str, float], None]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Callable[[], float] = time.monotonic
    #: Start the polling thread on the first `watch` (off: the caller runs `poll_due`, as tests do).
    autostart: bool = True
    #: Most jobs watched at once by this process (reported by the benchmark).
    in_flight_max: int = 0
    _watches: list[Watch] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _pid: int = 0

    def watch(self, tenant: str, job: BulkImportJob, poll: Callable[[], BulkImportJob], *,
              first_s: float, max_s: float) -> Watch:
        entry = Watch(tenant, job, poll, due_at=self.clock() + first_s, delay_s=first_s, max_s=max_s)
        with self._cond:
            self._watches.append(entry)
            self.in_flight_max = max(self.in_flight_max, len(self._watches))
            if self.autostart:
                self._ensure_thread()
            self._cond.notify_all()
        return entry

    def forget(self, entries: Iterable[Watch]) -> None:
        gone = set(map(id, entries))
        with self._cond:
            self._watches = [w for w in self._watches if id(w) not in gone]

    def in_flight(self) -> int:
        with self._cond:
            return len(self._watches)

    def wait(self, entries: list[Watch], timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every entry to settle; True when they all have."""
        with self._cond:
            return self._cond.wait_for(lambda: all(w.settled for w in entries), timeout=max(0.0, timeout_s))

    # --- the watcher thread ----------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        alive = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
        if not alive:
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="bulk-job-watcher", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                waiting = [w for w in self._watches if not w.settled]
                if not waiting:
                    self._thread = None     # the next `watch` starts another
                    return
                next_s = min(w.due_at for w in waiting) - self.clock()
                if next_s > 0:
                    self._cond.wait(timeout=next_s)
                    continue
            self.poll_due()

    def poll_due(self) -> None:
        """Poll every job that is due, once (outside the lock: a poll is a request to Klaviyo)."""
        with self._cond:
            now = self.clock()
            due = [w for w in self._watches if not w.settled and w.due_at <= now]
        for entry in due:
            self._poll(entry)
        with self._cond:
            self._cond.notify_all()

    def _poll(self, entry: Watch) -> None:
        try:
            job = entry.poll()
        except Throttled as exc:
            # Klaviyo's 429: the whole tenant waits (fleet-wide), and so do its polls here.
            wait_s = throttle_wait_s(exc, self.retry)
            self.back_off(entry.tenant, wait_s)
            later = self.clock() + wait_s
            with self._cond:
                for w in self._watches:
                    if w.tenant == entry.tenant:
                        w.due_at = max(w.due_at, later)
            return
        except Deferred as exc:   # the limiter has no place yet: ask again when it says
            entry.due_at = self.clock() + (exc.retry_after_s or entry.delay_s)
            return
        except TenantFatalError as exc:
            entry.error = exc     # the batch ends its stage (the tenant is paused)
            return
        except RetryableError as exc:
            log.info("bulk_job_poll_failed", tenant=entry.tenant, job=entry.job.id, error=str(exc)[:200])
        except Exception as exc:  # noqa: BLE001 - the watcher thread must outlive any one poll
            log.exception("bulk_job_poll_broke", tenant=entry.tenant, job=entry.job.id, error=repr(exc))
        else:
            entry.job = job
            entry.polls += 1
        entry.due_at = self.clock() + entry.delay_s
        entry.delay_s = min(entry.max_s, entry.delay_s * 2)
