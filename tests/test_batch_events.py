"""What Flower hears of a batch: one task event per customer (`worker.tasks._announce`), published in
pipelined chunks, each exactly the event a plain `dispatcher.send` publishes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from worker import tasks
from worker.app import create_app
from worker.batch import Again, Done, Item, Result
from worker.outcomes import Outcome
from worker.settings import Settings

#: What differs between two publications of the same event.
PER_PUBLICATION = {"delivery_tag", "timestamp", "clock", "utcoffset"}


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = create_app(Settings(redis_url=redis_url))
    yield app
    app.close()


@pytest.fixture
def heard(redis_url: str) -> Iterator[Any]:
    """Every celery event published on the Redis, as Flower's receiver gets it (a pattern subscription)."""
    pubsub = redis.Redis.from_url(redis_url).pubsub()
    pubsub.psubscribe("*celeryev*")
    pubsub.get_message(timeout=1)
    yield pubsub
    pubsub.close()


def events(pubsub: Any, expected: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(got) < expected:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "pmessage":
            envelope = json.loads(message["data"])
            envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
            got.append(strip(envelope))
    assert pubsub.get_message(timeout=0.3) is None, "more events than customers"
    return got


def strip(value: Any) -> Any:
    return {k: strip(v) for k, v in value.items() if k not in PER_PUBLICATION} if isinstance(value, dict) else value


def results(n: int) -> list[Result]:
    items = [Item(task_id=f"task-{i}", tenant="t", run="run-1", customer={"id": f"c-{i}"}) for i in range(n)]
    return [Done(item, Outcome.CREATED, "new profile") if i % 3 else Again(item, 1.0, "another sync is running")
            for i, item in enumerate(items)]


def test_a_batch_announces_each_customers_task_end_exactly_as_one_send_each(app, heard, monkeypatch):
    """Given 7 results in chunks of 3 (three pipelines), Flower hears 7 events, in order: the same type,
    task id, result or reason and fields as a `dispatcher.send` of each on its own publishes."""
    monkeypatch.setattr(tasks, "ANNOUNCE_CHUNK", 3)
    batch = results(7)
    tasks._announce(app, [], batch, 1.5)
    announced = events(heard, 7)
    with app.events.default_dispatcher() as dispatcher:
        for r in batch:
            if isinstance(r, Done):
                dispatcher.send("task-succeeded", uuid=r.item.task_id, result=repr(r.outcome.value), runtime=1.5)
            else:
                dispatcher.send("task-retried", uuid=r.item.task_id, exception=r.reason, traceback="")
    one_by_one = events(heard, 7)
    assert announced == one_by_one
    assert [e["body"]["uuid"] for e in announced] == [f"task-{i}" for i in range(7)]
    assert [e["body"]["type"] for e in announced[:2]] == ["task-retried", "task-succeeded"]
    assert announced[1]["body"]["result"] == "'created'"
