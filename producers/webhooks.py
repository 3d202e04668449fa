"""Webhook intake: Loyale posts an event, we enqueue a re-read of the customer it names. ASGI.

    POST /webhooks/loyale/{token}     the token identifies the tenant (Loyale does not sign webhooks,
                                      so a long secret in the URL is the authentication)
    GET  /health

A post is only a hint: the customer is read again from Loyale before syncing (a forged or replayed
post cannot put profile data into Klaviyo), the answer is 202 as soon as the hint is on the queue, and
redeliveries are harmless (the sync is idempotent; the stale guard keeps order).

Loyalty events: a post of topic 2 (a transaction), 6 and 7 (a customer coupon linked, used), 10 (a
points transfer), 0 and 3 (joined, left) is also the fact of an event (`worker.events`), which the hint
carries to the customer's sync: the event is sent after the profile sync, for a customer with consent
only (`worker.event_sync`), once (its unique id is Loyale's id of the fact, so a redelivery is a
duplicate). The topic is the `topic` query parameter `subscribe-webhooks` puts in each URL, else read
from the payload's shape. Events caused by our
own Loyale admin login are synced like any other: this service never writes to Loyale, so they are
staff edits made with the same login. A tenant may opt in to dropping them
(`ignore_own_admin_webhooks = true`, compared with `loyale_own_admin_email`), e.g. when another tool of
theirs writes to Loyale with that user and its changes must not be synced.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from worker import events as ev
from worker.settings import TenantConfig

log = structlog.get_logger("webhooks")

MAX_BODY_BYTES = 1_000_000
#: `enqueue(tenant id, customer id, events)`: a hint, with the loyalty events (JSON) it carries.
Enqueue = Callable[[str, str, list[dict[str, Any]]], None]
TOPIC_JOIN, TOPIC_TRANSACTION, TOPIC_LEAVE, TOPIC_COUPON_LINK, TOPIC_COUPON_USE, TOPIC_TRANSFER = 0, 2, 3, 6, 7, 10


def customer_ids(payload: Any) -> list[str]:
    """The customers a Loyale webhook payload is about, whatever its topic.

    Customer topics send the customer (`id`); transactions and additional fields carry `customerId`;
    a points transfer sends both customers as `sourceCustomerId` / `targetCustomerId`.
    """
    if not isinstance(payload, dict):
        return []
    found: list[str] = []
    for key in ("sourceCustomerId", "targetCustomerId"):
        side = payload.get(key)
        if isinstance(side, dict) and side.get("id"):
            found.append(str(side["id"]))
        elif isinstance(side, str) and side:
            found.append(side)
    if not found:
        if payload.get("customerId"):
            found.append(str(payload["customerId"]))
        elif payload.get("id") and ("email" in payload or "marketingSub" in payload or "firstName" in payload):
            found.append(str(payload["id"]))
    return list(dict.fromkeys(found))


def topic_of(payload: Any, given: str | None) -> int | None:
    """The post's topic: the `topic` query parameter, else what the payload's shape says (a coupon's
    use can only be told from its link by `isUsed`; a join or leave only by the parameter)."""
    if given is not None and given.strip().isdigit():
        return int(given)
    if not isinstance(payload, dict):
        return None
    if "sourceCustomerId" in payload or "targetCustomerId" in payload:
        return TOPIC_TRANSFER
    if "pointValue" in payload or "transactionType" in payload:
        return TOPIC_TRANSACTION
    if "couponId" in payload or "usesLeft" in payload or isinstance(payload.get("coupon"), dict):
        return TOPIC_COUPON_USE if payload.get("isUsed") is True else TOPIC_COUPON_LINK
    return None


def events_of(payload: Any, topic: int | None, scheme_id: str) -> list[ev.LoyaltyEvent]:
    """The loyalty events a post is the fact of (none for other topics, or a payload that makes none)."""
    if not isinstance(payload, dict):
        return []
    derived: list[ev.Derived]
    if topic == TOPIC_TRANSACTION:
        derived = [ev.from_transaction(payload)]
    elif topic == TOPIC_COUPON_LINK:
        derived = [ev.coupon_issued(payload)]
    elif topic == TOPIC_COUPON_USE:
        derived = [ev.coupon_used(payload)]
    elif topic == TOPIC_TRANSFER:
        derived = ev.from_transfer(payload)
    elif topic in (TOPIC_JOIN, TOPIC_LEAVE):
        derived = [ev.membership(payload, joined=topic == TOPIC_JOIN, scheme_id=scheme_id)]
    else:
        return []
    made = [d for d in derived if isinstance(d, ev.LoyaltyEvent)]
    for skipped in (d for d in derived if isinstance(d, ev.NoEvent)):
        log.info("webhook_no_event", topic=topic, reason=skipped.reason)
    return made


def caused_by(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    return str(payload.get("updatedBy") or payload.get("createdBy") or "").strip().lower()


def create_app(tenants: dict[str, TenantConfig], enqueue: Enqueue) -> Starlette:
    """`enqueue(tenant_id, customer_id, events)` puts a hint on the incremental queue (passed in for tests)."""
    tokens = {t.webhook_token.get_secret_value(): t for t in tenants.values() if t.webhook_token}

    def tenant_for(token: str) -> TenantConfig | None:
        for known, tenant in tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return tenant
        return None

    async def receive(request: Request) -> JSONResponse:
        tenant = tenant_for(request.path_params["token"])
        if tenant is None:
            return JSONResponse({"error": "unknown webhook URL"}, status_code=404)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "payload too large"}, status_code=413)
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            # Loyale retries non-2xx posts for hours; a body we can never read would only come back
            log.warning("webhook_unreadable", tenant=tenant.id, bytes=len(body))
            return JSONResponse({"accepted": 0, "ignored": "body is not JSON"}, status_code=202)
        if tenant.ignore_own_admin_webhooks and caused_by(payload) == tenant.own_admin_email:
            return JSONResponse({"accepted": 0, "ignored": "change made by this service's admin user"},
                                status_code=202)
        ids = customer_ids(payload)
        topic = topic_of(payload, request.query_params.get("topic"))
        found = events_of(payload, topic, tenant.loyale_scheme_id) if tenant.events else []
        for customer_id in ids:
            carried = [e.to_json() for e in found if e.customer_id == customer_id]
            await run_in_threadpool(enqueue, tenant.id, customer_id, carried)
        log.info("webhook_received", tenant=tenant.id, customers=len(ids), topic=topic, events=len(found))
        return JSONResponse({"accepted": len(ids)}, status_code=202)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "tenants": len(tokens)})

    return Starlette(routes=[
        Route("/webhooks/loyale/{token}", receive, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ])
