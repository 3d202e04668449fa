"""The Starlette app of the fake Loyale: the `/api/*` surface and the `/_fake/*` control API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fakes.loyale import activity
from fakes.loyale.sieve import SieveError, page_window
from fakes.loyale.state import (
    DEFAULT_ACTOR,
    ApiError,
    ControlError,
    FakeLoyale,
    FakeLoyaleConfig,
    Scheme,
    SchemeConfig,
    Token,
    dumps,
    normalize_scheme_id,
)
from fakes.loyale.webhooks import WebhookDispatcher
from fakes.loyale_data import format_datetime

AUTH_PATH = "/api/AdminToken"
INT32_MAX = 2_147_483_647


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(content), status_code=status, headers=headers, media_type="application/json")


def envelope(status: int, messages: Sequence[str], headers: dict[str, str] | None = None) -> Response:
    """Loyale's error body: errors, code and the status' reason phrase as errorId."""
    headers = dict(headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    body = {"errors": list(messages), "code": status, "errorId": _phrase(status)}
    return json_response(body, status, headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _scheme_header(headers: Any) -> str | None:
    """X-Scheme (current docs) or Scheme (older docs and the WooCommerce plugin); X-Scheme wins."""
    value = headers.get("x-scheme") or headers.get("scheme")
    return value.strip() if value and value.strip() else None


class ApiGate:
    """Pure ASGI middleware for `/api/*`: latency, scripted and random faults, request counters."""

    def __init__(self, app: ASGIApp, fake: FakeLoyale, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.fake = fake
        self.routes = routes

    def _label(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE and isinstance(route, Route):
                return route.path
        return scope["path"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        fake = self.fake
        label = self._label(scope)
        status = [500]

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if label != AUTH_PATH or fake.knobs.faults_on_auth:
                if fake.knobs.latency_s > 0:
                    await asyncio.sleep(fake.knobs.latency_s)
                fault = fake.injected_fault()
                if fault is not None:
                    extra = {}
                    if fault == 429 and fake.knobs.retry_after_s is not None:
                        extra["Retry-After"] = str(int(round(fake.knobs.retry_after_s)))
                    message = ("Too many requests were sent to the API too quickly" if fault == 429
                               else f"Injected fault ({fault})")
                    await envelope(fault, [message], extra)(scope, receive, send_and_watch)
                    return
            if fake.route_missing(scope["path"]):
                await envelope(404, [f"No route {scope['method']} {scope['path']}."])(scope, receive, send_and_watch)
                return
            await self.app(scope, receive, send_and_watch)
        finally:
            fake.record_request(scope["method"], label, scope["path"], scope.get("query_string", b"").decode(),
                                status[0], _scheme_header(headers))


def _param(request: Request, name: str) -> str | None:
    """Query parameters bind case-insensitively in ASP.NET (`page` works as well as `Page`)."""
    wanted = name.lower()
    for key, value in request.query_params.multi_items():
        if key.lower() == wanted:
            return value
    return None


def _int_param(request: Request, name: str, default: int) -> int:
    raw = _param(request, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"The value '{raw}' is not valid for {name}.") from None
    if not 1 <= value <= INT32_MAX:
        raise ApiError(400, f"The field {name} must be between 1 and {INT32_MAX}.")
    return value


async def _body(request: Request, *, api: bool, default: Any = None) -> Any:
    raw = await request.body()
    if not raw.strip():
        if default is not None:
            return default
        if api:
            raise ApiError(400, "A non-empty request body is required.")
        raise ControlError(400, "a JSON body is required")
    try:
        return json.loads(raw)
    except ValueError as exc:
        if api:
            raise ApiError(400, f"The request body is not valid JSON: {exc}") from None
        raise ControlError(400, f"invalid JSON: {exc}") from None


def _object(value: Any, *, api: bool) -> dict[str, Any]:
    if not isinstance(value, dict):
        if api:
            raise ApiError(400, "The request body must be a JSON object.")
        raise ControlError(400, "the body must be a JSON object")
    return value


class LoyaleApp:
    """Endpoints bound to one FakeLoyale state and its webhook dispatcher."""

    def __init__(self, fake: FakeLoyale, dispatcher: WebhookDispatcher) -> None:
        self.fake = fake
        self.dispatcher = dispatcher

    # ---- /api: auth -------------------------------------------------------------------------------

    def authorize(self, request: Request) -> tuple[Scheme, Token]:
        """401 before scheme checks (ASP.NET authenticates before the controller sees the header)."""
        parts = request.headers.get("authorization", "").split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise ApiError(401, "No valid access token was provided.")
        token = self.fake.valid_token(parts[1].strip())
        if token is None:
            raise ApiError(401, "The access token is invalid, expired or revoked.")
        scheme = self._scheme_from_headers(request)
        if token.scheme_id != scheme.id:
            raise ApiError(403, "The access token does not belong to this scheme.")
        return scheme, token

    def _scheme_from_headers(self, request: Request) -> Scheme:
        raw = _scheme_header(request.headers)
        if raw is None:
            raise ApiError(400, "The X-Scheme header is required.")
        scheme_id = normalize_scheme_id(raw)
        if scheme_id is None:
            raise ApiError(400, f"The X-Scheme header '{raw}' is not a valid GUID.")
        scheme = self.fake.schemes.get(scheme_id)
        if scheme is None:
            raise ApiError(403, "You do not have access to this scheme.")
        return scheme

    async def admin_token(self, request: Request) -> Response:
        scheme = self._scheme_from_headers(request)
        body = _object(await _body(request, api=True), api=True)
        token = self.fake.issue_token(scheme, body.get("email"), body.get("password"))
        if token is None:
            raise ApiError(401, "Invalid email or password.")
        return json_response({"token": token.token, "tokenType": "Bearer",
                              "expiresIn": int(self.fake.knobs.token_ttl_s),
                              "expires": format_datetime(token.expires_at), "email": token.email,
                              "schemeId": token.scheme_id})

    # ---- /api: lists and reads --------------------------------------------------------------------

    def _list(self, request: Request, scheme: Scheme, resource: str) -> Response:
        page = _int_param(request, "Page", 1)
        page_size = _int_param(request, "PageSize", self.fake.knobs.max_page_size)
        try:
            records = self.fake.query(scheme, resource, _param(request, "Filters"), _param(request, "Sorts"))
        except SieveError as exc:
            raise ApiError(400, str(exc)) from None
        window = page_window(len(records), page, page_size, self.fake.knobs.max_page_size,
                             clamp=self.fake.knobs.clamp_page_size)
        served = records[window.start : window.stop]
        response = json_response(served, headers={"X-Total-Count": str(len(records)),
                                                  "X-Total-Pages": str(window.total_pages)})
        if resource == "customers" and self.fake.knobs.paging_drift_per_page:
            self.fake.drift_after_page(scheme, served)   # after the answer is rendered: the next page sees it
        return response

    async def list_customers(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        return self._list(request, scheme, "customers")

    async def get_customer(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        hit = scheme.get(request.path_params["customer_id"])
        if hit is None:
            raise ApiError(404, "Customer not found.")
        return json_response(hit[1])

    async def list_levels(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        return self._list(request, scheme, "levels")

    async def get_level(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        wanted = request.path_params["level_id"].lower()
        for level in scheme.levels:
            if level["id"] == wanted:
                return json_response(level)
        raise ApiError(404, "Level not found.")

    async def list_balances(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        return self._list(request, scheme, "balances")

    async def list_transactions(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        return self._list(request, scheme, "transactions")

    async def list_customer_coupons(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        return self._list(request, scheme, "customer_coupons")

    async def list_coupons(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        return self._list(request, scheme, "coupons")

    def _one_stored(self, request: Request, store: str, what: str) -> Response:
        scheme, _ = self.authorize(request)
        record = getattr(scheme, store).get(request.path_params["record_id"].lower())
        if record is None:
            raise ApiError(404, f"{what} not found.")
        return json_response(record)

    async def get_transaction(self, request: Request) -> Response:
        return self._one_stored(request, "transactions", "Transaction")

    async def get_customer_coupon(self, request: Request) -> Response:
        return self._one_stored(request, "customer_coupons", "Customer coupon")

    async def get_coupon(self, request: Request) -> Response:
        return self._one_stored(request, "coupons", "Coupon")

    # ---- /api: webhooks ---------------------------------------------------------------------------

    async def subscribe(self, request: Request) -> Response:
        scheme, token = self.authorize(request)
        # Loyale's example sends Content-Type: application/json-patch+json; any JSON body is accepted.
        body = _object(await _body(request, api=True), api=True)
        sub = self.fake.subscribe(scheme, body.get("topic"), body.get("url"), body.get("email"), token.email)
        return json_response(sub)

    async def unsubscribe(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        body = _object(await _body(request, api=True), api=True)
        removed = self.fake.unsubscribe(scheme, body.get("topic"), body.get("url"), body.get("email"))
        if not removed:
            raise ApiError(404, "No matching webhook subscription.")
        return json_response({"removed": removed})

    async def list_webhooks(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        return json_response(scheme.subscriptions)

    async def failed_webhooks(self, request: Request) -> Response:
        scheme, _ = self.authorize(request)
        return json_response(scheme.failed)

    async def api_not_found(self, request: Request) -> Response:
        # The catch-all matches every method, so a known path with the wrong method is told apart here.
        for route in self._routes:
            if (isinstance(route, Route) and route.endpoint != self.api_not_found
                    and route.matches(request.scope)[0] == Match.PARTIAL):
                raise ApiError(405, f"{request.method} is not allowed on {request.url.path}.")
        raise ApiError(404, f"No route {request.method} {request.url.path}.")

    # ---- /_fake control ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return json_response({"ok": True})

    async def reset(self, request: Request) -> Response:
        self.dispatcher.reset()
        self.fake.reset()
        return json_response({"ok": True, "schemes": [s.summary() for s in self.fake.schemes.values()]})

    async def schemes(self, request: Request) -> Response:
        return json_response({"schemes": [s.summary() for s in self.fake.schemes.values()]})

    async def create_scheme(self, request: Request) -> Response:
        body = _object(await _body(request, api=False, default={}), api=False)
        defaults = SchemeConfig()
        try:
            cfg = SchemeConfig(
                scheme_id=str(body.get("scheme_id") or defaults.scheme_id),
                admin_email=str(body.get("admin_email") or defaults.admin_email),
                admin_password=str(body.get("admin_password") or defaults.admin_password),
                customers=int(body.get("customers") or 0),
                seed=int(body.get("seed") or 0),
                name=str(body.get("name") or defaults.name),
            )
        except (TypeError, ValueError) as exc:
            raise ControlError(400, f"invalid scheme: {exc}") from None
        if cfg.customers < 0:
            raise ControlError(400, "customers must be >= 0")
        scheme = self.fake.create_scheme(cfg)
        return json_response(scheme.summary())

    def _scheme(self, request: Request) -> Scheme:
        return self.fake.require_scheme(request.path_params["scheme_id"])

    async def add_customers(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False), api=False)
        customers = body.get("customers")
        if not isinstance(customers, list):
            raise ControlError(400, "customers must be a list")
        actor = str(body.get("updated_by") or DEFAULT_ACTOR)
        ids = self.fake.add_customers(scheme, customers, actor, emit=bool(body.get("emit", True)))
        return json_response({"ids": ids})

    async def all_customers(self, request: Request) -> Response:
        scheme = self._scheme(request)
        return json_response({"customers": list(scheme.customers.values())})

    async def one_customer(self, request: Request) -> Response:
        scheme = self._scheme(request)
        return json_response(self.fake.require_customer(scheme, request.path_params["customer_id"])[1])

    async def patch_customer(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False), api=False)
        fields = body.get("fields")
        if not isinstance(fields, dict):
            raise ControlError(400, "fields must be an object")
        actor = str(body.get("updated_by") or DEFAULT_ACTOR)
        return json_response(self.fake.update_customer(scheme, request.path_params["customer_id"], fields, actor))

    async def customer_action(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False, default={}), api=False)
        actor = str(body.get("updated_by") or DEFAULT_ACTOR)
        customer = self.fake.action(scheme, request.path_params["customer_id"], request.path_params["action"],
                                    actor)
        return json_response(customer)

    async def balance(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False), api=False)
        customer = activity.change_balance(
            self.fake, scheme, request.path_params["customer_id"], str(body.get("updated_by") or DEFAULT_ACTOR),
            points=body.get("points"), monetary=body.get("monetary"),
            points_delta=body.get("points_delta"), monetary_delta=body.get("monetary_delta"),
        )
        return json_response(customer)

    async def additional_field(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False), api=False)
        customer = self.fake.set_additional_field(
            scheme, request.path_params["customer_id"], str(body.get("updated_by") or DEFAULT_ACTOR),
            key=body.get("key"), value=body.get("value"), name=body.get("name"), internal=body.get("internal"),
        )
        return json_response(customer)

    async def levels(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False), api=False)
        customer = activity.set_levels(self.fake, scheme, request.path_params["customer_id"], body.get("level_ids"),
                                       str(body.get("updated_by") or DEFAULT_ACTOR))
        return json_response(customer)

    async def transfer(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False), api=False)
        result = activity.transfer(self.fake, scheme, request.path_params["customer_id"], str(body.get("target_id")),
                                   body.get("points"), str(body.get("updated_by") or DEFAULT_ACTOR))
        return json_response(result)

    async def transaction(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False), api=False)
        return json_response(activity.add_transaction(
            self.fake, scheme, request.path_params["customer_id"], str(body.get("updated_by") or DEFAULT_ACTOR),
            points=body.get("points"), monetary=body.get("monetary"), value=body.get("value"),
            currency=body.get("currency"), kind=body.get("kind"), outlet_name=body.get("outlet"),
            external_ref=body.get("external_ref"), description=body.get("description"),
            transaction_date=body.get("transaction_date"), coupons_used=body.get("coupons_used")))

    async def issue_coupon(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False, default={}), api=False)
        return json_response(activity.issue_coupon(
            self.fake, scheme, request.path_params["customer_id"], str(body.get("updated_by") or DEFAULT_ACTOR),
            coupon_id=body.get("coupon_id"), name=body.get("name"), uses=body.get("uses", 1)))

    async def use_coupon(self, request: Request) -> Response:
        scheme = self._scheme(request)
        body = _object(await _body(request, api=False, default={}), api=False)
        return json_response(activity.use_coupon(self.fake, scheme, request.path_params["coupon_id"],
                                                 str(body.get("updated_by") or DEFAULT_ACTOR)))

    async def coupons(self, request: Request) -> Response:
        scheme = self._scheme(request)
        if request.method == "GET":
            return json_response({"coupons": list(scheme.coupons.values())})
        body = _object(await _body(request, api=False), api=False)
        return json_response(activity.define_coupon(
            self.fake, scheme, str(body.get("updated_by") or DEFAULT_ACTOR), name=body.get("name"),
            uses=body.get("uses", 1), description=body.get("description"), valid_from=body.get("valid_from"),
            valid_to=body.get("valid_to"), external_reference=body.get("external_reference")))

    def _activity(self, request: Request, store: str) -> Response:
        """A scheme's transactions or customer coupons in the order they happened, `?customer_id=` narrows."""
        scheme = self._scheme(request)
        wanted = request.query_params.get("customer_id")
        records = [r for r in getattr(scheme, store).values() if wanted is None or r["customerId"] == wanted]
        return json_response({store: records})

    async def all_transactions(self, request: Request) -> Response:
        return self._activity(request, "transactions")

    async def all_customer_coupons(self, request: Request) -> Response:
        return self._activity(request, "customer_coupons")

    async def expire_tokens(self, request: Request) -> Response:
        body = _object(await _body(request, api=False, default={}), api=False)
        token = body.get("token")
        return json_response({"expired": self.fake.expire_tokens(token if isinstance(token, str) else None)})

    async def knobs(self, request: Request) -> Response:
        if request.method == "POST":
            body = _object(await _body(request, api=False), api=False)
            try:
                self.fake.set_knobs(body)
            except ValueError as exc:
                raise ControlError(400, str(exc)) from None
        return json_response(self.fake.knobs.as_dict())

    async def clock(self, request: Request) -> Response:
        if request.method == "POST":
            body = _object(await _body(request, api=False), api=False)
            try:
                if "offset_s" in body:
                    self.fake.clock_offset_s = float(body["offset_s"])
                if "advance_s" in body:
                    self.fake.clock_offset_s += float(body["advance_s"])
            except (TypeError, ValueError):
                raise ControlError(400, "offset_s / advance_s must be numbers") from None
        return json_response({"now": format_datetime(self.fake.now()), "offset_s": self.fake.clock_offset_s})

    async def deliveries(self, request: Request) -> Response:
        return json_response({"deliveries": self.dispatcher.deliveries, "pending": self.dispatcher.pending,
                              "lost": self.dispatcher.lost})

    async def requests(self, request: Request) -> Response:
        fake = self.fake
        if request.method == "DELETE":
            fake.requests_total = 0
            fake.requests_by_route.clear()
            fake.requests_by_status.clear()
            fake.recent_requests.clear()
        return json_response({"total": fake.requests_total, "by_route": dict(fake.requests_by_route),
                              "by_status": dict(fake.requests_by_status),
                              "recent": list(fake.recent_requests)})

    # ---- wiring -----------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        customer = "/_fake/schemes/{scheme_id}/customers/{customer_id}"
        every = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        self._routes: list[BaseRoute] = [
            Route(AUTH_PATH, self.admin_token, methods=["POST"]),
            Route("/api/Customer", self.list_customers, methods=["GET"]),
            Route("/api/Customer/{customer_id}", self.get_customer, methods=["GET"]),
            Route("/api/Level", self.list_levels, methods=["GET"]),
            Route("/api/Level/{level_id}", self.get_level, methods=["GET"]),
            Route("/api/PointBalance", self.list_balances, methods=["GET"]),
            Route("/api/Transaction", self.list_transactions, methods=["GET"]),
            Route("/api/Transaction/{record_id}", self.get_transaction, methods=["GET"]),
            Route("/api/CustomerCoupon", self.list_customer_coupons, methods=["GET"]),
            Route("/api/CustomerCoupon/{record_id}", self.get_customer_coupon, methods=["GET"]),
            Route("/api/Coupon", self.list_coupons, methods=["GET"]),
            Route("/api/Coupon/{record_id}", self.get_coupon, methods=["GET"]),
            Route("/api/Webhook/Subscribe", self.subscribe, methods=["POST"]),
            Route("/api/Webhook/Unsubscribe", self.unsubscribe, methods=["DELETE"]),
            Route("/api/Webhook/Failed", self.failed_webhooks, methods=["GET"]),
            Route("/api/Webhook", self.list_webhooks, methods=["GET"]),
            Route("/api/{rest:path}", self.api_not_found, methods=every),
            Route("/_fake/health", self.health, methods=["GET"]),
            Route("/_fake/reset", self.reset, methods=["POST"]),
            Route("/_fake/schemes", self.schemes, methods=["GET"]),
            Route("/_fake/schemes", self.create_scheme, methods=["POST"]),
            Route("/_fake/schemes/{scheme_id}/customers", self.all_customers, methods=["GET"]),
            Route("/_fake/schemes/{scheme_id}/customers", self.add_customers, methods=["POST"]),
            Route(customer, self.one_customer, methods=["GET"]),
            Route(customer, self.patch_customer, methods=["PATCH"]),
            Route(customer + "/balance", self.balance, methods=["POST"]),
            Route(customer + "/additional-fields", self.additional_field, methods=["POST"]),
            Route(customer + "/levels", self.levels, methods=["POST"]),
            Route(customer + "/transfer", self.transfer, methods=["POST"]),
            Route(customer + "/transactions", self.transaction, methods=["POST"]),
            Route(customer + "/coupons", self.issue_coupon, methods=["POST"]),
            Route("/_fake/schemes/{scheme_id}/coupons", self.coupons, methods=["GET", "POST"]),
            Route("/_fake/schemes/{scheme_id}/customer-coupons", self.all_customer_coupons, methods=["GET"]),
            Route("/_fake/schemes/{scheme_id}/customer-coupons/{coupon_id}/use", self.use_coupon, methods=["POST"]),
            Route("/_fake/schemes/{scheme_id}/transactions", self.all_transactions, methods=["GET"]),
            Route(customer + "/{action}", self.customer_action, methods=["POST"]),
            Route("/_fake/tokens/expire", self.expire_tokens, methods=["POST"]),
            Route("/_fake/knobs", self.knobs, methods=["GET", "POST"]),
            Route("/_fake/clock", self.clock, methods=["GET", "POST"]),
            Route("/_fake/webhooks/deliveries", self.deliveries, methods=["GET"]),
            Route("/_fake/requests", self.requests, methods=["GET", "DELETE"]),
        ]
        return self._routes


def _error_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return envelope(exc.status, exc.messages, exc.headers)

    async def control_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ControlError)
        return json_response({"error": str(exc)}, exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/"):
            return envelope(exc.status_code, [str(exc.detail)])
        return json_response({"error": str(exc.detail)}, exc.status_code)

    async def crash(request: Request, exc: Exception) -> Response:
        return envelope(500, [f"{type(exc).__name__}: {exc}"])

    return {ApiError: api_error, ControlError: control_error, HTTPException: http_error, Exception: crash}


def create_app(config: FakeLoyaleConfig | None = None, webhook_transport: httpx.AsyncBaseTransport | None = None
               ) -> Starlette:
    """A fresh fake Loyale. `config` holds the startup schemes and knobs that `/_fake/reset` restores;
    `webhook_transport` receives webhook deliveries instead of the network (tests in process)."""
    fake = FakeLoyale(config or FakeLoyaleConfig())
    dispatcher = WebhookDispatcher(fake, webhook_transport)
    endpoints = LoyaleApp(fake, dispatcher)
    routes = endpoints.routes()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(ApiGate, fake=fake, routes=routes)],
        exception_handlers=_error_handlers(),
        lifespan=lifespan,
    )
    app.state.fake = fake
    app.state.dispatcher = dispatcher
    return app
