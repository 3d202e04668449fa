"""The state store's calls for many customers at once (a batch's thousands in a few round trips) leave
Redis exactly as the same calls made one customer at a time: outcomes (still one per customer per run),
locks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from worker.outcomes import Outcome
from worker.state import locks
from worker.store import OutcomeRecord, Store

WHEN = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield Store(client)
    client.close()


def record(customer_id: str, outcome: Outcome = Outcome.CREATED, run: str = "run-1") -> OutcomeRecord:
    return OutcomeRecord(run_id=run, tenant="t", customer_id=customer_id, outcome=outcome, reason="why",
                         profile_id=f"P-{customer_id}", updated_date=WHEN)


def test_outcomes_recorded_together_are_still_one_per_customer_and_finish_the_run(store):
    """Given a run of 4 expected customers, c-0 already recorded on its own, then c-0 (again), c-1, c-2 and
    c-1 a second time recorded together: True only for the first of each, every counter moved once, and
    the run is done when the fourth arrives."""
    run = store.create_run("t", "backfill", run_id="run-1")
    store.finish_producing(run, expected=4)
    assert store.record_outcome(run_id=run, tenant="t", customer_id="c-0", outcome=Outcome.CREATED) is True
    got = store.record_outcomes([record("c-0"), record("c-1"), record("c-2", Outcome.REJECTED),
                                 record("c-1", Outcome.FAILED)])
    assert got == [False, True, True, False]
    info = store.run(run)
    assert info is not None and (info.completed, info.counts, info.done) == (3, {"created": 2, "rejected": 1}, False)
    assert set(store.problems(run)) == {"c-2"}
    assert [len(store.history("t", c)) for c in ("c-0", "c-1", "c-2")] == [1, 1, 1]
    assert store.record_outcomes([record("c-3", Outcome.UNCHANGED)]) == [True]
    info = store.run(run)
    assert info is not None and info.done and info.completed == 4
    remembered = [store.memory("t", c, None) for c in ("c-1", "c-2", "c-3")]
    assert [m.profile_id for m in remembered] == ["P-c-1", None, "P-c-3"]   # a rejection's is not its own
    assert remembered[0].last_synced == WHEN and remembered[0].last_outcome == "created"


def test_locks_taken_and_released_together_answer_each_pair_as_one_at_a_time(store, monkeypatch):
    """Given 5 locks in scripts of 2 (three script runs in one round trip), c-1 held by another sync and
    c-3 already ours: granted exactly where one `lock_customer` each would be, in order; releasing them
    all frees ours and leaves the other sync's."""
    monkeypatch.setattr(locks, "LOCKS_PER_SCRIPT", 2)
    assert store.lock_customer("t", "c-1", "other-sync")
    assert store.lock_customer("t", "c-3", "task-3")
    pairs = [(f"c-{i}", f"task-{i}") for i in range(5)]
    assert store.lock_customers("t", pairs, ttl_s=60) == [True, False, True, True, True]
    store.unlock_customers("t", pairs)
    assert [store.lock_customer("t", f"c-{i}", "next") for i in range(5)] == [True, False, True, True, True]
    claims = [("+35679120000", "c-0"), ("+35679120001", "c-1"), ("+35679120000", "c-2")]
    assert store.claim_phones("t", claims, ttl_s=60) == [True, True, False]
