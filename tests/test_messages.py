"""The message between producers and workers: its JSON (old and new), its repr, and who imports what."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.builders import loyale_payload
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
)
from worker.models import LoyaleCustomer, parse_customer

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
