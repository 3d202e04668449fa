"""`worker.adaptive_batches.reuse_one_client`: the backfill worker's kombu Redis channel sends its commands
through one redis-py client, and receiving and acknowledging messages through it works as before."""

from __future__ import annotations

import redis
from kombu import Connection, Exchange, Queue

from worker.adaptive_batches import reuse_one_client


def test_a_redis_channel_reusing_one_client_receives_and_acks_every_message(redis_url):
    """Given 5 messages consumed through a channel set up twice: one client serves every command, each
    message arrives once, and once acked none is left in kombu's unacked bookkeeping."""
    queue = Queue("reuse", Exchange("reuse"), "reuse")
    with Connection(redis_url) as conn:
        with conn.Producer() as producer:
            for i in range(5):
                producer.publish({"i": i}, exchange=queue.exchange, routing_key="reuse", declare=[queue])
        channel = conn.channel()
        reuse_one_client(channel)
        reuse_one_client(channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        received = []
        with conn.Consumer(queue, channel=channel, callbacks=[lambda body, message: received.append(message)]):
            while len(received) < 5:
                conn.drain_events(timeout=5)
            raw = redis.Redis.from_url(redis_url)
            assert raw.hlen("unacked") == 5
            for message in received:
                message.ack()
            assert raw.hlen("unacked") == 0 and raw.zcard("unacked_index") == 0
        assert sorted(m.payload["i"] for m in received) == [0, 1, 2, 3, 4]


def test_other_transports_are_left_as_they_are():
    with Connection("memory://") as conn:
        channel = conn.channel()
        reuse_one_client(channel)
        assert "_create_client" not in vars(channel)
