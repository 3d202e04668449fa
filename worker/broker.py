"""The Celery broker, asked how many messages wait on a queue. Built from `settings.broker`, which may be
another server than the state Redis (`SYNC_BROKER_URL`): the rescue, the metrics and the operator
commands ask it, never the state store, about the queues.

`Broker` is the interface; `open_broker` picks the implementation by the URL's scheme: `RedisBroker`
for kombu's Redis transport, `AmqpBroker` for RabbitMQ. On both, a message a worker holds (reserved,
unacknowledged, in a batch) is not waiting and is not counted; neither is one waiting out a countdown
(on Redis a worker holds it, on RabbitMQ it sits in Celery's delay queues, `celery_delayed_*`). Both
raise `BrokerError` when the broker cannot answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import amqp
import redis
from kombu.connection import Connection

from worker.settings import broker_transport

#: kombu's Redis transport keeps a queue's messages with priority p > 0 in `<queue>\x06\x16<p>`.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


class BrokerError(Exception):
    """The broker did not answer (down, unreachable, refused us); the message says which and why."""


def queue_lists(queue: str) -> list[str]:
    """The broker's Redis lists that hold the queue's waiting messages (one per priority step)."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


class Broker(Protocol):
    def depths(self, queues: Iterable[str]) -> dict[str, int]:
        """Messages waiting on each queue, in one round trip where the transport allows."""
        ...

    def depth(self, queue: str) -> int: ...

    def empty(self, queues: Iterable[str]) -> bool: ...

    def close(self) -> None: ...


class RedisBroker:
    """kombu's Redis transport: a queue is a list per priority step."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float | None = None) -> RedisBroker:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s))

    def depths(self, queues: Iterable[str]) -> dict[str, int]:
        names: Sequence[str] = list(queues)
        pipe = self.redis.pipeline(transaction=False)
        for queue in names:
            for name in queue_lists(queue):
                pipe.llen(name)
        try:
            lengths: list[int] = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"the Redis broker did not answer ({type(exc).__name__}: {exc})") from exc
        per_queue = len(PRIORITY_STEPS)
        return {queue: sum(lengths[i * per_queue:(i + 1) * per_queue]) for i, queue in enumerate(names)}

    def depth(self, queue: str) -> int:
        return self.depths([queue])[queue]

    def empty(self, queues: Iterable[str]) -> bool:
        return not any(self.depths(queues).values())

    def close(self) -> None:
        self.redis.close()


class AmqpBroker:
    """RabbitMQ: a passive `queue.declare` answers a queue's ready messages (the ones no consumer holds:
    RabbitMQ counts the delivered and unacknowledged apart) without creating or changing the queue.
    A queue never declared holds nothing. The connection is kept between calls and opened again once
    when it has died (a broker restart)."""

    def __init__(self, connection: Connection) -> None:
        self.connection: Any = connection     # kombu's Connection, untyped

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float | None = None) -> AmqpBroker:
        options = {} if timeout_s is None else {"read_timeout": timeout_s, "write_timeout": timeout_s}
        return cls(Connection(url, connect_timeout=timeout_s or 5.0,  # type: ignore[no-untyped-call]
                              transport_options=options))

    def depths(self, queues: Iterable[str]) -> dict[str, int]:
        names = list(queues)
        errors = (*self.connection.connection_errors, *self.connection.channel_errors)
        try:
            return self._depths(names)
        except errors:
            # a dead socket (the broker restarted since the last call): once more on a fresh connection
            self.connection.release()
            self.connection = self.connection.clone()
        try:
            return self._depths(names)
        except errors as exc:
            where = self.connection.as_uri()   # the password masked
            raise BrokerError(f"RabbitMQ at {where} did not answer ({type(exc).__name__}: {exc})") from exc

    def _depths(self, names: list[str]) -> dict[str, int]:
        # one attempt, no sleeping retries: a metrics scrape or the rescue would rather hear "down" now
        self.connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        channel = self.connection.channel()
        counts: dict[str, int] = {}
        try:
            for name in names:
                try:
                    counts[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except amqp.exceptions.NotFound:
                    counts[name] = 0
                    channel = self.connection.channel()     # the server closed the channel with its 404
        finally:
            self.connection.maybe_close_channel(channel)
        return counts

    def depth(self, queue: str) -> int:
        return self.depths([queue])[queue]

    def empty(self, queues: Iterable[str]) -> bool:
        return not any(self.depths(queues).values())

    def close(self) -> None:
        self.connection.release()


def open_broker(url: str, *, timeout_s: float | None = None) -> Broker:
    """The broker at `url` (`settings.broker`); `timeout_s` bounds each request (a metrics scrape must answer)."""
    if broker_transport(url) == "amqp":
        return AmqpBroker.from_url(url, timeout_s=timeout_s)
    return RedisBroker.from_url(url, timeout_s=timeout_s)
