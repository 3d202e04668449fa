"""The message between the two sides: queue and task names, `CustomerMessage`, `enqueue`, the task repr.

Producers import this module (and no other of `worker/` that talks to Klaviyo or the limiter) to put
customers on the queue; the worker's tasks read the same message back.

On the queue a message is JSON kwargs: `tenant`, `run`, `customer` (the snapshot, `LoyaleCustomer`'s
own JSON), `events` when it carries loyalty events and, once retried, `attempt`, `throttles`,
`collisions`. Messages enqueued by earlier versions (a `customer` dict in Loyale's camelCase keys plus
`levelNames`, `levelsUnknown`, `leftScheme`, `points_balance`...) are the same shape and still read:
a deploy mid-run strands nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import suppress
from itertools import chain, islice
from typing import Any

import structlog
from amqp.exceptions import AMQPError
from celery import Celery
from kombu.exceptions import BatchPublishError, KombuError
from kombu.messaging import Producer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticSerializationError

from worker.chunk_publish import ChunkPublisher, can_publish_chunks
from worker.confirms import ConfirmedChannel, PublishNotConfirmed
from worker.models import LoyaleCustomer, parse_customer
from worker.settings import broker_transport

QUEUE_INCREMENTAL = "sync.incremental"
QUEUE_BACKFILL = "sync.backfill"
#: Scheduled passes run on their own queue, so a long backfill producer never holds up a worker
#: that syncs incremental changes.
QUEUE_PRODUCERS = "sync.producers"
QUEUES = (QUEUE_INCREMENTAL, QUEUE_BACKFILL, QUEUE_PRODUCERS)

#: One customer, synced on its own (incremental changes, webhooks, retries of failures).
TASK_CUSTOMER = "sync.customer"
#: The same one-message-per-customer task for backfills, consumed by workers that sync the customers
#: they hold in batches (`worker.batch`).
TASK_BACKFILL_CUSTOMER = "sync.backfill_customer"
TASK_INCREMENTAL_PASS = "sync.incremental_pass"
TASK_SCHEDULED_BACKFILL = "sync.scheduled_backfill"
TASK_RESCUE_STALLED_RUNS = "sync.rescue_stalled_runs"
TASK_RECHECK_SUPPRESSIONS = "sync.recheck_suppressions"
#: A webhook named a customer: re-read it from Loyale, then sync it (queue sync.incremental).
TASK_CUSTOMER_HINT = "sync.customer_hint"

NO_ID = "(no id)"

#: Messages `enqueue_many` publishes per Redis round trip (a page of Loyale customers is 100).
PUBLISH_CHUNK = 1000
#: Redis commands a chunk may buffer before kombu flushes on its own: a message is an LPUSH (and, sent
#: one `send_task` each, its task-sent event's PUBLISH), so a chunk stays one round trip; only a guard.
PIPELINE_MAX_COMMANDS = 10 * PUBLISH_CHUNK
#: How long a chunk may wait for RabbitMQ's confirms before it is sent again message by message.
CONFIRM_TIMEOUT_S = 30.0
#: What a chunk published on RabbitMQ may meet: a refusal or silence, a lost connection or channel.
CONFIRM_ERRORS = (PublishNotConfirmed, OSError, KombuError, AMQPError)

log = structlog.get_logger("messages")


class UnreadableCustomer(BaseModel):
    """A Loyale record that is no customer (it has no usable id). It travels as read, so that the worker
    records it `invalid` with the reason, like any other customer of the run."""

    model_config = ConfigDict(frozen=True)

    payload: dict[str, Any]

    @property
    def customer_id(self) -> str:
        return customer_id_of(self.payload)


#: The customer a message carries: the producer's typed snapshot, or the record it could not read.
Snapshot = LoyaleCustomer | UnreadableCustomer


def customer_id_of(payload: object) -> str:
    """The id of a raw Loyale record or a snapshot dict, or "(no id)"."""
    value = payload.get("id") if isinstance(payload, dict) else None
    return str(value).strip() if isinstance(value, str | int) and str(value).strip() else NO_ID


def read_snapshot(payload: dict[str, Any]) -> Snapshot:
    """A snapshot dict (Loyale's keys and ours, of any version) as the typed snapshot."""
    try:
        customer, warnings = parse_customer(payload)
    except ValidationError:
        return UnreadableCustomer(payload=payload)
    return customer.model_copy(update={"parse_warnings": warnings})


def snapshot_json(customer: Snapshot) -> dict[str, Any]:
    """The snapshot as it goes on the queue (what `read_snapshot` reads back)."""
    if isinstance(customer, UnreadableCustomer):
        return customer.payload
    return customer.model_dump(mode="json", by_alias=True)


def snapshot_json_text(customer: Snapshot) -> str:
    """`snapshot_json` as JSON text, written by pydantic's compiled serializer: a fifth of the CPU of dumping
    the snapshot to a dict and that to JSON. What it cannot write (a lone surrogate, which Python's json
    escapes) and an unreadable record go the slow way; both read back as `snapshot_json` gives them."""
    if isinstance(customer, LoyaleCustomer):
        with suppress(PydanticSerializationError):
            return customer.model_dump_json(by_alias=True)
    return json.dumps(snapshot_json(customer))


def snapshot_id(customer: Snapshot) -> str:
    return customer.customer_id if isinstance(customer, UnreadableCustomer) else customer.id


class CustomerMessage(BaseModel):
    """One customer of one run, as it travels on the queue."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    run: str
    customer: Snapshot
    #: Attempts made (a deferral or a 429 does not spend one).
    attempt: int = Field(default=1, ge=1)
    #: 429s answered in a row for it; bounded by `worker.retry.MAX_THROTTLES`.
    throttles: int = Field(default=0, ge=0)
    #: Times a batch sent it on to a later batch because it collided with another customer.
    collisions: int = Field(default=0, ge=0)
    #: Loyalty events to send after the customer's profile sync (`worker.events.LoyaltyEvent.to_json`):
    #: from a webhook or the catch-up pass; on the queue only when there are some.
    events: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("customer", mode="before")
    @classmethod
    def _customer(cls, value: Any) -> Any:
        return read_snapshot(value) if isinstance(value, dict) else value

    @property
    def customer_id(self) -> str:
        return snapshot_id(self.customer)

    def kwargs(self) -> dict[str, Any]:
        """The task's kwargs: counters only once they moved, so the JSON is what every version reads."""
        return {"tenant": self.tenant, "run": self.run, "customer": snapshot_json(self.customer), **self._moved(),
                **({"events": self.events} if self.events else {})}

    def kwargs_json(self) -> str:
        """`kwargs()` as JSON text, the snapshot written by `snapshot_json_text`."""
        fields = [f'"tenant": {json.dumps(self.tenant)}', f'"run": {json.dumps(self.run)}',
                  f'"customer": {snapshot_json_text(self.customer)}',
                  *(f'"{name}": {count}' for name, count in self._moved().items()),
                  *([f'"events": {json.dumps(self.events)}'] if self.events else [])]
        return "{" + ", ".join(fields) + "}"

    def _moved(self) -> dict[str, int]:
        counters = {"attempt": self.attempt, "throttles": self.throttles, "collisions": self.collisions}
        defaults = {"attempt": 1, "throttles": 0, "collisions": 0}
        return {k: v for k, v in counters.items() if v != defaults[k]}

    def repr(self) -> str:
        return task_repr(self.tenant, self.run, self.customer_id)


def task_repr(tenant: str, run: str, customer_id: str) -> str:
    """What Flower and the logs show of a task: ids only, never the customer's personal data."""
    return repr({"tenant": tenant, "run": run, "customer_id": customer_id})


def enqueue(app: Celery, message: CustomerMessage, queue: str, **options: Any) -> None:
    """Put one customer on the queue: batched on the backfill queue, on its own on the incremental one."""
    app.send_task(task_for(queue), kwargs=message.kwargs(), queue=queue, kwargsrepr=message.repr(), **options)


def task_for(queue: str) -> str:
    return TASK_BACKFILL_CUSTOMER if queue == QUEUE_BACKFILL else TASK_CUSTOMER


def enqueue_many(app: Celery, messages: Iterable[CustomerMessage], queue: str) -> int:
    """Put many customers on the queue, one message each, as `enqueue` sends it; returns how many.

    On kombu's Redis transport each chunk of `PUBLISH_CHUNK` is one round trip: `ChunkPublisher` builds
    the chunk's messages from one `as_task_v2` (what workers, celery-batches and Flower read is what
    `send_task` sends; the chunk's task-sent events travel as one list) and kombu's `Producer.batch`
    buffers their LPUSHes and the events' PUBLISH in one pipeline. The queue is declared once per call.
    A chunk whose pipeline fails (delivery uncertain) is sent again one `send_task` each, with Celery's
    publish retries: a customer delivered twice is harmless. A transport without batch publishing gets
    one `send_task` each, and so does every chunk while a publish signal has a receiver. On RabbitMQ
    each message is a `send_task` and each chunk one wait for RabbitMQ's confirms (`worker.confirms`)."""
    if broker_transport(app.conf.broker_url) == "amqp":
        return _enqueue_confirmed(app, messages, queue)
    sent = 0
    with app.producer_or_acquire() as producer:
        if not getattr(producer, "supports_batch_publish", False):
            for message in messages:
                enqueue(app, message, queue, producer=producer)
                sent += 1
            return sent
        producer.maybe_declare(app.amqp.queues[queue], retry=True, **app.conf.task_publish_retry_policy)
        publisher = ChunkPublisher(app, producer, task_for(queue), queue)
        for chunk in _chunks(messages, PUBLISH_CHUNK):
            try:
                with producer.batch(max_size=PIPELINE_MAX_COMMANDS):
                    if can_publish_chunks(app):
                        publisher.publish((message.kwargs_json(), message.repr()) for message in chunk)
                    else:
                        for message in chunk:
                            enqueue(app, message, queue, producer=producer, declare=[], retry=False)
            except BatchPublishError as exc:
                log.warning("publish_chunk_resent", queue=queue, messages=len(chunk), error=str(exc.__cause__ or exc))
                for message in chunk:
                    enqueue(app, message, queue)
            sent += len(chunk)
    return sent


def _enqueue_confirmed(app: Celery, messages: Iterable[CustomerMessage], queue: str) -> int:
    """RabbitMQ: `send_task` each, on a connection of its own whose channel RabbitMQ confirms a chunk at a
    time. A chunk not confirmed (refused, no answer, the connection lost) is sent again, and the rest
    after it, one `send_task` each with a confirm each and Celery's publish retries."""
    sent = 0
    chunks = _chunks(messages, PUBLISH_CHUNK)
    with app.connection_for_write(transport_options={"confirm_publish": False}) as connection:
        try:
            confirmed = ConfirmedChannel(connection.default_channel)
            producer = Producer(confirmed.channel)  # type: ignore[no-untyped-call]
        except CONFIRM_ERRORS as exc:
            return _enqueue_each(app, [], chunks, queue, exc)
        for chunk in chunks:
            try:
                for message in chunk:
                    enqueue(app, message, queue, producer=producer, retry=False)
                confirmed.wait(CONFIRM_TIMEOUT_S)
            except CONFIRM_ERRORS as exc:
                return sent + _enqueue_each(app, chunk, chunks, queue, exc)
            sent += len(chunk)
    return sent


def _enqueue_each(app: Celery, chunk: list[CustomerMessage], rest: Iterator[list[CustomerMessage]], queue: str,
                  exc: BaseException) -> int:
    log.warning("publish_chunk_resent", queue=queue, messages=len(chunk), error=str(exc.__cause__ or exc))
    sent = 0
    for message in chain(chunk, chain.from_iterable(rest)):
        enqueue(app, message, queue)
        sent += 1
    return sent


def _chunks(messages: Iterable[CustomerMessage], size: int) -> Iterator[list[CustomerMessage]]:
    it = iter(messages)
    while chunk := list(islice(it, size)):
        yield chunk
