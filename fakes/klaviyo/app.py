"""The ASGI app: a gateway for `/api/*` (faults, bookkeeping, spec checks) and the `/_fake/*` control API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fakes.klaviyo.api import dispatch, match_route, unknown_path
from fakes.klaviyo.config import KIND_REALISM, FakeKlaviyoConfig, KeySpec, realistic_knobs
from fakes.klaviyo.context import NO_JSON, ApiRequest, Reply, error_reply, normalize_path
from fakes.klaviyo.errors import ApiError
from fakes.klaviyo.events import EventSubmission, event_state, job_state
from fakes.klaviyo.filters import parse_datetime
from fakes.klaviyo.jobs import settle
from fakes.klaviyo.profiles import SUPPRESSION_REASONS, full_state, now_utc
from fakes.klaviyo.state import FakeKlaviyo

CLOUDFLARE_403 = b"""<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head>
<body><div class="main-wrapper" role="main"><h1>a.klaviyo.com</h1>
<p>Verifying you are human. This may take a few seconds.</p></div>
<noscript>Enable JavaScript and cookies to continue</noscript></body></html>"""

_SERVER_ERRORS = {500: "error", 502: "bad_gateway", 503: "service_unavailable", 504: "gateway_timeout"}


class _QuietDrops(logging.Filter):
    """Dropped connections are deliberate; uvicorn would log each one as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _maybe_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return NO_JSON


class ApiGateway:
    """Raw ASGI in front of Starlette: handles `/api/*` itself (it must be able to cut a response
    half-way), passes everything else on."""

    def __init__(self, app: ASGIApp, fake: FakeKlaviyo):
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/api" or path.startswith("/api/")):
            await self.app(scope, receive, send)
            return
        await self._handle(scope, await _read_body(receive), send)

    async def _handle(self, scope: Scope, body: bytes, send: Send) -> None:
        fake = self.fake
        received_ts = time.time()
        method = scope["method"]
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host") or "{}:{}".format(*scope.get("server", ("127.0.0.1", 80)))
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        parsed = _maybe_json(body)
        req = ApiRequest(method, path, query, headers, body, f"{scope.get('scheme', 'http')}://{host}",
                         json=parsed)
        route, params, other_method = match_route(method, path)
        endpoint = f"{method} {route.template if route else normalize_path(path)}"

        if fake.validator is not None:
            error = fake.validator.request_error(method, path, query, headers, body,
                                                 headers.get("content-type", ""))
            if error is not None:
                fake.violations.append({"method": method, "path": path, "endpoint": endpoint, "error": error})

        knobs = fake.knobs
        plan = fake.dice.draw(knobs)
        if knobs.latency_s > 0:
            await asyncio.sleep(knobs.latency_s)
        if plan.stall and knobs.stall_s > 0:
            await asyncio.sleep(knobs.stall_s)

        fault: str | None = None
        reply: Reply | None
        if plan.non_json_403:
            fault = "non_json_403"
            reply = Reply(403, CLOUDFLARE_403, [("content-type", "text/html; charset=UTF-8"),
                                                ("cf-mitigated", "challenge"), ("server", "cloudflare")])
        elif plan.error_status is not None:
            fault = "error"
            status = plan.error_status
            reply = error_reply(ApiError.one(status, _SERVER_ERRORS.get(status, "error"),
                                             "Injected server error (fake Klaviyo error_rate)."))
        elif plan.drop and not knobs.drop_after_apply:
            fault, reply = "drop", None
        else:
            if route is None:
                reply = unknown_path(fake, method, normalize_path(path), other_method)
            else:
                reply = dispatch(fake, req, route, params)
            if plan.drop:
                fault = "drop"
        if plan.stall and fault is None:
            fault = "stall"

        status = reply.status if reply is not None else None
        fake.stats.record(endpoint, "dropped" if fault == "drop" else str(status), {
            "ts": time.time(),
            "received_ts": received_ts,
            "retry_after": _header(reply, "retry-after"),
            "method": method,
            "path": path,
            "endpoint": endpoint,
            "query": dict(query),
            "status": status,
            "fault": fault,
            "account_id": reply.account_id if reply is not None else None,
            "body": None if parsed is NO_JSON else parsed,
        })
        if fault == "drop":
            await _send_truncated(send, reply)
        else:
            assert reply is not None
            await _send(send, reply)


async def _send(send: Send, reply: Reply) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in reply.headers]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


async def _send_truncated(send: Send, reply: Reply | None) -> None:
    """Promise a full body, send half, then return: uvicorn closes the connection and the client
    sees a transport error (httpx: RemoteProtocolError) instead of a response."""
    body = reply.body if reply is not None else b'{"data":null}'
    status = reply.status if reply is not None else 200
    headers = [(k.lower().encode(), v.encode()) for k, v in (reply.headers if reply else [])]
    headers.append((b"content-length", str(len(body) + 16).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})


# ---------------------------------------------------------------------------------------------
# /_fake/* control API (no auth; never faulted, counted or rate limited)


def _bad(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json(request: Request) -> Any:
    body = await request.body()
    return json.loads(body) if body else {}


def _keys(raw: Any) -> list[KeySpec]:
    if not isinstance(raw, list):
        raise ValueError("'keys' must be a list of {key, scopes?}")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise ValueError("each key needs a 'key' string")
        scopes = item.get("scopes")
        if scopes is not None and not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
            raise ValueError("'scopes' must be a list of strings or omitted")
        out.append(KeySpec(item["key"], scopes))
    return out


def _header(reply: Reply | None, name: str) -> str | None:
    if reply is None:
        return None
    return next((v for k, v in reply.headers if k.lower() == name), None)


def _ts(value: Any, default: datetime | None) -> datetime | None:
    if value is None:
        return default
    return parse_datetime(str(value))


def control_routes(fake: FakeKlaviyo) -> list[Route]:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({
            "spec_path": str(fake.spec.path),
            "limits_source": fake.spec.source,
            "validate_requests_against_spec": fake.validator is not None,
            "operations": {
                op.key: {"burst": f"{op.burst.count}/{op.burst.period_s:g}s",
                         "steady": f"{op.steady.count}/{op.steady.period_s:g}s", "scopes": list(op.scopes)}
                for op in fake.spec.operations.values()
            },
        })

    async def reset(request: Request) -> JSONResponse:
        fake.reset()
        return JSONResponse({"ok": True})

    async def loop_lag(request: Request) -> JSONResponse:
        """The fake's own lateness since the last read (then reset): on a loaded machine a request waits
        in the event loop before it is counted, later than Klaviyo's front door would count it."""
        lag_s, fake.loop_lag_max_s = fake.loop_lag_max_s, 0.0
        return JSONResponse({"loop_lag_max_s": round(lag_s, 3)})

    async def accounts(request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"accounts": [
                {"account_id": a.id, "keys": [
                    {"key": k.key, "scopes": None if k.scopes is None else sorted(k.scopes), "revoked": k.revoked}
                    for k in fake.keys.values() if k.account_id == a.id]}
                for a in fake.accounts.values()
            ]})
        try:
            body = await _json(request)
            account_id = body.get("account_id")
            if account_id is not None and not (isinstance(account_id, str) and account_id):
                raise ValueError("'account_id' must be a non-empty string")
            account = fake.add_account(account_id, _keys(body.get("keys", [])))
        except ValueError as exc:
            return _bad(str(exc))
        return JSONResponse({"account_id": account.id})

    async def add_key(request: Request) -> JSONResponse:
        try:
            body = await _json(request)
            (spec,) = _keys([{"key": body.get("key"), "scopes": body.get("scopes")}])
            account_id = body.get("account_id") or fake.default_account.id
            owner = fake.keys.get(spec.key)
            if owner is not None and owner.account_id != account_id:
                raise ValueError(f"key belongs to account {owner.account_id}")
            fake.add_key(spec.key, account_id, spec.scopes)
        except KeyError:
            return _bad(f"unknown account {body.get('account_id')!r}", 404)
        except ValueError as exc:
            return _bad(str(exc))
        return JSONResponse({"ok": True, "account_id": account_id})

    async def revoke_key(request: Request) -> JSONResponse:
        body = await _json(request)
        record = fake.keys.get(body.get("key")) if isinstance(body, dict) else None
        if record is None:
            return _bad("unknown key", 404)
        record.revoked = True
        return JSONResponse({"ok": True})

    def _account(account_id: str | None) -> Any:
        if account_id is None:
            return fake.default_account
        return fake.accounts.get(account_id)

    def _settled_account(request: Request) -> Any:
        """The account `?account_id=` names (default: the first), after settling what is due; None if unknown."""
        settle(fake)
        return _account(request.query_params.get("account_id"))

    async def profiles(request: Request) -> JSONResponse:
        settle(fake)
        if request.method == "GET":
            account = _account(request.query_params.get("account_id"))
            if account is None:
                return _bad("unknown account", 404)
            return JSONResponse({"profiles": [full_state(account.store.profiles[i], account.id)
                                              for i in account.store.order]})
        try:
            body = await _json(request)
            account = _account(body.get("account_id"))
            if account is None:
                return _bad("unknown account", 404)
            return JSONResponse({"ids": _seed(account, body.get("profiles"))})
        except ValueError as exc:
            return _bad(str(exc))

    async def one_profile(request: Request) -> JSONResponse:
        settle(fake)
        found = fake.profile_anywhere(request.path_params["id"])
        if found is None:
            return _bad("unknown profile", 404)
        account, p = found
        return JSONResponse(full_state(p, account.id))

    async def requests_summary(request: Request) -> JSONResponse:
        return JSONResponse(fake.stats.summary())

    async def requests_log(request: Request) -> JSONResponse:
        entries = list(fake.stats.log)
        limit = request.query_params.get("limit")
        if limit is not None:
            entries = entries[-int(limit):] if int(limit) > 0 else []
        return JSONResponse({"requests": entries})

    async def knobs(request: Request) -> JSONResponse:
        if request.method == "POST":
            try:
                changes = await _json(request)
                if not isinstance(changes, dict):
                    raise ValueError("body must be an object of knob values")
                fake.set_knobs(changes)
            except ValueError as exc:
                return _bad(str(exc))
        return JSONResponse(fake.knobs.as_dict())

    async def violations(request: Request) -> JSONResponse:
        return JSONResponse({"violations": list(fake.violations)})

    async def clock(request: Request) -> JSONResponse:
        if request.method == "POST":
            try:
                body = await _json(request)
                if not isinstance(body, dict) or not set(body) <= {"freeze", "advance_s"}:
                    raise ValueError("body: {\"freeze\": true|false} and/or {\"advance_s\": seconds}")
                freeze, advance = body.get("freeze"), body.get("advance_s", 0)
                if freeze is not None and not isinstance(freeze, bool):
                    raise ValueError("'freeze' must be a boolean")
                if isinstance(advance, bool) or not isinstance(advance, int | float) or advance < 0:
                    raise ValueError("'advance_s' must be a non-negative number")
                if freeze is True:
                    fake.clock.freeze()
                fake.clock.advance(float(advance))
                if freeze is False:
                    fake.clock.unfreeze()
            except ValueError as exc:
                return _bad(str(exc))
            settle(fake)
        return JSONResponse(fake.clock.as_dict())

    async def realistic(request: Request) -> JSONResponse:
        try:
            body = await _json(request)
            if not isinstance(body, dict) or not set(body) <= {"time_scale"}:
                raise ValueError('body: {"time_scale": s} (1 = Klaviyo\'s real durations, 0 = kind)')
            fake.set_knobs(realistic_knobs(body.get("time_scale", 1.0)))
        except ValueError as exc:
            return _bad(str(exc))
        return JSONResponse(fake.knobs.as_dict())

    async def kind(request: Request) -> JSONResponse:
        fake.set_knobs(dict(KIND_REALISM))
        return JSONResponse(fake.knobs.as_dict())

    async def merges(request: Request) -> JSONResponse:
        settle(fake)
        return JSONResponse({"merges": list(fake.merges)})

    async def bulk_jobs(request: Request) -> JSONResponse:
        account = _settled_account(request)
        if account is None:
            return _bad("unknown account", 404)
        return JSONResponse({"jobs": [
            {"id": job.id, "status": job.status, "rows": job.total_count, "created": job.created_at.timestamp(),
             "completed": job.completed_at.timestamp() if job.completed_at else None}
            for job in account.bulk_jobs.values()]})

    async def events(request: Request) -> JSONResponse:
        params = request.query_params
        account = _settled_account(request)
        if account is None:
            return _bad("unknown account", 404)
        log = account.events
        wanted_metric, wanted_profile = params.get("metric"), params.get("profile_id")
        recorded = [e for e in log.events.values()
                    if (wanted_metric is None or log.metrics[e.metric_id].name == wanted_metric)
                    and (wanted_profile is None or e.profile_id == wanted_profile)]
        # In time order, then in the order processed (ids increase): a profile's timeline.
        recorded.sort(key=lambda e: (e.time, e.id))
        pending = sum(len(job.inputs) for owner, job in fake.pending.values()
                      if owner is account and isinstance(job, EventSubmission))
        return JSONResponse({"events": [event_state(e, log, account.id) for e in recorded],
                             "dropped": list(log.dropped), "pending": pending})

    async def metrics(request: Request) -> JSONResponse:
        account = _settled_account(request)
        if account is None:
            return _bad("unknown account", 404)
        return JSONResponse({"metrics": [
            {"id": m.id, "name": m.name, "service": m.service, "created": m.created.isoformat()}
            for m in account.events.metrics.values()]})

    async def event_jobs(request: Request) -> JSONResponse:
        account = _settled_account(request)
        if account is None:
            return _bad("unknown account", 404)
        return JSONResponse({"jobs": [job_state(job) for job in account.events.jobs.values()]})

    async def event_profiles(request: Request) -> JSONResponse:
        account = _settled_account(request)
        if account is None:
            return _bad("unknown account", 404)
        return JSONResponse({"profiles": list(account.events.profiles_created)})

    return [
        Route("/_fake/health", health),
        Route("/_fake/info", info),
        Route("/_fake/reset", reset, methods=["POST"]),
        Route("/_fake/loop-lag", loop_lag),
        Route("/_fake/accounts", accounts, methods=["GET", "POST"]),
        Route("/_fake/keys", add_key, methods=["POST"]),
        Route("/_fake/keys/revoke", revoke_key, methods=["POST"]),
        Route("/_fake/profiles", profiles, methods=["GET", "POST"]),
        Route("/_fake/profiles/{id}", one_profile),
        Route("/_fake/requests", requests_summary),
        Route("/_fake/requests/log", requests_log),
        Route("/_fake/knobs", knobs, methods=["GET", "POST"]),
        Route("/_fake/spec-violations", violations),
        Route("/_fake/clock", clock, methods=["GET", "POST"]),
        Route("/_fake/realistic", realistic, methods=["POST"]),
        Route("/_fake/kind", kind, methods=["POST"]),
        Route("/_fake/merges", merges),
        Route("/_fake/bulk-jobs", bulk_jobs),
        Route("/_fake/events", events),
        Route("/_fake/metrics", metrics),
        Route("/_fake/event-jobs", event_jobs),
        Route("/_fake/event-profiles", event_profiles),
    ]


_SEED_FIELDS = {"email", "phone_number", "external_id", "first_name", "last_name", "organization", "locale",
                "title", "image", "location", "properties", "suppression", "consent", "consent_timestamp",
                "created", "updated", "last_event_date"}


def _seed(account: Any, rows: Any) -> list[str]:
    """Seed profiles as-is (no format checks), but identifiers stay unique. All or nothing."""
    if not isinstance(rows, list):
        raise ValueError("'profiles' must be a list")
    store = account.store
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"profiles[{i}] must be an object")
        unknown = set(row) - _SEED_FIELDS
        if unknown:
            raise ValueError(f"profiles[{i}] has unknown fields {sorted(unknown)}")
        for name in ("email", "phone_number", "external_id"):
            value = row.get(name)
            if isinstance(value, str) and value:
                key = (name, store.key(name, value))
                owner = store.owner(name, value)
                if owner is not None or key in seen:
                    raise ValueError(f"profiles[{i}]: {name} {value!r} already belongs to another profile")
                seen[key] = i
        for s in row.get("suppression") or []:
            if not isinstance(s, dict) or s.get("reason") not in SUPPRESSION_REASONS:
                raise ValueError(f"profiles[{i}]: suppression reasons are {SUPPRESSION_REASONS}")
    ids = []
    for row in rows:
        now = now_utc()
        created = _ts(row.get("created"), now)
        attrs = {k: v for k, v in row.items() if k in ("email", "phone_number", "external_id", "first_name",
                                                       "last_name", "organization", "locale", "title", "image",
                                                       "location", "properties")}
        p = store.create(attrs, at=created)
        p.updated = _ts(row.get("updated"), created) or now
        p.last_event_date = _ts(row.get("last_event_date"), None)
        p.consent = row.get("consent") or "NEVER_SUBSCRIBED"
        p.consent_timestamp = _ts(row.get("consent_timestamp"), now if row.get("consent") else None)
        p.suppressions = [{"reason": s["reason"], "timestamp": _ts(s.get("timestamp"), now)}
                          for s in row.get("suppression") or []]
        ids.append(p.id)
    return ids


LAG_PROBE_S = 0.05


@contextlib.asynccontextmanager
async def _watch_loop_lag(app: Starlette, fake: FakeKlaviyo) -> AsyncIterator[None]:
    """Measure how late the event loop wakes up (`/_fake/loop-lag`)."""

    async def probe() -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(LAG_PROBE_S)
            fake.loop_lag_max_s = max(fake.loop_lag_max_s, time.monotonic() - started - LAG_PROBE_S)

    task = asyncio.create_task(probe())
    try:
        yield
    finally:
        task.cancel()


def create_app(config: FakeKlaviyoConfig | None = None) -> Starlette:
    """The fake Klaviyo as a Starlette app; `app.state.fake` is its state (for in-process use)."""
    fake = FakeKlaviyo(config or FakeKlaviyoConfig())
    _install_log_filter()
    app = Starlette(routes=control_routes(fake), middleware=[Middleware(ApiGateway, fake=fake)],
                    lifespan=partial(_watch_loop_lag, fake=fake))
    app.state.fake = fake
    return app
