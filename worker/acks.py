"""A batch's acknowledgements in one Redis round trip.

kombu acknowledges a Redis message with a pipeline of its own (ZREM from the unacked index, HDEL from
the unacked hash): a round trip and two commands per customer, sent one by one from the worker's event
loop. py-spy put it at about a quarter of a backfill worker's CPU. A batch ends all of its messages at
once, so `ack_together` removes them with one ZREM and one HDEL per channel (chunks of `ACK_CHUNK`
delivery tags), then does the in-memory part of kombu's ack (`virtual.QoS.ack`: the message leaves
the channel's delivered set, which frees its prefetch slot).

Messages on other transports (RabbitMQ acknowledges on its own connection), already acknowledged, or
whose removal failed (the connection dropped: kombu's per-message path logs the error, and the broker
gives unacknowledged messages back later) take kombu's own path one by one, as before. Runs on the
worker's event loop thread (`Consumer.call_soon`), where kombu's own acks run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.virtual.base import QoS as VirtualQoS

log = structlog.get_logger("acks")

#: Delivery tags per ZREM/HDEL.
ACK_CHUNK = 1000


def ack_together(requests: Iterable[Any]) -> None:
    """Acknowledge celery `Request`s: one pipeline per Redis channel, the rest one by one."""
    by_channel: dict[Any, list[Any]] = {}
    one_by_one: list[Any] = []
    for request in requests:
        if request.acknowledged:
            continue
        message = request.message
        if isinstance(message.channel, RedisChannel) and not message.acknowledged:
            by_channel.setdefault(message.channel, []).append(request)
        else:
            one_by_one.append(request)
    for channel, together in by_channel.items():
        if not _remove(channel, [r.message.delivery_tag for r in together]):
            one_by_one += together
            continue
        for request in together:
            VirtualQoS.ack(channel.qos, request.message.delivery_tag)  # type: ignore[no-untyped-call]  # kombu has no types
            request.message._state = "ACK"
            request.acknowledged = True
    for request in one_by_one:
        request.acknowledge()


def _remove(channel: Any, tags: list[str]) -> bool:
    """Take the tags out of the channel's unacked index and hash; False if Redis did not answer."""
    qos = channel.qos
    try:
        with qos.pipe_or_acquire() as pipe:
            for start in range(0, len(tags), ACK_CHUNK):
                chunk = tags[start:start + ACK_CHUNK]
                pipe.zrem(qos.unacked_index_key, *chunk).hdel(qos.unacked_key, *chunk)
            pipe.execute()
        return True
    except Exception as exc:  # noqa: BLE001 - the messages are acknowledged one by one instead
        log.warning("ack_together_failed", messages=len(tags), error=repr(exc),
                    then="acknowledged one by one")
        return False
