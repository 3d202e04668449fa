"""In-memory state of the fake Loyale: schemes, customers, tokens, subscriptions, clock and knobs.

No HTTP here: the Starlette app in `fakes.loyale.app` translates requests into these calls, and every
call runs on the server's event loop, so no locking is needed. Webhook events are handed to `emit`,
which the app wires to the asynchronous dispatcher.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import secrets
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fakes.loyale.sieve import (
    CompiledFilters,
    FieldSet,
    FieldType,
    SieveError,
    compile_filters,
    parse_filters,
    parse_sorts,
    sort_records,
)
from fakes.loyale_data import format_datetime, generate_customers, generate_levels, parse_datetime

DEFAULT_ACTOR = "fake-admin@loyale.test"
#: `updatedBy` of the customers that knob `paging_drift_per_page` moves.
PAGING_DRIFT_ACTOR = "staff-edit@loyale.test"
DEFAULT_ADMIN_EMAIL = "admin@loyale.test"

# Webhook topics (reference §3 B); 6 and 10 have two names in Loyale's docs.
TOPIC_JOIN, TOPIC_UPDATE, TOPIC_TRANSACTION, TOPIC_LEAVE = 0, 1, 2, 3
TOPIC_FIELD_CREATE, TOPIC_FIELD_UPDATE = 4, 5
TOPIC_COUPON_LINK, TOPIC_COUPON_USE = 6, 7
TOPIC_ACTIVATE, TOPIC_SUSPEND, TOPIC_TRANSFER, TOPIC_DELETE = 8, 9, 10, 11
ACTIONS = {"delete": TOPIC_DELETE, "suspend": TOPIC_SUSPEND, "activate": TOPIC_ACTIVATE,
           "leave": TOPIC_LEAVE, "join": TOPIC_JOIN}

# Which properties Sieve may filter/sort on. Loyale's own lists are UNCONFIRMED; we allow the scalar
# fields of each view.
CUSTOMER_FIELDS = FieldSet(
    {
        "id": "guid", "email": "string", "firstName": "string", "lastName": "string", "name": "string",
        "dob": "datetime", "gender": "number", "areaCode": "string", "mobileNumber": "string",
        "addressLine1": "string", "addressLine2": "string", "town": "string", "state": "string",
        "postCode": "string", "country": "string", "marketingSub": "bool", "barCode": "string",
        "createdBy": "string", "updatedBy": "string", "createdDate": "datetime", "updatedDate": "datetime",
        "lastConnectedDate": "datetime", "lastTransactionDate": "datetime", "profileImageUrl": "string",
        "onHold": "bool", "deleted": "bool", "emailVerified": "bool", "mobileNumberVerified": "bool",
        "signUpPlatform": "string", "externalRefId": "string",
    }
)
LEVEL_FIELDS = FieldSet(
    {"id": "guid", "name": "string", "schemeId": "guid", "pointsThreshold": "number", "hidden": "bool",
     "createdDate": "datetime", "updatedDate": "datetime"}
)
BALANCE_FIELDS = FieldSet(
    {"customerId": "guid", "schemeId": "guid", "pointsValue": "number", "monetaryValue": "number"}
)
_STAMPS: dict[str, FieldType] = {"createdDate": "datetime", "updatedDate": "datetime", "createdBy": "string",
                                 "updatedBy": "string"}
TRANSACTION_FIELDS = FieldSet(
    {"id": "guid", "customerId": "guid", "schemeId": "guid", "transactionType": "number", "pointValue": "number",
     "allocatedPointValue": "number", "cachedResultantPointValue": "number", "monetaryValue": "number",
     "value": "string", "saleCurrency": "string", "outletId": "guid", "posId": "string", "posType": "string",
     "externalRefId": "string", "description": "string", "deleted": "bool", "hidden": "bool",
     "isSendPointsAction": "bool", "transactionDate": "datetime", "levelId": "guid", "groupId": "string", **_STAMPS}
)
CUSTOMER_COUPON_FIELDS = FieldSet(
    {"id": "guid", "customerId": "guid", "couponId": "guid", "usesLeft": "number", "isUsed": "bool",
     "isValid": "bool", "favorite": "bool", "barCode": "string", "rewardId": "string", "from": "datetime",
     "to": "datetime", **_STAMPS}
)
COUPON_FIELDS = FieldSet(
    {"id": "guid", "schemeId": "guid", "name": "string", "description": "string", "valid": "bool",
     "initialNumberOfUses": "number", "from": "datetime", "to": "datetime", "until": "datetime",
     "externalReference": "string", "platform": "string", **_STAMPS}
)
FIELDSETS = {"customers": CUSTOMER_FIELDS, "levels": LEVEL_FIELDS, "balances": BALANCE_FIELDS,
             "transactions": TRANSACTION_FIELDS, "customer_coupons": CUSTOMER_COUPON_FIELDS, "coupons": COUPON_FIELDS}
#: Resources listed from a scheme's store of that name, in the order they were made.
STORED = {"transactions": "transactions", "customer_coupons": "customer_coupons", "coupons": "coupons"}


class ApiError(Exception):
    """An error answered with Loyale's envelope `{"errors": [...], "code": n, "errorId": ...}`."""

    def __init__(self, status: int, *messages: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status}: {'; '.join(messages)}")
        self.status = status
        self.messages = list(messages) or ["Error"]
        self.headers = dict(headers or {})


class ControlError(Exception):
    """An error of the `/_fake/*` control API, answered as `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Knobs:
    """Behaviour switches; all can be changed at runtime with `POST /_fake/knobs`."""

    latency_s: float = 0.0  # added before every faultable /api/* answer
    error_rate: float = 0.0  # share of faultable /api/* requests answered 500
    throttle_rate: float = 0.0  # share answered 429
    fail_next: list[int] = field(default_factory=list)  # statuses for the next N faultable requests
    retry_after_s: float | None = None  # Retry-After on injected 429s (Loyale documents none)
    faults_on_auth: bool = False  # whether latency/faults also hit POST /api/AdminToken
    ignore_unknown_filters: bool = True  # Sieve default; False -> 400 on unknown names / bad values
    clamp_page_size: bool = False  # False: Sieve skips (Page-1)*requested PageSize even above the cap
    max_page_size: int = 100
    token_ttl_s: float = 3600.0  # measured on the fake clock
    seed: int = 0  # seeds the fault and duplicate-delivery RNG
    balance_bumps_updated_date: bool = True  # whether a balance change (transaction) bumps updatedDate
    allow_http_webhooks: bool = True  # real Loyale requires https subscription URLs
    webhook_retry_base_s: float = 1.0  # retry k waits base * 2**(k-1)
    webhook_max_retries: int = 10  # after the first attempt
    webhook_duplicate_rate: float = 0.0  # share of deliveries sent twice
    #: Share of events whose webhook is lost: never delivered, retried or listed as failed (the network
    #: ate it); `GET /_fake/webhooks/deliveries` lists them under "lost".
    webhook_loss_rate: float = 0.0
    #: Topics whose next event is lost, one entry per event, e.g. [2] loses the next transaction's webhook.
    webhook_lose_next: list[int] = field(default_factory=list)
    #: After a transaction the customer holds the highest level whose pointsThreshold the balance reaches
    #: (topic 1 when that changes). Off: levels change only through /_fake/.../levels.
    levels_follow_points: bool = False
    webhook_timeout_s: float = 5.0
    #: Routes answered 404 "No route" as if this Loyale did not have them, e.g. ["/api/Level"] (a path
    #: covers everything under it). Loyale's docs name a level route but do not spell it out.
    missing_routes: list[str] = field(default_factory=list)
    #: Records moving under a reader who pages by number: after each page of GET /api/Customer that
    #: holds customers, this many of them (the first not moved yet) are updated as a staff edit would
    #: (updatedDate bumped to now, updatedBy PAGING_DRIFT_ACTOR, no webhook), so they sort to the end.
    paging_drift_per_page: int = 0
    #: How many customers paging drift moves in all (each at most once) until the next /_fake/reset.
    paging_drift_max: int = 0

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update, validating names and types; raises ValueError."""
        hints = {f.name: f for f in dataclasses.fields(self)}
        staged: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in hints:
                raise ValueError(f"unknown knob {name!r}; known: {sorted(hints)}")
            staged[name] = _coerce_knob(name, getattr(self, name), value)
        for name, value in staged.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce_knob(name: str, current: Any, value: Any) -> Any:
    if name == "missing_routes":
        if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("/api/") for v in value):
            raise ValueError("missing_routes must be a list of paths starting with /api/")
        return [v.rstrip("/") for v in value]
    if name == "webhook_lose_next":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 14
                                                  for v in value):
            raise ValueError("webhook_lose_next must be a list of webhook topics (0-14)")
        return list(value)
    if name == "fail_next":
        if not isinstance(value, list) or not all(isinstance(v, int) and 100 <= v <= 599 for v in value):
            raise ValueError("fail_next must be a list of HTTP statuses")
        return list(value)
    if name == "retry_after_s":
        return None if value is None else float(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if name.endswith("_rate") and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1")
    return float(value)


@dataclass
class SchemeConfig:
    """A scheme (tenant) that exists at startup and again after every reset."""

    scheme_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    admin_email: str = DEFAULT_ADMIN_EMAIL
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    customers: int = 0
    seed: int = 0
    name: str = "Fake Scheme"


@dataclass
class FakeLoyaleConfig:
    schemes: list[SchemeConfig] = field(default_factory=lambda: [SchemeConfig()])
    knobs: Knobs = field(default_factory=Knobs)


@dataclass
class Token:
    token: str
    scheme_id: str
    email: str
    expires_at: datetime


def normalize_scheme_id(value: str) -> str | None:
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        return None


class Scheme:
    """One tenant: its customers (insertion-ordered), levels, subscriptions and query cache."""

    CACHE_SIZE = 32

    def __init__(self, scheme_id: str, name: str, admin_email: str, admin_password: str,
                 levels: list[dict[str, Any]], created: str) -> None:
        self.id = scheme_id
        self.name = name
        self.admin_email = admin_email
        self.admin_password = admin_password
        self.levels = levels
        self.created = created
        self.customers: dict[str, dict[str, Any]] = {}
        self.seq: dict[str, int] = {}
        self.order: list[str] = []
        self.left: set[str] = set()
        self.subscriptions: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        #: Loyalty activity by id, in the order it happened (fakes.loyale.activity).
        self.transactions: dict[str, dict[str, Any]] = {}
        self.customer_coupons: dict[str, dict[str, Any]] = {}
        self.coupons: dict[str, dict[str, Any]] = {}
        self.outlets: dict[str, dict[str, Any]] = {}
        self._visible: list[dict[str, Any]] | None = None
        self._cache: OrderedDict[tuple[str, ...], list[dict[str, Any]]] = OrderedDict()

    def add(self, customer: dict[str, Any]) -> str:
        key = str(customer["id"])
        self.seq[key] = len(self.order)
        self.order.append(key)
        self.customers[key] = customer
        return key

    def get(self, customer_id: str) -> tuple[str, dict[str, Any]] | None:
        for key in (customer_id, customer_id.lower()):
            if key in self.customers:
                return key, self.customers[key]
        return None

    def listed(self, key: str, customer: Mapping[str, Any], include_deleted: bool) -> bool:
        return key not in self.left and (include_deleted or customer.get("deleted") is not True)

    def visible(self) -> list[dict[str, Any]]:
        """The unfiltered, unsorted listing, kept as a list so page N is a slice."""
        if self._visible is None:
            self._visible = [c for k, c in self.customers.items() if self.listed(k, c, False)]
        return self._visible

    def changed(self, membership: bool = False) -> None:
        """Drop cached query results after a mutation (and the plain listing if who is listed moved)."""
        self._cache.clear()
        if membership:
            self._visible = None

    def cache_get(self, key: tuple[str, ...]) -> list[dict[str, Any]] | None:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def cache_put(self, key: tuple[str, ...], records: list[dict[str, Any]]) -> None:
        self._cache[key] = records
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)

    def scheme_view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "currency": "EUR", "pointRedemptionPerCurrency": 100,
                "inLoyale": True, "hidden": False, "rounding": 0, "billingStatus": 1, "franchises": [],
                "createdDate": self.created, "updatedDate": self.created}

    def summary(self) -> dict[str, Any]:
        return {"scheme_id": self.id, "name": self.name, "admin_email": self.admin_email,
                "admin_password": self.admin_password, "customers": len(self.customers),
                "levels": [{"id": lv["id"], "name": lv["name"]} for lv in self.levels]}


EmitFn = Callable[["Scheme", int, dict[str, Any], "str | None", str], None]


class FakeLoyale:
    """The whole fake: every scheme, token, knob and counter; `reset()` returns to the config."""

    def __init__(self, config: FakeLoyaleConfig) -> None:
        self.config = config
        self.emit: EmitFn = lambda scheme, topic, payload, customer_id, data: None
        self.reset()

    # ---- lifecycle, clock, knobs --------------------------------------------------------------------

    def reset(self) -> None:
        gc.unfreeze()  # let the previous schemes be collected
        self.knobs = Knobs(**dataclasses.asdict(self.config.knobs))
        self.rng = random.Random(self.knobs.seed)
        self.clock_offset_s = 0.0
        self.tokens: dict[str, Token] = {}
        self.schemes: dict[str, Scheme] = {}
        self.requests_total = 0
        self.requests_by_route: Counter[str] = Counter()
        self.requests_by_status: Counter[str] = Counter()
        self.recent_requests: deque[dict[str, Any]] = deque(maxlen=500)
        self.drifted: list[str] = []   # customers moved by paging drift, in order
        for scheme_config in self.config.schemes:
            self.create_scheme(scheme_config)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    def set_knobs(self, changes: Mapping[str, Any]) -> None:
        self.knobs.update(changes)
        if "seed" in changes:
            self.rng = random.Random(self.knobs.seed)
        if "ignore_unknown_filters" in changes:
            for scheme in self.schemes.values():
                scheme.changed()

    def route_missing(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.knobs.missing_routes)

    def drift_after_page(self, scheme: Scheme, served: list[dict[str, Any]]) -> None:
        """Knob paging_drift_*: move some customers of the page just served to the end of the sort."""
        budget = min(self.knobs.paging_drift_per_page, self.knobs.paging_drift_max - len(self.drifted))
        moved = set(self.drifted)
        for customer in served:
            if budget <= 0:
                return
            key = str(customer.get("id"))
            if key in moved:
                continue
            self.touch(scheme, customer, PAGING_DRIFT_ACTOR)
            self.drifted.append(key)
            budget -= 1

    def record_request(self, method: str, label: str, path: str, query: str, status: int,
                       scheme_id: str | None) -> None:
        self.requests_total += 1
        self.requests_by_route[f"{method} {label}"] += 1
        self.requests_by_status[str(status)] += 1
        self.recent_requests.append({"method": method, "route": label, "path": path, "query": query,
                                     "status": status, "scheme_id": scheme_id})

    def injected_fault(self) -> int | None:
        """The status a faultable request must fail with, if any (fail_next first, then the rates)."""
        if self.knobs.fail_next:
            return self.knobs.fail_next.pop(0)
        if self.knobs.throttle_rate and self.rng.random() < self.knobs.throttle_rate:
            return 429
        if self.knobs.error_rate and self.rng.random() < self.knobs.error_rate:
            return 500
        return None

    # ---- schemes and tokens -------------------------------------------------------------------------

    def scheme(self, scheme_id: str) -> Scheme | None:
        normalized = normalize_scheme_id(scheme_id)
        return self.schemes.get(normalized) if normalized else None

    def require_scheme(self, scheme_id: str) -> Scheme:
        scheme = self.scheme(scheme_id)
        if scheme is None:
            raise ControlError(404, f"unknown scheme {scheme_id!r}")
        return scheme

    def create_scheme(self, cfg: SchemeConfig) -> Scheme:
        scheme_id = normalize_scheme_id(cfg.scheme_id)
        if scheme_id is None:
            raise ControlError(400, f"scheme_id {cfg.scheme_id!r} is not a GUID")
        if scheme_id in self.schemes:
            raise ControlError(409, f"scheme {scheme_id} already exists")
        levels = generate_levels(cfg.seed, scheme_id)
        scheme = Scheme(scheme_id, cfg.name, cfg.admin_email, cfg.admin_password, levels,
                        format_datetime(self.now()))
        for customer in generate_customers(cfg.seed, cfg.customers, levels, scheme_id=scheme_id,
                                           scheme_name=cfg.name):
            scheme.add(customer)
        self.schemes[scheme_id] = scheme
        # Seeded customers live until the next reset: keep the cyclic GC from rescanning them on every
        # collection (with 100k customers that would dominate the cost of serving a page).
        gc.freeze()
        return scheme

    def issue_token(self, scheme: Scheme, email: Any, password: Any) -> Token | None:
        if not isinstance(email, str) or not isinstance(password, str):
            return None
        if email.strip().lower() != scheme.admin_email.lower() or password != scheme.admin_password:
            return None
        token = Token(secrets.token_urlsafe(32), scheme.id, scheme.admin_email,
                      self.now() + timedelta(seconds=self.knobs.token_ttl_s))
        self.tokens[token.token] = token
        return token

    def valid_token(self, token: str) -> Token | None:
        found = self.tokens.get(token)
        if found is None or self.now() >= found.expires_at:
            return None
        return found

    def expire_tokens(self, token: str | None = None) -> int:
        if token is None:
            count = len(self.tokens)
            self.tokens.clear()
            return count
        return 1 if self.tokens.pop(token, None) else 0

    # ---- queries ------------------------------------------------------------------------------------

    def query(self, scheme: Scheme, resource: str, filters: str | None, sorts: str | None
              ) -> list[dict[str, Any]]:
        """Every matching record in order (cached per (Filters, Sorts) until the next mutation).
        Raises SieveError only when `ignore_unknown_filters` is off."""
        filters = (filters or "").strip()
        sorts = (sorts or "").strip()
        if resource == "customers" and not filters and not sorts:
            return scheme.visible()
        strict = not self.knobs.ignore_unknown_filters
        key = (resource, filters, sorts, str(strict))
        cached = scheme.cache_get(key)
        if cached is not None:
            return cached
        fields = FIELDSETS[resource]
        try:
            compiled = compile_filters(parse_filters(filters), fields, strict=strict)
        except SieveError:
            if strict:
                raise
            # Sieve with ThrowExceptions=false: an error while building the filter drops all filtering.
            compiled = CompiledFilters(None, frozenset(), {})
        records = self._candidates(scheme, resource, compiled)
        if compiled.predicate is not None:
            records = [r for r in records if compiled.predicate(r)]
        records = sort_records(records, parse_sorts(sorts), fields, strict=strict)
        scheme.cache_put(key, records)
        return records

    def _candidates(self, scheme: Scheme, resource: str, compiled: CompiledFilters) -> list[dict[str, Any]]:
        if resource == "levels":
            return list(scheme.levels)
        if resource in STORED:
            records: dict[str, dict[str, Any]] = getattr(scheme, STORED[resource])
            return list(records.values())
        index_field = "id" if resource == "customers" else "customerId"
        if index_field in compiled.equality:
            # An `id==a|b` (or customerId==) lookup: go straight to those customers, no scan.
            found = {}
            for value in compiled.equality[index_field]:
                hit = scheme.get(value)
                if hit is not None:
                    found[hit[0]] = hit[1]
            pairs = sorted(found.items(), key=lambda kv: scheme.seq[kv[0]])
        else:
            pairs = list(scheme.customers.items())
        if resource == "customers":
            include_deleted = "deleted" in compiled.fields_used
            return [c for k, c in pairs if scheme.listed(k, c, include_deleted)]
        rows = []
        for _, customer in pairs:
            balance = customer.get("balance")
            if isinstance(balance, dict):
                rows.append({"customerId": str(customer.get("id")), "schemeId": scheme.id,
                             "pointsValue": balance.get("pointsValue"),
                             "monetaryValue": balance.get("monetaryValue")})
        return rows

    def require_customer(self, scheme: Scheme, customer_id: str) -> tuple[str, dict[str, Any]]:
        hit = scheme.get(customer_id)
        if hit is None:
            raise ControlError(404, f"unknown customer {customer_id!r} in scheme {scheme.id}")
        return hit

    # ---- mutations (control API) --------------------------------------------------------------------

    def next_stamp(self, previous: Any) -> str:
        """Fake-clock now, but strictly after `previous` even if the clock stands still or went back."""
        now = self.now()
        if isinstance(previous, str):
            try:
                earlier = parse_datetime(previous)
            except ValueError:
                earlier = None
            if earlier is not None and now <= earlier:
                now = earlier + timedelta(microseconds=1)
        return format_datetime(now)

    def touch(self, scheme: Scheme, customer: dict[str, Any], actor: str, *, bump: bool = True,
               membership: bool = False) -> None:
        if bump:
            customer["updatedDate"] = self.next_stamp(customer.get("updatedDate"))
            customer["updatedBy"] = actor
        scheme.changed(membership)

    def emit_customer(self, scheme: Scheme, topic: int, customer: dict[str, Any]) -> None:
        cid = customer.get("id")
        self.emit(scheme, topic, customer, None if cid is None else str(cid), f"Customer Id: {cid}")

    def add_customers(self, scheme: Scheme, customers: list[Any], actor: str, emit: bool = True
                      ) -> list[str]:
        """Store dicts as given (unknown keys and wrong types kept); fill id and the two stamps."""
        staged: list[dict[str, Any]] = []
        seen: set[str] = set()
        for item in customers:
            if not isinstance(item, dict):
                raise ControlError(400, "every customer must be a JSON object")
            customer = dict(item)
            if customer.get("id") is None:
                customer["id"] = str(uuid.uuid4())
            key = str(customer["id"])
            if key in scheme.customers or key in seen:
                raise ControlError(409, f"customer {key} already exists in scheme {scheme.id}")
            seen.add(key)
            stamp = format_datetime(self.now())
            customer.setdefault("createdDate", stamp)
            customer.setdefault("updatedDate", stamp)
            staged.append(customer)
        ids = [scheme.add(customer) for customer in staged]
        scheme.changed(membership=True)
        if emit:
            for customer in staged:
                self.emit_customer(scheme, TOPIC_JOIN, customer)
        return ids

    def update_customer(self, scheme: Scheme, customer_id: str, fields: Mapping[str, Any], actor: str
                        ) -> dict[str, Any]:
        _, customer = self.require_customer(scheme, customer_id)
        if "id" in fields and str(fields["id"]) != str(customer.get("id")):
            raise ControlError(400, "the id of a customer cannot change")
        customer.update(fields)
        if ("firstName" in fields or "lastName" in fields) and "name" not in fields:
            customer["name"] = f"{customer.get('firstName') or ''} {customer.get('lastName') or ''}".strip()
        if "updatedDate" in fields:  # a test asked for an explicit stamp: keep it as given
            customer.setdefault("updatedBy", actor)
            scheme.changed(membership="deleted" in fields)
        else:
            self.touch(scheme, customer, str(fields.get("updatedBy", actor)), membership="deleted" in fields)
        self.emit_customer(scheme, TOPIC_UPDATE, customer)
        return customer

    def action(self, scheme: Scheme, customer_id: str, name: str, actor: str) -> dict[str, Any]:
        if name not in ACTIONS:
            raise ControlError(404, f"unknown action {name!r}; known: {sorted(ACTIONS)}")
        key, customer = self.require_customer(scheme, customer_id)
        membership = name in ("delete", "leave", "join")
        if name == "delete":
            customer["deleted"] = True
        elif name == "suspend":
            customer["onHold"] = True
        elif name == "activate":
            customer["onHold"] = False
        elif name == "leave":
            scheme.left.add(key)
            schemes = customer.get("schemes")
            if isinstance(schemes, list):
                customer["schemes"] = [s for s in schemes if not (isinstance(s, dict) and s.get("id") == scheme.id)]
        elif name == "join":
            scheme.left.discard(key)
            schemes = customer.get("schemes") if isinstance(customer.get("schemes"), list) else []
            if not any(isinstance(s, dict) and s.get("id") == scheme.id for s in schemes):
                customer["schemes"] = [*schemes, scheme.scheme_view()]
        self.touch(scheme, customer, actor, membership=membership)
        self.emit_customer(scheme, ACTIONS[name], customer)
        return customer

    def set_additional_field(self, scheme: Scheme, customer_id: str, actor: str, *, key: Any, value: Any,
                             name: Any = None, internal: Any = None) -> dict[str, Any]:
        if not isinstance(key, str) or not key:
            raise ControlError(400, "key must be a non-empty string")
        _, customer = self.require_customer(scheme, customer_id)
        fields = customer.get("additionalCustomerFields")
        if not isinstance(fields, list):
            fields = []
        fields = [dict(f) if isinstance(f, dict) else f for f in fields]
        stamp = format_datetime(self.now())
        existing = next((f for f in fields if isinstance(f, dict) and f.get("key") == key), None)
        if existing is None:
            existing = {"id": str(uuid.uuid4()), "customerId": str(customer.get("id")), "schemeId": scheme.id,
                        "name": name if name is not None else key, "key": key, "value": value,
                        "internal": bool(internal), "createdDate": stamp, "updatedDate": stamp,
                        "createdBy": actor, "updatedBy": actor}
            fields.append(existing)
            topic = TOPIC_FIELD_CREATE
        else:
            existing.update({"value": value, "updatedDate": stamp, "updatedBy": actor})
            if name is not None:
                existing["name"] = name
            if internal is not None:
                existing["internal"] = bool(internal)
            topic = TOPIC_FIELD_UPDATE
        customer["additionalCustomerFields"] = fields
        self.touch(scheme, customer, actor)
        self.emit(scheme, topic, existing, str(customer.get("id")),
                  f"AdditionalCustomerFields Id: {existing['id']}")
        return customer

    # ---- webhook subscriptions ----------------------------------------------------------------------

    def subscribe(self, scheme: Scheme, topic: Any, url: Any, email: Any, actor: str) -> dict[str, Any]:
        if isinstance(topic, bool) or not isinstance(topic, int) or not 0 <= topic <= 14:
            raise ApiError(400, "topic must be an integer between 0 and 14")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ApiError(400, "url must be an absolute https URL")
        if not url.startswith("https:") and not self.knobs.allow_http_webhooks:
            raise ApiError(400, "The webhook url must start with https:")
        if email is not None and not isinstance(email, str):
            raise ApiError(400, "email must be a string")
        for sub in scheme.subscriptions:  # re-subscribing is idempotent (our choice)
            if sub["topic"] == topic and sub["url"] == url and sub["email"] == email:
                return sub
        stamp = format_datetime(self.now())
        sub = {"id": str(uuid.uuid4()), "topic": topic, "url": url, "email": email, "createdDate": stamp,
               "updatedDate": stamp, "createdBy": actor, "updatedBy": actor}
        scheme.subscriptions.append(sub)
        return sub

    def unsubscribe(self, scheme: Scheme, topic: Any, url: Any, email: Any) -> int:
        if isinstance(topic, bool) or not isinstance(topic, int):
            raise ApiError(400, "topic is required")
        keep, removed = [], 0
        for sub in scheme.subscriptions:
            hit = sub["topic"] == topic and url in (None, sub["url"]) and email in (None, sub["email"])
            removed += hit
            if not hit:
                keep.append(sub)
        scheme.subscriptions = keep
        return removed


def number_or_zero(value: Any) -> int | float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def dumps(value: Any) -> bytes:
    """Compact JSON as the app answers it. Non-ASCII is \\u-escaped, like ASP.NET's System.Text.Json
    default encoder (whether Loyale escapes is UNCONFIRMED; any JSON parser reads both)."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")
