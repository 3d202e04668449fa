"""The state store's calls for many customers at once (a batch's thousands in a few round trips) leave
Redis exactly as the same calls made one customer at a time: outcomes (still one per customer per run),
locks, what is remembered of each customer, the journal and the suppressions sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from worker.merge import FieldChange, Memory
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
    remembered = store.memories("t", [("c-1", None), ("c-2", None), ("c-3", None)])
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


def test_memories_read_together_are_each_customers_own(store):
    """Customers with and without an email, one suppressed by us with its job pending, one unknown."""
    store.record_outcome(run_id="r", tenant="t", customer_id="c-1", outcome=Outcome.SUPPRESSED, profile_id="P1",
                         updated_date=WHEN)
    store.mark_many("t", "suppress", [("one@example.com", "c-1")], "job-1")
    store.mark_many("t", "suppress", [("shared@example.com", "c-9")], "job-2")   # another customer's job
    got = store.memories("t", [("c-1", "one@example.com"), ("c-2", None), ("c-3", "shared@example.com")])
    assert got == [
        Memory(last_synced=WHEN, suppressed_by_us=True, profile_id="P1", pending_suppression="suppress",
               last_outcome="suppressed"),
        Memory(),
        Memory(suppressed_by_us=True),
    ]
    assert store.memories("t", []) == []


def test_journal_and_suppression_marks_written_together_equal_those_written_one_by_one(store):
    changes = (FieldChange("first_name", "Janet", "Jane", "set"), FieldChange("city", "Rome", "Valletta", "set"))
    store.journal_many("run-1", "t", [("c-1", "P1", changes), ("c-2", "P2", changes[:1])])
    for customer, profile, done in (("c-1", "P1", changes), ("c-2", "P2", changes[:1])):
        store.journal_overwrites("run-2", "t", customer, profile, done)
    def fields(run: str) -> list[tuple[str, str, str]]:
        return [(e["customer_id"], e["field"], e["old"]) for e in store.journal(run)]
    assert fields("run-1") == fields("run-2") == [("c-1", "first_name", "Janet"), ("c-1", "city", "Rome"),
                                                  ("c-2", "first_name", "Janet")]
    store.mark_many("t", "unsuppress", [("a@example.com", "c-1"), ("b@example.com", "c-2")], "job-3")
    pending = store.pending_suppressions("t")
    assert {email: (e["action"], e["job"], e["customer_id"]) for email, e in pending.items()} == {
        "a@example.com": ("unsuppress", "job-3", "c-1"), "b@example.com": ("unsuppress", "job-3", "c-2")}
    assert store.memories("t", [("c-1", "a@example.com")])[0].suppressed_by_us is False   # an unsuppress is not ours


def test_waiting_leaves_out_what_live_batches_hold_and_counts_a_dead_batchs_customers_again(store):
    """The producer's bound (`Store.waiting`): enqueued, without an outcome, not held by a running batch.
    A batch that died holds nothing once its entry's time is up: its customers count as waiting again
    (the broker gives them back)."""
    run = "run-held"
    store.create_run("t", "backfill", run_id=run)
    store.mark_enqueued(run, [f"c{i}" for i in range(10)])
    store.record_outcomes([record("c0", run=run), record("c1", run=run)])
    assert store.waiting(run) == 8
    store.hold(run, "batch-a", 5, ttl_s=120)
    store.hold(run, "batch-b", 2, ttl_s=120)
    assert store.waiting(run) == 1
    store.hold(run, "batch-a", 3, ttl_s=120)      # two of batch A's customers got their outcome...
    store.record_outcomes([record("c2", run=run), record("c3", run=run)])
    assert store.waiting(run) == 1                # ...so nothing moved back to waiting
    store.hold(run, "batch-b", 0, ttl_s=120)      # batch B ended: its customers went back to the queue
    assert store.waiting(run) == 3
    store.hold(run, "batch-a", 3, ttl_s=-1)       # batch A's process died: its entry is out of time
    assert store.waiting(run) == 6


def test_a_region_klaviyo_refused_for_the_account_makes_its_phones_unusable_for_a_while(store):
    """Klaviyo refused a phone "not in a supported region for this account": every phone of that region
    is left out (not sent to be refused again), other regions are not, and the region is tried again
    once its time is up. A refusal of the number itself makes only that phone unusable."""
    italian, other_italian, maltese = "+393471234567", "+393479876543", "+35679123456"
    store.remember_refused_phone("t-region", italian, region_wide=True, now=1_000.0)
    assert store.unusable_phones("t-region", [italian, other_italian, maltese], now=1_001.0) == {italian, other_italian}
    later = 1_000.0 + locks.REGION_REFUSED_TTL_S + 1
    assert store.unusable_phones("t-region", [other_italian, maltese], now=later) == set()
    assert store.unusable_phones("t-region", [italian], now=later) == {italian}    # the number itself, as before
    store.remember_refused_phone("t-number", italian)
    assert store.unusable_phones("t-number", [italian, other_italian]) == {italian}
