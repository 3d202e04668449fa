"""Webhook delivery of the fake Loyale: background tasks on the server's own event loop.

An event is serialised when it happens (a snapshot, like Loyale's "resulting data of the operation"),
then each matching subscription gets its own task: POST the JSON with no signature, retry on a non-2xx
answer or a connection error with delays `webhook_retry_base_s * 2**(k-1)`, and after the last failed
retry record a failed job for `GET /api/Webhook/Failed`. The request that caused the event never waits.

Knobs for an unreliable network: `webhook_duplicate_rate` sends a delivery twice; `webhook_loss_rate`
and `webhook_lose_next` (topics) lose an event: no subscription receives it, nothing is retried or listed
as failed, and only the control API knows (`lost`).
"""

from __future__ import annotations

import asyncio
import uuid
from http import HTTPStatus
from typing import Any

import httpx

from fakes.loyale.state import FakeLoyale, Scheme, dumps
from fakes.loyale_data import format_datetime


class WebhookDispatcher:
    MAX_LOG = 100_000

    def __init__(self, fake: FakeLoyale, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`transport`: where deliveries go instead of the network (a test's in-process receiver)."""
        self.fake = fake
        self.transport = transport
        self.client: httpx.AsyncClient | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.deliveries: list[dict[str, Any]] = []
        #: Events lost on purpose (`webhook_loss_rate`, `webhook_lose_next`), oldest first.
        self.lost: list[dict[str, Any]] = []
        fake.emit = self.emit

    async def start(self) -> None:
        if self.client is None:
            self.client = httpx.AsyncClient(headers={"User-Agent": "fake-loyale-webhooks/1"}, transport=self.transport)

    async def stop(self) -> None:
        self.cancel_all()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def reset(self) -> None:
        self.cancel_all()
        self.deliveries.clear()
        self.lost.clear()

    @property
    def pending(self) -> int:
        return sum(1 for task in self.tasks if not task.done())

    def emit(self, scheme: Scheme, topic: int, payload: dict[str, Any], customer_id: str | None,
             data: str) -> None:
        subscriptions = [s for s in scheme.subscriptions if s["topic"] == topic]
        if not subscriptions:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # only reachable when the state is driven outside a server
            return
        body = dumps(payload)
        event_id = str(uuid.uuid4())
        if self._lose(topic):
            self.lost.append({"event_id": event_id, "scheme_id": scheme.id, "topic": topic,
                              "customer_id": customer_id, "data": data, "subscriptions": len(subscriptions),
                              "at": format_datetime(self.fake.now())})
            return
        for sub in subscriptions:
            copies = 2 if self.fake.rng.random() < self.fake.knobs.webhook_duplicate_rate else 1
            for copy in range(copies):
                job = {"event_id": event_id, "scheme": scheme, "subscription": dict(sub), "topic": topic,
                       "body": body, "customer_id": customer_id, "data": data, "duplicate": copy > 0}
                task = loop.create_task(self._deliver(job))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def _lose(self, topic: int) -> bool:
        knobs = self.fake.knobs
        if topic in knobs.webhook_lose_next:
            knobs.webhook_lose_next.remove(topic)
            return True
        return bool(knobs.webhook_loss_rate) and self.fake.rng.random() < knobs.webhook_loss_rate

    async def _deliver(self, job: dict[str, Any]) -> None:
        if self.client is None:
            await self.start()
        assert self.client is not None
        sub = job["subscription"]
        knobs = self.fake.knobs
        attempts = 1 + max(0, knobs.webhook_max_retries)
        reason = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await asyncio.sleep(knobs.webhook_retry_base_s * 2 ** (attempt - 2))
            status: int | None = None
            error: str | None = None
            try:
                response = await self.client.post(
                    sub["url"], content=job["body"], headers={"Content-Type": "application/json"},
                    timeout=knobs.webhook_timeout_s,
                )
                status = response.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            ok = status is not None and 200 <= status < 300
            self._log(job, attempt, status, ok, error)
            if ok:
                return
            reason = error or _reason(status)
        stamp = format_datetime(self.fake.now())
        job["scheme"].failed.append(
            {"id": str(uuid.uuid4()), "topic": job["topic"], "url": sub["url"], "email": sub["email"],
             "data": job["data"], "reason": reason, "createdBy": "System", "updatedBy": "System",
             "createdDate": stamp, "updatedDate": stamp}
        )

    def _log(self, job: dict[str, Any], attempt: int, status: int | None, ok: bool, error: str | None) -> None:
        if len(self.deliveries) >= self.MAX_LOG:
            del self.deliveries[: self.MAX_LOG // 10]
        self.deliveries.append(
            {"event_id": job["event_id"], "scheme_id": job["scheme"].id, "subscription_id": job["subscription"]["id"],
             "topic": job["topic"], "url": job["subscription"]["url"], "attempt": attempt, "status": status,
             "ok": ok, "error": error, "customer_id": job["customer_id"], "duplicate": job["duplicate"],
             "at": format_datetime(self.fake.now())}
        )


def _reason(status: int | None) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}" if status is not None else "no answer"
    except ValueError:
        return str(status)
