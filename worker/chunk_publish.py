"""Many tasks of one name and queue as Celery's `send_task` would publish them, built a chunk at a time.

`send_task` costs about 250 µs of CPU a message here (routing, `as_task_v2`, a saferepr, kombu's publish
and then the task-sent event through a second publish), which held a backfill producer under 4,000
customers a second. A chunk of a backfill is one task name, one queue and one set of options; only the
task id, the kwargs and their repr differ. So `ChunkPublisher` asks Celery's own `app.amqp.as_task_v2`
for the protocol-2 message once per chunk, copies its headers per message with the id, root id and
`kwargsrepr` set as `send_task` sets them, and hands each to kombu's `Producer.publish` with the
properties `send_task_message` gives it (anonymous exchange and the queue's name as routing key for a
direct queue, the queue's delivery mode, `correlation_id`, `reply_to`, `kwargsrepr`). The body is JSON
text, `[args, kwargs, embed]` written around the kwargs' JSON the caller made
(`CustomerMessage.kwargs_json`). What lands in Redis is the message `send_task` puts there, its body
the same JSON value (the snapshot's part compact and in UTF-8 where Python's json escapes);
tests/test_messages.py compares the two.

Task-sent events (`task_send_sent_event`) go out batched: one event message per chunk whose body is
the list of the chunk's task-sent events, routed `task.multi`, which is how Celery's own workers batch
their task events (`EventDispatcher(buffer_group=...)`) and what Flower's receiver reads.

Not done here, unlike `send_task`: the `before_task_publish`/`after_task_publish`/`task_sent` signals
(`enqueue_many` uses `send_task` whenever a receiver is connected), and adding each message's result to
the calling task's trail (our tasks ignore results; a scheduled backfill would otherwise hold one
`AsyncResult` per customer in the worker's memory until it returns).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from celery import Celery, signals
from celery.events import Event
from celery.utils.time import utcoffset
from kombu.utils.uuid import uuid

JSON = "application/json"
#: The routing key of an event message whose body is a list of task events (Celery's `group.multi`).
TASK_EVENTS_ROUTING_KEY = "task.multi"
_TEMPLATE_ID = "-"


def can_publish_chunks(app: Celery) -> bool:
    """Whether `ChunkPublisher` sends what `send_task` would: JSON bodies, uncompressed, and nobody listening
    to Celery's publish signals (only `send_task` sends them)."""
    signals_heard = any(s.receivers for s in (signals.before_task_publish, signals.after_task_publish,
                                              signals.task_sent))
    return app.conf.task_serializer == "json" and not app.conf.task_compression and not signals_heard


class ChunkPublisher:
    """Publishes tasks named `task` on `queue` of `app` through `producer`, one kombu `publish` each plus
    one for a chunk's task-sent events. Inside `Producer.batch` a chunk is one Redis round trip."""

    def __init__(self, app: Celery, producer: Any, task: str, queue: str) -> None:   # kombu's untyped Producer
        self.app = app
        self.producer = producer
        self.task = task
        declared = app.amqp.queues[queue]
        self.queue = declared.name
        # As `send_task_message` routes a direct queue: the anonymous exchange, the queue as routing key.
        direct = (declared.exchange.type or "direct") == "direct"
        self.exchange = "" if direct else declared.exchange.name
        self.routing_key = self.queue if direct else declared.routing_key
        self.delivery_mode = declared.exchange.delivery_mode or app.conf.task_default_delivery_mode
        # Only its hostname, pid, exchange and headers are used: events go through `producer` as send_task's do.
        self.events = (app.events.Dispatcher(producer.connection, enabled=False)
                       if app.conf.task_send_sent_event else None)

    def publish(self, tasks: Iterable[tuple[str, str]]) -> int:
        """Publish one task per (kwargs as JSON text, kwargsrepr); returns how many."""
        parent = self.app.current_worker_task   # a producer running as a task: its messages are its children
        parent_id = parent.request.id if parent else None
        root_id = (parent.request.root_id or parent_id) if parent else None
        template = self.app.amqp.as_task_v2(
            _TEMPLATE_ID, self.task, (), {}, reply_to=self.app.thread_oid, root_id=root_id, parent_id=parent_id,
            create_sent_event=self.events is not None, kwargsrepr="")
        args, _, embed = template.body
        # The body `send_task` would serialize, (args, kwargs, embed), written around each kwargs' JSON.
        body_head, body_tail = f"[{json.dumps(args)}, ", f", {json.dumps(embed)}]"
        reply_to = template.properties["reply_to"]
        events: list[dict[str, Any]] = []
        if self.events is not None:
            offset, clock = utcoffset(), self.app.clock
            hostname, pid = self.events.hostname, self.events.pid
            routed = {"queue": self.queue, "exchange": self.exchange, "routing_key": self.routing_key}
        sent = 0
        for kwargs_json, kwargsrepr in tasks:
            task_id = uuid()
            ids = {"id": task_id, "root_id": root_id or task_id, "kwargsrepr": kwargsrepr}
            self.producer.publish(
                body_head + kwargs_json + body_tail, content_type=JSON, content_encoding="utf-8",
                exchange=self.exchange, routing_key=self.routing_key, retry=False, declare=[],
                delivery_mode=self.delivery_mode, headers={**template.headers, **ids},
                correlation_id=task_id, reply_to=reply_to, kwargsrepr=kwargsrepr)
            if self.events is not None:
                events.append(Event("task-sent", hostname=hostname, utcoffset=offset, pid=pid, clock=clock.forward(),
                                    **{**template.sent_event, "uuid": task_id, "root_id": ids["root_id"],
                                       "kwargs": kwargsrepr}, **routed))
            sent += 1
        if events and self.events is not None:
            self.producer.publish(events, routing_key=TASK_EVENTS_ROUTING_KEY, exchange=self.events.exchange.name,
                             declare=[self.events.exchange], serializer=self.events.serializer,
                             headers=self.events.headers, delivery_mode=self.events.delivery_mode, retry=False)
        return sent
