"""The run's record of enqueued customers: what makes a backfill enqueue each customer once."""

from __future__ import annotations

import redis

from worker.store import Store


def test_mark_enqueued_says_which_customers_are_new_to_the_run(redis_url):
    """A customer already marked for the run, or named twice in one page (paging can return a record twice),
    is not new; another run's customers are no concern; an empty page marks nothing."""
    store = Store(redis.Redis.from_url(redis_url, decode_responses=True))
    assert store.mark_enqueued("run-1", ["a", "b"]) == [True, True]
    assert store.mark_enqueued("run-1", ["c", "a", "c", "d"]) == [True, False, False, True]
    assert store.mark_enqueued("run-2", ["a"]) == [True]
    assert store.mark_enqueued("run-1", []) == []
    assert store.enqueued_count("run-1") == 4
