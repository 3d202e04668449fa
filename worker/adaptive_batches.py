"""celery-batches, with batches that grow to match the work waiting.

celery-batches flushes its buffer every `flush_interval` whatever it holds. While the pool is busy
syncing the last batch, that makes a queue of small batches behind it, and every batch pays Klaviyo
fixed costs (a bulk import job and its polls, partly filled lookups of 100). Here a timer tick
flushes only when
  - the buffer is full (`flush_every`), or
  - a pool process is free and the buffer stopped growing since the last tick (the backlog has
    arrived: a small backfill, or the producer held back by the queue bound), or
  - a pool process is free and the buffer has waited `max_wait_s` (a steady stream of customers).
So batch size follows the backlog, up to `flush_every`, and a lone customer still waits at most
about two `flush_interval`s.

After a lost broker connection, the flush timer is started again (celery's event loop clears every
timer on a reconnect; celery-batches would keep a dead one and flush only every `flush_every`
arrivals, so a shorter tail waited in the worker until something else arrived).

On kombu's Redis transport, the channel the worker consumes from keeps one redis-py client instead of
building one for every command it sends (`reuse_one_client`): each message received and each ack
built a client, about 70 us of CPU each (redis-py 8 copies its response callbacks into a new
case-insensitive dict), a large share of a backfill worker's work per customer.

A batch's messages are acknowledged together, in one Redis round trip (`worker.acks`).

Also: a batch whose pool process died (SIGKILL, out of memory) has its messages rejected back to the
queue at once instead of staying unacknowledged in this worker until it exits (prefork; on the threads
pool the backfill worker runs, such a death is the whole worker's, and the broker redelivers).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from time import monotonic
from typing import Any, Protocol

from celery.utils.log import get_logger
from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest, apply_batches_task, partition
from kombu.transport.redis import Channel as RedisChannel

from worker.acks import ack_together

logger = get_logger(__name__)


class _Timer(Protocol):
    """A timer entry of celery's event loop (kombu's `Entry`, which has no type information)."""

    def cancel(self) -> None: ...


class AdaptiveBatches(Batches):  # type: ignore[misc]  # celery-batches ships no type information
    abstract = True
    _tref: _Timer | None  # celery-batches' flush timer
    #: The consumer's `call_soon`: runs a callable on the worker's event loop thread.
    _call_soon: Callable[..., Any]
    #: Longest a growing buffer waits for more customers before it is flushed anyway.
    max_wait_s = 30.0

    def __init__(self) -> None:
        super().__init__()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()   # batches end on the pool's threads
        self._last_size = 0
        self._waiting_since: float | None = None

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:  # noqa: N802 - celery's name
        # Built again each time the consumer (re)connects. On a connection loss celery's event loop
        # clears the consumer's timer (`hub.timer.clear()` in celery.worker.loops.asynloop), which drops
        # the flush timer while `_tref` still names it, so celery-batches would never start another.
        handler = super().Strategy(task, app, consumer)
        self._call_soon = consumer.call_soon   # acks run on the event loop's thread, as kombu's do
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        if self._buffer.qsize() or self._pending.qsize():
            self._tref = consumer.timer.call_repeatedly(self.flush_interval, self._do_flush)

        def on_message(message: Any, *args: Any, **kwargs: Any) -> Any:
            reuse_one_client(message.channel)   # the consumer's channel: new after each reconnect
            return handler(message, *args, **kwargs)

        return on_message

    def _busy(self) -> bool:
        slots = getattr(self._pool, "num_processes", None) or getattr(self._pool, "limit", None) or 1
        return self._in_flight >= slots

    def _do_flush(self) -> None:
        size = self._buffer.qsize()
        if size < self.flush_every:
            now = monotonic()
            if size and self._waiting_since is None:
                self._waiting_since = now
            growing, self._last_size = size > self._last_size, size
            if self._busy():
                return
            if growing and now - (self._waiting_since or now) < self.max_wait_s:
                return
        self._last_size, self._waiting_since = 0, None
        super()._do_flush()

    def _count_in_flight(self, change: int) -> None:
        with self._in_flight_lock:
            self._in_flight += change

    def flush(self, requests: Collection[Request]) -> Any:
        acks_early, acks_late = partition(lambda r: bool(r.task.acks_late), requests)
        acks_early, acks_late = list(acks_early), list(acks_late)
        serializable = ([SimpleRequest.from_request(r) for r in requests],)
        self._count_in_flight(+1)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in acks_early:
                req.acknowledge()

        def on_return(result: Any) -> None:
            self._count_in_flight(-1)
            self._call_soon(ack_together, acks_late)   # one Redis round trip (`worker.acks`)

        def on_error(exc: Any) -> None:
            # The pool process died (errors inside the batch are traced and come back through
            # `on_return`): its customers were not all synced, so they go back on the queue.
            self._count_in_flight(-1)
            logger.error("batch of %d customers ended without returning (%r): messages requeued", len(acks_late), exc)
            for req in acks_late:
                req.reject(requeue=True)

        return self._pool.apply_async(apply_batches_task, (self, serializable, 0, None),
                                      accept_callback=on_accepted, callback=on_return, error_callback=on_error)


def reuse_one_client(channel: Any) -> None:
    """Let a kombu Redis channel send its commands through one redis-py client (made again if the
    channel's connection pool changes) instead of a new one per command: `Channel.conn_or_acquire`
    builds one for each message's unacked bookkeeping and each ack. A redis-py client holds no
    connection of its own (it takes one from the pool per command), so one serves every caller, as
    kombu's own cached `Channel.client` does for the asynchronous pool. Other transports, and a
    channel already set up, are left as they are."""
    if not isinstance(channel, RedisChannel) or "_create_client" in vars(channel):
        return
    target: Any = channel   # kombu ships no type information
    build: Callable[..., Any] = target._create_client
    reused: list[Any] = []

    def create_client(asynchronous: bool = False) -> Any:
        if asynchronous:
            return build(asynchronous=True)
        if not reused or reused[0].connection_pool is not target.pool:
            reused[:] = [build()]
        return reused[0]

    target._create_client = create_client
