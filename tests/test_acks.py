"""`worker.acks.ack_together`: a batch's Redis messages acknowledged in one round trip, through a real
kombu channel on a private Redis; other transports, and a Redis that does not answer, one by one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from fakes.processes import RedisServer
from worker.acks import ack_together


@dataclass
class Delivered:
    """What `ack_together` uses of celery's `Request`: its kombu message, and its own ack (kombu's
    per-message path), counted."""

    message: Any
    acknowledged: bool = False
    one_by_one: int = 0

    def acknowledge(self) -> None:
        self.one_by_one += 1
        self.message.ack_log_error(_Log(), (Exception,))
        self.acknowledged = True


class _Log:
    def critical(self, *args: Any, **kwargs: Any) -> None:
        pass


def consume(conn: Connection, name: str, n: int) -> list[Delivered]:
    queue = Queue(name, Exchange(name), name)
    with conn.Producer() as producer:
        for i in range(n):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key=name, declare=[queue])
    received: list[Delivered] = []
    consumer = conn.Consumer(queue, callbacks=[lambda body, message: received.append(Delivered(message))])
    consumer.consume()
    while len(received) < n:
        conn.drain_events(timeout=5)
    return received


def test_a_batch_of_redis_messages_is_acknowledged_with_one_zrem_and_one_hdel(redis_url):
    raw = redis.Redis.from_url(redis_url)
    with Connection(redis_url) as conn:
        received = consume(conn, "together", 2500)
        assert raw.hlen("unacked") == 2500
        raw.config_resetstat()
        ack_together(received)
        stats = raw.info("commandstats")
        # kombu alone: 2,500 ZREMs and 2,500 HDELs, one pipeline each. Here one of each per 1,000 tags.
        assert stats["cmdstat_zrem"]["calls"] == 3 and stats["cmdstat_hdel"]["calls"] == 3
        assert raw.hlen("unacked") == 0 and raw.zcard("unacked_index") == 0
        assert all(d.acknowledged and d.message.acknowledged and d.one_by_one == 0 for d in received)
        # kombu's own bookkeeping knows: the prefetch slots are free, a second ack is refused as before.
        qos = received[0].message.channel.qos
        assert len(qos._delivered) - len(qos._dirty) == 0
        ack_together(received)
        assert all(d.one_by_one == 0 for d in received)


def test_messages_of_other_transports_are_acknowledged_one_by_one():
    with Connection("memory://") as conn:
        received = consume(conn, "memory", 3)
        ack_together(received)
        assert [d.one_by_one for d in received] == [1, 1, 1]
        assert all(d.message.acknowledged for d in received)


def test_a_redis_that_does_not_answer_leaves_each_message_to_kombus_own_ack():
    """The removal fails: each message takes kombu's path (which logs its own error), none is marked
    acknowledged without Redis having taken it, and the broker gives them back later."""
    server = RedisServer().start()
    try:
        with Connection(server.url, transport_options={"max_retries": 0}) as conn:
            received = consume(conn, "down", 4)
            server.stop()
            ack_together(received)
            assert [d.one_by_one for d in received] == [1, 1, 1, 1]
            assert not any(d.message.acknowledged for d in received)
    finally:
        server.cleanup()
