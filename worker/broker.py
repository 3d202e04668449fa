"""The Celery broker, asked how many messages wait on a queue. Built from `settings.broker`, which may be
another server than the state Redis (`SYNC_BROKER_URL`): the rescue, the metrics and the operator
commands ask it, never the state store, about the queues.

`Broker` is the interface; `RedisBroker` answers for kombu's Redis transport. A message a worker holds
(reserved, unacknowledged, or waiting for a retry countdown) is not waiting and is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import redis

#: kombu's Redis transport keeps a queue's messages with priority p > 0 in `<queue>\x06\x16<p>`.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


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
        lengths: list[int] = pipe.execute()
        per_queue = len(PRIORITY_STEPS)
        return {queue: sum(lengths[i * per_queue:(i + 1) * per_queue]) for i, queue in enumerate(names)}

    def depth(self, queue: str) -> int:
        return self.depths([queue])[queue]

    def empty(self, queues: Iterable[str]) -> bool:
        return not any(self.depths(queues).values())

    def close(self) -> None:
        self.redis.close()


def open_broker(url: str, *, timeout_s: float | None = None) -> Broker:
    """The broker at `url` (`settings.broker`); `timeout_s` bounds each request (a metrics scrape must answer)."""
    if url.split(":", 1)[0] not in ("redis", "rediss", "unix"):
        raise ValueError(f"no queue-depth support for the broker at {url.split(':', 1)[0]}://")
    return RedisBroker.from_url(url, timeout_s=timeout_s)
