"""`worker.job_watcher.JobWatcher`: one place polls every bulk job of a process, on a schedule
(fake clock), and a 429 or the limiter delays polls instead of putting the watcher to sleep."""

from __future__ import annotations

import threading
from collections.abc import Callable

from worker.errors import Deferred, RetryableError, TenantFatalError, Throttled
from worker.job_watcher import JobWatcher
from worker.klaviyo import BulkImportJob
from worker.retry import RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def running(job_id: str) -> BulkImportJob:
    return BulkImportJob(job_id, "processing", 10)


def complete(job_id: str) -> BulkImportJob:
    return BulkImportJob(job_id, "complete", 10, 10, 0)


def scripted(job_id: str, answers: list[BulkImportJob | Exception]) -> tuple[Callable[[], BulkImportJob], list[float]]:
    """A poll that gives `answers` in turn (the last one forever), and the clock times it was asked at."""
    asked: list[float] = []

    def poll() -> BulkImportJob:
        asked.append(-1.0)
        answer = answers[min(len(asked) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return poll, asked


def manual(clock: Clock, back_offs: list[tuple[str, float]] | None = None) -> JobWatcher:
    sink = back_offs if back_offs is not None else []
    return JobWatcher(lambda tenant, s: sink.append((tenant, s)), retry=RetryPolicy(rand=lambda: 0.0),
                      clock=clock, autostart=False)


def test_jobs_of_several_batches_are_polled_by_one_thread_that_is_none_of_theirs():
    watcher = JobWatcher(lambda tenant, s: None)
    pollers: set[int] = set()
    batch_threads: set[int] = set()
    results: dict[str, bool] = {}
    # No job completes before every batch has handed over its own (the watcher thread ends when it has
    # nothing left to watch, and a later one would be another thread).
    all_watched, release = threading.Barrier(6), threading.Event()

    def batch(n: int) -> None:
        batch_threads.add(threading.get_ident())

        def poll(job_id: str = f"job-{n}") -> BulkImportJob:
            pollers.add(threading.get_ident())
            return complete(job_id) if release.is_set() else running(job_id)

        entry = watcher.watch("t", running(f"job-{n}"), poll, first_s=0.001, max_s=0.005)
        all_watched.wait(timeout=30)
        results[f"job-{n}"] = watcher.wait([entry], timeout_s=30)
        watcher.forget([entry])

    threads = [threading.Thread(target=batch, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    all_watched.wait(timeout=30)
    assert watcher.in_flight() == 5
    release.set()
    for t in threads:
        t.join()
    assert results == {f"job-{n}": True for n in range(5)}
    assert len(pollers) == 1 and not pollers & batch_threads
    assert watcher.in_flight() == 0 and watcher.in_flight_max == 5


def test_a_job_is_polled_when_due_with_the_delay_doubling_up_to_its_maximum():
    clock = Clock()
    watcher = manual(clock)
    poll, asked = scripted("j", [running("j")])
    entry = watcher.watch("t", running("j"), poll, first_s=1.0, max_s=3.0)
    polled_at = []
    for _ in range(120):
        before = len(asked)
        watcher.poll_due()
        if len(asked) > before:
            polled_at.append(clock.now)
        clock.now = round(clock.now + 0.5, 1)
    assert polled_at[:5] == [1.0, 2.0, 4.0, 7.0, 10.0]   # after 1, then 1, 2, 3, 3 ... (capped at max_s)
    assert entry.polls == len(asked) and not entry.settled


def test_a_429_on_one_job_backs_the_tenant_off_once_and_delays_only_that_tenants_polls():
    clock = Clock()
    back_offs: list[tuple[str, float]] = []
    watcher = manual(clock, back_offs)
    throttled_poll, throttled_asked = scripted("a1", [Throttled("429", retry_after_s=10), complete("a1")])
    same_tenant_poll, same_asked = scripted("a2", [complete("a2")])
    other_poll, other_asked = scripted("b1", [complete("b1")])
    a1 = watcher.watch("a", running("a1"), throttled_poll, first_s=1.0, max_s=5.0)
    a2 = watcher.watch("a", running("a2"), same_tenant_poll, first_s=2.0, max_s=5.0)
    b1 = watcher.watch("b", running("b1"), other_poll, first_s=2.0, max_s=5.0)
    clock.now = 1.0
    watcher.poll_due()                        # a1: 429, Retry-After 10 s
    assert [t for t, _ in back_offs] == ["a"] and back_offs[0][1] >= 10
    clock.now = 2.0
    watcher.poll_due()
    assert not same_asked and other_asked and b1.settled and not a2.settled
    clock.now = 1.0 + back_offs[0][1]
    watcher.poll_due()
    assert a1.settled and a2.settled and len(throttled_asked) == 2


def test_the_limiter_defers_one_poll_without_the_watcher_waiting():
    clock = Clock()
    watcher = manual(clock)
    poll, asked = scripted("j", [Deferred("limit", retry_after_s=4.0), complete("j")])
    entry = watcher.watch("t", running("j"), poll, first_s=1.0, max_s=5.0)
    clock.now = 1.0
    watcher.poll_due()
    clock.now = 4.9
    watcher.poll_due()
    assert len(asked) == 1 and not entry.settled
    clock.now = 5.0
    watcher.poll_due()
    assert entry.settled and entry.job.status == "complete"


def test_a_failed_poll_is_tried_again_and_a_bad_key_ends_the_wait_with_its_error():
    clock = Clock()
    watcher = manual(clock)
    flaky, flaky_asked = scripted("f", [RetryableError("503"), ValueError("bug"), complete("f")])
    fatal, _ = scripted("k", [TenantFatalError("t", "401 from Klaviyo", status=401)])
    f = watcher.watch("t", running("f"), flaky, first_s=1.0, max_s=1.0)
    k = watcher.watch("t", running("k"), fatal, first_s=1.0, max_s=1.0)
    for step in range(1, 4):
        clock.now = float(step)
        watcher.poll_due()
    assert f.settled and f.error is None and len(flaky_asked) == 3
    assert k.settled and isinstance(k.error, TenantFatalError)
