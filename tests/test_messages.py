"""The message between producers and workers: its JSON (old and new), its repr, and who imports what."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, signals
from celery._state import _task_stack

from tests.builders import loyale_payload
from tests.harness import RoundTrips
from tests.integration.test_brokers import holding
from worker.app import create_app
from worker.broker import queue_lists
from worker.messages import (
    QUEUE_BACKFILL,
    QUEUE_INCREMENTAL,
    QUEUE_PRODUCERS,
    TASK_BACKFILL_CUSTOMER,
    TASK_CUSTOMER,
    TASK_CUSTOMER_HINT,
    TASK_INCREMENTAL_PASS,
    TASK_RECHECK_SUPPRESSIONS,
    TASK_RESCUE_STALLED_RUNS,
    TASK_SCHEDULED_BACKFILL,
    CustomerMessage,
    UnreadableCustomer,
    enqueue,
    enqueue_many,
)
from worker.models import LoyaleCustomer, parse_customer
from worker.settings import Settings

PRODUCERS = "producers.backfill, producers.incremental, producers.rescue, producers.webhooks"
NOT_FOR_PRODUCERS = ("worker.tasks", "worker.batch", "worker.klaviyo", "worker.ratelimit")


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]   # the last line: logging may come before it


def test_producers_import_neither_the_worker_tasks_nor_the_klaviyo_side():
    loaded = json.loads(run_python(f"import {PRODUCERS}; import sys, json; "
                                   f"print(json.dumps(sorted(m for m in sys.modules if m.startswith('worker'))))"))
    assert not set(NOT_FOR_PRODUCERS) & set(loaded), loaded


def test_the_producer_tasks_import_neither_the_app_nor_the_sync_tasks():
    """The producers' Celery tasks run in worker processes and use the process's runtime (Loyale, the
    store, the Klaviyo client for the suppression re-check), but never the app or the sync tasks: the
    app registers them, not the other way round."""
    loaded = json.loads(run_python("import producers.tasks; import sys, json; "
                                   "print(json.dumps(sorted(m for m in sys.modules if m.startswith('worker'))))"))
    assert not {"worker.app", "worker.tasks", "worker.batch", "worker.bulk_import"} & set(loaded), loaded


def test_the_worker_side_imports_no_producer_module_but_the_app():
    """Only `worker.app` imports `producers/` (to register the producers' tasks and beat schedule); the
    metrics read the producers' watermark through the callable `cli.metrics` hands them."""
    loaded = json.loads(run_python(
        "import importlib, json, pkgutil, sys, worker; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(worker.__path__, 'worker.') "
        "if m.name != 'worker.app']; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('producers'))))"))
    assert loaded == [], loaded


def test_the_app_registers_every_task_and_queue_without_an_import_cycle():
    """`celery -A worker.app worker` consumes the producers' queue as before: importing the app alone
    registers the producers' tasks and the beat schedule's tasks exist."""
    out = json.loads(run_python(
        "import json; from worker.app import app; "
        "print(json.dumps({'tasks': sorted(app.tasks), 'queues': [q.name for q in app.conf.task_queues],"
        " 'beat': sorted({e['task'] for e in (app.conf.beat_schedule or {}).values()})}))"))
    names = {TASK_CUSTOMER, TASK_BACKFILL_CUSTOMER, TASK_CUSTOMER_HINT, TASK_INCREMENTAL_PASS,
             TASK_SCHEDULED_BACKFILL, TASK_RESCUE_STALLED_RUNS, TASK_RECHECK_SUPPRESSIONS}
    assert names <= set(out["tasks"])
    assert out["queues"] == [QUEUE_INCREMENTAL, QUEUE_BACKFILL, QUEUE_PRODUCERS]
    assert set(out["beat"]) <= names
    # no cycle: the producers' task module does not import the app that registers it
    assert run_python("import producers.tasks, sys; print('worker.app' in sys.modules)") == "False"


def test_a_message_of_the_previous_version_reads_as_the_same_customer():
    """The JSON on the queue stays compatible: the old kwargs (a camelCase customer dict, counters
    optional) read as a message, and the new JSON reads back as the same customer in old readers too."""
    old = {"tenant": "t", "run": "r", "customer": loyale_payload(), "attempt": 3, "throttles": 2}
    message = CustomerMessage.model_validate(old)
    assert (message.attempt, message.throttles, message.collisions) == (3, 2, 0)
    assert message.customer == parse_customer(loyale_payload())[0]
    again = CustomerMessage.model_validate(message.kwargs())
    assert again == message
    # a reader of the previous version parses the new JSON with LoyaleCustomer (aliases, extra ignored)
    assert LoyaleCustomer.model_validate(message.kwargs()["customer"]) == message.customer
    fresh = CustomerMessage(tenant="t", run="r", customer=loyale_payload())
    assert set(fresh.kwargs()) == {"tenant", "run", "customer"}


def test_parse_warnings_travel_with_the_snapshot():
    message = CustomerMessage(tenant="t", run="r", customer=loyale_payload(firstName={"x": 1}, town=["y"]))
    warnings = ["first_name: ignored a value of type dict, expected text",
                "town: ignored a value of type list, expected text"]
    assert parse_customer(message.kwargs()["customer"])[1] == warnings
    assert parse_customer(message.customer)[1] == warnings


def test_a_record_without_id_travels_as_read_and_the_repr_holds_ids_only():
    message = CustomerMessage(tenant="t", run="r", customer={"id": None, "email": "jane@example.com"})
    assert isinstance(message.customer, UnreadableCustomer) and message.customer_id == "(no id)"
    assert message.kwargs()["customer"] == {"id": None, "email": "jane@example.com"}
    good = CustomerMessage(tenant="t", run="r", customer=loyale_payload())
    assert good.repr() == repr({"tenant": "t", "run": "r", "customer_id": "c-1"})
    assert "Jane" not in good.repr() and "@" not in good.repr()


# -- publishing many at once: the same messages as send_task's, one Redis round trip per chunk --------------

#: What differs between two publications of the same customer: the task's and the delivery's ids, the time.
PER_PUBLICATION = {"id", "root_id", "correlation_id", "delivery_tag", "uuid", "timestamp", "clock", "utcoffset"}


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = create_app(Settings(redis_url=redis_url))
    yield app
    app.close()


def message(index: int) -> CustomerMessage:
    return CustomerMessage(tenant="acme", run="backfill-1", customer=LoyaleCustomer.model_validate(
        loyale_payload(id=f"c-{index}", email=f"c{index}@example.com")))


def varied_messages() -> list[CustomerMessage]:
    """Messages whose JSON takes every path: plain, counters moved, loyalty events carried, non-ASCII and a
    number pydantic writes differently from Python's json, a lone surrogate (pydantic cannot write it), a
    record without id."""
    plain = message(1)
    return [
        plain,
        plain.model_copy(update={"attempt": 3, "throttles": 2, "collisions": 1}),
        plain.model_copy(update={"events": [{"metric": "Loyale Points Earned", "customer_id": "c-1", "unique_id": "u",
                                             "time": "2026-03-01T10:00:00+00:00", "properties": {"Outlet": "Zoë"}}]}),
        CustomerMessage(tenant="acmé", run="backfill-1", customer=loyale_payload(
            id="c-2", firstName="Zoë \u2028 名", additionalCustomerFields=[{"key": "k", "value": 1e16}])),
        CustomerMessage(tenant="acme", run="backfill-1", customer=loyale_payload(id="c-3", firstName="Zoë\ud83d")),
        CustomerMessage(tenant="acme", run="backfill-1", customer={"id": None, "email": "jane@example.com"}),
    ]


def test_the_kwargs_json_text_reads_back_as_the_kwargs():
    for sent in varied_messages():
        assert json.loads(sent.kwargs_json()) == sent.kwargs()
        assert CustomerMessage.model_validate(json.loads(sent.kwargs_json())) == sent


def comparable(raw: bytes | str) -> dict[str, Any]:
    """A message (or event) as Redis holds it, body decoded, the per-publication ids and times left out."""
    def strip(value: Any) -> Any:
        if isinstance(value, list):
            return [strip(v) for v in value]
        return ({k: strip(v) for k, v in value.items() if k not in PER_PUBLICATION} if isinstance(value, dict)
                else value)
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return dict(strip(envelope))


def published_events(pubsub: Any, count: int) -> list[dict[str, Any]]:
    events, deadline = [], time.monotonic() + 5
    while time.monotonic() < deadline and len(events) < count:
        got = pubsub.get_message(timeout=0.2)
        if got and got["type"] == "pmessage":
            events.append(comparable(got["data"]))
    return events


@pytest.mark.parametrize("queue", [QUEUE_BACKFILL, QUEUE_INCREMENTAL])
def test_enqueue_many_puts_exactly_the_messages_send_task_puts_on_the_queue(app, redis_url, queue):
    """Given customers enqueued one `send_task` each (`enqueue`) and the same customers by `enqueue_many`,
    then the queue's list holds pairs that differ only in their ids: same task, kwargs, kwargsrepr,
    headers and properties, in the same priority list, in the same order. Flower's task-sent events are
    the same events, sent one per message by `send_task` and as one list by `enqueue_many`."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("*celeryev*")
    pubsub.get_message(timeout=1)
    sent = varied_messages()
    for each in sent:
        enqueue(app, each, queue)
    assert enqueue_many(app, sent, queue) == len(sent)
    raw = client.lrange(queue, 0, -1)[::-1]   # LPUSH: the newest first
    assert len(raw) == 2 * len(sent) and not any(client.llen(name) for name in queue_lists(queue)[1:])
    by_send_task, by_enqueue_many = raw[:len(sent)], raw[len(sent):]
    assert [comparable(r) for r in by_enqueue_many] == [comparable(r) for r in by_send_task]
    for each, a, b in zip(sent, by_send_task, by_enqueue_many, strict=True):
        for published in (json.loads(a), json.loads(b)):
            headers = published["headers"]
            assert headers["id"] == headers["root_id"] == published["properties"]["correlation_id"]
            assert headers["task"] == (TASK_BACKFILL_CUSTOMER if queue == QUEUE_BACKFILL else TASK_CUSTOMER)
            assert headers["kwargsrepr"] == each.repr()
            assert json.loads(base64.b64decode(published["body"]))[1] == each.kwargs()
    events = published_events(pubsub, len(sent) + 1)
    one_each, as_list = events[:len(sent)], events[len(sent)]
    routing_keys = [e["properties"]["delivery_info"]["routing_key"] for e in events]
    assert routing_keys == ["task.sent"] * len(sent) + ["task.multi"]
    assert as_list["body"] == [e["body"] for e in one_each]
    assert {e["body"]["type"] for e in one_each} == {"task-sent"}
    pubsub.close()


def test_a_producer_running_as_a_task_makes_its_messages_its_children(app, redis_url):
    """Inside a worker task (the scheduled backfill), `send_task` gives each message the task's root and
    parent ids; `enqueue_many` gives the same."""
    client = redis.Redis.from_url(redis_url)
    parent = app.tasks[TASK_SCHEDULED_BACKFILL]
    parent.push_request(id="parent-1", root_id="root-1", called_directly=False)
    _task_stack.push(parent)
    try:
        enqueue(app, message(1), QUEUE_BACKFILL)
        enqueue_many(app, [message(1)], QUEUE_BACKFILL)
    finally:
        _task_stack.pop()
        parent.pop_request()
    published = [json.loads(r)["headers"] for r in client.lrange(QUEUE_BACKFILL, 0, -1)]
    assert [(h["root_id"], h["parent_id"]) for h in published] == [("root-1", "parent-1")] * 2


def test_a_publish_signal_receiver_hears_every_message(app, redis_url):
    """Code listening to Celery's `before_task_publish` (tracing, say) hears each customer `enqueue_many`
    sends, as it would from `send_task`: with a receiver connected, every message goes through it."""
    heard: list[str] = []

    def receiver(headers: dict[str, Any], **_: Any) -> None:
        heard.append(headers["kwargsrepr"])
    signals.before_task_publish.connect(receiver, weak=False)
    try:
        assert enqueue_many(app, [message(i) for i in range(3)], QUEUE_BACKFILL) == 3
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert heard == [message(i).repr() for i in range(3)]
    assert redis.Redis.from_url(redis_url).llen(QUEUE_BACKFILL) == 3


def test_a_chunk_of_messages_is_one_redis_round_trip(app, redis_url, monkeypatch):
    """Given a connection already made, when 250 customers are enqueued by `enqueue_many` in chunks of 100,
    then Redis got 250 LPUSHes and one task-sent PUBLISH per chunk in 3 round trips, where one `send_task`
    each took 2 round trips (LPUSH, PUBLISH) per customer."""
    client = redis.Redis.from_url(redis_url)
    enqueue_many(app, [message(0)], QUEUE_BACKFILL)   # connects and declares the queue
    enqueue(app, message(0), QUEUE_BACKFILL)
    monkeypatch.setattr("worker.messages.PUBLISH_CHUNK", 100)
    client.config_resetstat()
    trips = RoundTrips(monkeypatch)
    assert enqueue_many(app, [message(i) for i in range(250)], QUEUE_BACKFILL) == 250
    many = trips.count
    stats = client.info("commandstats")
    assert (stats["cmdstat_lpush"]["calls"], stats["cmdstat_publish"]["calls"]) == (250, 3)
    trips.count = 0
    for i in range(20):
        enqueue(app, message(i), QUEUE_BACKFILL)
    assert (many, trips.count) == (3, 40)
    assert client.llen(QUEUE_BACKFILL) == 2 + 250 + 20


def test_enqueue_many_on_a_transport_without_batches_sends_each_message(rabbitmq_url, redis_url):
    """RabbitMQ's transport cannot batch publishes: every customer still goes, one `send_task` each."""
    app = create_app(Settings(redis_url=redis_url, broker_url=rabbitmq_url))
    assert enqueue_many(app, [message(i) for i in range(3)], QUEUE_BACKFILL) == 3
    with holding(app, QUEUE_BACKFILL, 3) as got:
        assert [m.headers["kwargsrepr"] for m in got] == [message(i).repr() for i in range(3)]
    app.close()
