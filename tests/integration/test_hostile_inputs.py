"""Nothing lost to bad input: hostile Loyale records through the real pipeline, hostile Klaviyo answers
through the real client.

Part 1 runs `sync_customer` in this process against real Redis and the fake Klaviyo over HTTP: a corpus
of hostile records, each of which must end in the outcome DESIGN.md documents for it (invalid with a
reason, created with a warning for a dropped value, conflict, rejected with Klaviyo's detail...), with a
normal customer after them that must still sync, and a second pass that must write nothing.

Part 2 serves hostile answers (HTML error pages, truncated JSON, empty bodies, unexpected shapes) from a
tiny HTTP server on loopback and checks the `KlaviyoClient` turns each into the error class that says
what the caller should do (`worker.errors`), never a JSONDecodeError, KeyError or TypeError.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from tests.builders import loyale_payload
from tests.integration.scenario import private_key
from worker.batch import BatchSettings, BatchSync, Done, Item
from worker.errors import DuplicateProfile, RecordRejected, RetryableError, TenantFatalError, Throttled
from worker.klaviyo import ImportError_, KlaviyoClient
from worker.models import KlaviyoProfile
from worker.outcomes import Outcome
from worker.preview import preview
from worker.runtime import Runtime
from worker.settings import Settings, TenantConfig
from worker.store import Store
from worker.sync import SyncDeps, sync_customer

# --- part 1: hostile Loyale records -------------------------------------------------------------------------

NO_PHONE = {"areaCode": None, "mobileNumber": None}
#: Every field the snapshot carries set to null (the id too, in one record).
ALL_NULL = {key: None for key in loyale_payload()}


def record(name: str, **overrides: Any) -> dict[str, Any]:
    """A good customer without a phone (a phone is an identifier, so customers must not share one),
    id `h-<name>` and email `<name>@example.com`, with `overrides` on top."""
    return loyale_payload(**{"id": f"h-{name}", "email": f"{name}@example.com", **NO_PHONE, **overrides})


@dataclass
class Case:
    name: str
    payload: dict[str, Any]
    outcome: Outcome
    reason: str = ""              #: a fragment of the recorded reason
    warning: str = ""             #: a fragment of one of the warnings
    tenant: str = "t"             #: "t": no default phone region; "mt": default_phone_region = MT
    #: path -> value the customer's Klaviyo profile (found by external_id) must hold afterwards
    holds: dict[str, Any] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  #: paths that must be empty on that profile

    @property
    def customer_id(self) -> str:
        value = self.payload.get("id")
        return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else "(no id)"


MALFORMED_EMAILS = ["jane@", "jane example@example.com", "jane@@example.com", "<jane>@example.com", "jane@example",
                    "jane@exa_mple.com", "ja\x00ne@example.com", "x" * 250 + "@example.com"]
GARBAGE_PHONES = [("", "n/a"), ("", "12"), ("+356", "1"), ("", "☎️☎️"), ("+356", "79123456789012345678"),
                  ("abc", "---"), (None, "+999 123")]

CORPUS: list[Case] = [
    # identity
    Case("no-email-no-phone", record("no-email-no-phone", email=None), Outcome.INVALID,
         reason="no email and no usable phone number"),
    Case("blank-email-no-phone", record("blank-email-no-phone", email=" \t "), Outcome.INVALID,
         reason="no email and no usable phone number"),
    Case("phone-only", record("phone-only", email=None, areaCode="+356", mobileNumber="79111111"), Outcome.CREATED,
         holds={"phone_number": "+35679111111", "external_id": "h-phone-only"}, absent=("email",)),
    *[Case(f"malformed-{i}", record(f"malformed-{i}", email=email), Outcome.INVALID, reason="malformed email address")
      for i, email in enumerate(MALFORMED_EMAILS)],
    Case("emoji-email", record("emoji-email", email="🎉@example.com"), Outcome.REJECTED,
         reason="Invalid email address at /data/attributes/email"),
    Case("mixed-case", record("mixed-case", email="  MiXeD.Case@Example.COM "), Outcome.CREATED,
         holds={"email": "mixed.case@example.com"}),
    Case("twin-a", record("twin-a", email="Twin@Example.com", firstName="Ann"), Outcome.CREATED,
         holds={"email": "twin@example.com", "first_name": "Ann"}),
    Case("twin-b", record("twin-b", email="twin@example.com", firstName="Bea"), Outcome.CONFLICT,
         reason="belongs to Loyale customer h-twin-a"),
    Case("owned-email", record("owned-email", email="owned@example.com", firstName="Intruder"), Outcome.CONFLICT,
         reason="belongs to Loyale customer someone-else"),
    # phones
    Case("local-no-region", record("local-no-region", mobileNumber="79222222"), Outcome.CREATED,
         warning="no country code (set the tenant's default_phone_region", absent=("phone_number",)),
    Case("local-with-region", record("local-with-region", mobileNumber="7922 2223"), Outcome.CREATED, tenant="mt",
         holds={"phone_number": "+35679222223"}),
    Case("trunk-zero", record("trunk-zero", areaCode="+44", mobileNumber="07911 123457"), Outcome.CREATED,
         holds={"phone_number": "+447911123457"}),
    Case("intl-00", record("intl-00", areaCode="", mobileNumber="00356 7922 2224"), Outcome.CREATED,
         holds={"phone_number": "+35679222224"}),
    *[Case(f"garbage-phone-{i}", record(f"garbage-phone-{i}", areaCode=area, mobileNumber=mobile), Outcome.CREATED,
           warning="phone dropped", absent=("phone_number",), holds={"first_name": "Jane"})
      for i, (area, mobile) in enumerate(GARBAGE_PHONES)],
    Case("garbage-phone-no-email", record("garbage-phone-no-email", email=None, mobileNumber="n/a"), Outcome.INVALID,
         reason="no email and no usable phone number (phone dropped: mobileNumber has no digits)"),
    Case("local-phone-only-no-region", record("local-phone-only-no-region", email=None, mobileNumber="79222225"),
         Outcome.INVALID, reason="no usable phone number (phone dropped: no country code (set the tenant's "
                                 "default_phone_region"),
    Case("local-phone-only-with-region", record("local-phone-only-with-region", email=None, mobileNumber="79222226"),
         Outcome.CREATED, tenant="mt", holds={"phone_number": "+35679222226"}, absent=("email",)),
    # text
    Case("long-names", record("long-names", firstName="A" * 10_000, lastName="ü" * 10_000, town="T" * 10_000),
         Outcome.CREATED, warning="firstName: 10000 characters, cut to 255",
         holds={"first_name": "A" * 255, "last_name": "ü" * 255, "location.city": "T" * 255}),
    Case("control-emoji", record("control-emoji", firstName="Ja\x00ne\x1b\x7f 🎉", town="Val\nletta",
                                 lastName="O\u2019Brien 👩\u200d👩\u200d👧"), Outcome.CREATED,
         holds={"first_name": "Jane 🎉", "last_name": "O\u2019Brien 👩\u200d👩\u200d👧", "location.city": "Valletta"}),
    # a JS client that cut an emoji in half sends a lone surrogate: it cannot be encoded as UTF-8
    Case("lone-surrogate", record("lone-surrogate", firstName="Zoë\ud83d", tags=["vip\udc00"]), Outcome.CREATED,
         holds={"first_name": "Zoë", "properties.Tags": ["vip"]}),
    # nulls
    Case("nulls-everywhere", dict(ALL_NULL), Outcome.INVALID,
         reason="unreadable Loyale record: the customer has no id"),
    Case("nulls-but-id", {**ALL_NULL, "id": "h-nulls-but-id"}, Outcome.SKIPPED_NO_CONSENT,
         reason="no marketing consent recorded in Loyale; not in Klaviyo, so not created"),
    Case("nulls-deleted", {**ALL_NULL, "id": "h-nulls-deleted", "deleted": True}, Outcome.SKIPPED_NO_CONSENT,
         reason="deleted in Loyale"),
    Case("nulls-opted-in", {**ALL_NULL, "id": "h-nulls-opted-in", "email": "nulls-opted-in@example.com",
                            "marketingSub": True}, Outcome.CREATED,
         holds={"email": "nulls-opted-in@example.com", "organization": "Loyale"},
         absent=("first_name", "last_name", "phone_number", "location.city", "properties.Levels")),
    # unknown and reserved names
    Case("unknown-fields", record("unknown-fields", favouriteColour="red", __proto__={"admin": True},
                                  nested={"deep": [1, {"x": None}]}, Levels="zzz", balance="lots", _kx="x"),
         Outcome.CREATED, absent=("properties.favouriteColour", "properties.nested", "properties.__proto__")),
    Case("reserved-keys", record("reserved-keys", additionalCustomerFields=[
        {"key": "email", "value": "hijack@example.com", "internal": False},
        {"key": "$first_name", "value": "Hijack", "internal": False},
        {"key": "$email", "value": "hijack@example.com", "internal": False},
        {"key": "external_id", "value": "hijack", "internal": False},
        {"key": "id", "value": "01HIJACK", "internal": False},
        {"key": "Levels", "value": "Hijack", "internal": False},
        {"key": "ShoeSize", "value": "38", "internal": False}]), Outcome.CREATED,
         warning="additional field '$first_name' skipped: the name is reserved",
         holds={"email": "reserved-keys@example.com", "external_id": "h-reserved-keys", "first_name": "Jane",
                "properties.Levels": ["Gold"], "properties.ShoeSize": "38", "properties.email": "hijack@example.com"},
         absent=("properties.$first_name", "properties.$email")),
    # wrong types
    Case("numbers-as-text", record("numbers-as-text", points_balance="1200", monetary_balance=" 12.50 "),
         Outcome.CREATED, holds={"properties.LoyalePointBalance": 1200, "properties.LoyaleMonetaryBalance": 12.5}),
    Case("numbers-garbage", record("numbers-garbage", points_balance="lots", monetary_balance="NaN"), Outcome.CREATED,
         warning="monetary_balance: ignored a value that is not a finite number",
         absent=("properties.LoyalePointBalance", "properties.LoyaleMonetaryBalance")),
    Case("number-huge", record("number-huge", points_balance=10**400, monetary_balance="1e999"), Outcome.CREATED,
         warning="points_balance: ignored a value that is not a finite number",
         absent=("properties.LoyalePointBalance", "properties.LoyaleMonetaryBalance")),
    Case("marketing-yes", record("marketing-yes", marketingSub="yes"), Outcome.SKIPPED_NO_CONSENT,
         reason="no marketing consent recorded in Loyale", warning="marketing_sub: ignored str value"),
    Case("marketing-true-text", record("marketing-true-text", marketingSub="true"), Outcome.CREATED),
    Case("wrong-types", record("wrong-types", firstName={"x": 1}, lastName=42, levelNames="Gold", deleted="no",
                               tags=[1, None, {"a": 1}, "vip"], additionalCustomerFields={"key": "x"}),
         Outcome.CREATED, warning="first_name: ignored a value of type dict",
         holds={"last_name": "42", "properties.Tags": ["1", "vip"]}, absent=("first_name", "properties.Levels")),
    Case("additional-bad-shapes", record("additional-bad-shapes", additionalCustomerFields=[
        {"key": 7, "value": 1}, {"key": "Colour", "value": "red", "internal": None},
        {"key": "Secret", "value": "x", "internal": "maybe"}, {"key": ["x"], "value": 1}, "garbage",
        {"key": "Ratio", "value": math.inf}]), Outcome.CREATED,
         warning="additional field internal: str value is not true/false, so not synced",
         holds={"properties.7": 1, "properties.Colour": "red"}, absent=("properties.Secret", "properties.Ratio")),
    Case("id-number", record("id-number", id=12345), Outcome.CREATED, holds={"external_id": "12345"}),
    # phone only, so the second pass finds it by external_id: a filter value that is not ASCII must reach
    # Klaviyo as the text itself
    Case("id-non-ascii", record("id-non-ascii", id="cliente-ñ-1", email=None, areaCode="+356",
                                mobileNumber="79333333"), Outcome.CREATED,
         holds={"external_id": "cliente-ñ-1", "phone_number": "+35679333333"}),
    # dates
    Case("dob-day-first", record("dob-day-first", dob="30/12/1990"), Outcome.CREATED,
         warning="dob: not a date, Birthday not sent", absent=("properties.Birthday",)),
    Case("dob-slashes", record("dob-slashes", dob="1990/05/01"), Outcome.CREATED,
         holds={"properties.Birthday": "1990-05-01"}),
    Case("dob-dotnet", record("dob-dotnet", dob="1990-05-01T23:00:00.1234567-02:00"), Outcome.CREATED,
         holds={"properties.Birthday": "1990-05-01"}),   # the date as written, not shifted to UTC
    Case("updated-words", record("updated-words", updatedDate="last tuesday"), Outcome.CREATED,
         warning="updatedDate: not a date"),
    Case("updated-epoch", record("updated-epoch", updatedDate=1767225600), Outcome.CREATED,
         warning="updatedDate: not a date"),
]
NORMAL = Case("normal", loyale_payload(id="h-normal", email="normal@example.com"), Outcome.CREATED,
              holds={"first_name": "Jane", "phone_number": "+35679123456", "properties.Levels": ["Gold"]})
#: On a second pass with the same snapshots, these outcomes turn into these (nothing is written again).
SECOND_PASS = {Outcome.CREATED: Outcome.UNCHANGED}


@pytest.fixture
def runtime(klaviyo, redis_url) -> Iterator[tuple[Runtime, str]]:
    key = private_key()
    account = klaviyo.add_account(keys=[{"key": key}])
    common = dict(loyale_scheme_id="s", loyale_admin_email="a@b.c", loyale_admin_password="p",
                  klaviyo_base_url=klaviyo.base_url, klaviyo_private_key=key, merge_customers=True)
    tenants = {"t": TenantConfig(id="t", **common),
               "mt": TenantConfig(id="mt", default_phone_region="MT", **common)}
    rt = Runtime.build(Settings(redis_url=redis_url), tenants=tenants, wait_inline_s=10)
    yield rt, account
    rt.close()


def nulls(node: Any) -> bool:
    if isinstance(node, dict):
        return any(v is None or nulls(v) for v in node.values())
    if isinstance(node, list):
        return any(v is None or nulls(v) for v in node)
    return False


def test_hostile_records_each_end_in_their_documented_outcome_and_the_run_goes_on(runtime, klaviyo):
    rt, account = runtime
    klaviyo.set_knobs(request_log_size=5000)
    klaviyo.seed_profiles([{"email": "owned@example.com", "external_id": "someone-else", "first_name": "Owner"}],
                          account_id=account)
    cases = [*CORPUS, NORMAL]
    assert len({c.customer_id for c in cases}) == len(cases)

    problems: list[str] = []
    for case in cases:
        try:
            result = sync_customer(rt.deps(case.tenant), "hostile-1", case.payload)
        except Exception as exc:  # noqa: BLE001 - report every record that breaks the run, not the first
            problems.append(f"{case.name}: raised {exc!r}")
            continue
        if result.outcome != case.outcome or case.reason not in result.reason:
            problems.append(f"{case.name}: {result.outcome} ({result.reason!r}), expected {case.outcome} "
                            f"with {case.reason!r}")
        if case.warning and not any(case.warning in w for w in result.warnings):
            problems.append(f"{case.name}: no warning with {case.warning!r} in {result.warnings}")
    assert not problems, "\n".join(problems)

    # one outcome per customer in the run, problems listed with their reason
    assert rt.store.outcomes("hostile-1") == {c.customer_id: c.outcome.value for c in cases}
    listed = rt.store.problems("hostile-1")
    for case in cases:
        if case.outcome in (Outcome.INVALID, Outcome.CONFLICT, Outcome.REJECTED):
            assert case.reason in listed[case.customer_id]["reason"], case.name

    # what Klaviyo holds
    profiles = klaviyo.profiles(account_id=account)
    by_xid = {p["attributes"]["external_id"]: KlaviyoProfile(id=p["id"], attributes=p["attributes"])
              for p in profiles if p["attributes"]["external_id"]}
    created = [c for c in cases if c.outcome == Outcome.CREATED]
    assert sorted(by_xid) == sorted([c.customer_id for c in created] + ["someone-else"])
    assert len(profiles) == len(created) + 1      # nothing else was created, nothing duplicated
    for case in created:
        profile = by_xid[case.customer_id]
        for path, value in case.holds.items():
            assert profile.value(path) == value, (case.name, path, profile.value(path))
        for path in case.absent:
            assert profile.value(path) in (None, "", []), (case.name, path, profile.value(path))
        props = profile.attributes["properties"]
        assert not any(k.startswith("$") for k in props), (case.name, props)
    owner = by_xid["someone-else"]
    assert (owner.value("first_name"), owner.value("email")) == ("Owner", "owned@example.com")
    assert by_xid["h-twin-a"].value("first_name") == "Ann"

    # never a null on the wire, and every request valid against Klaviyo's spec
    bodies = [e["body"] for e in klaviyo.request_log() if e["body"] is not None]
    assert bodies and not any(nulls(b) for b in bodies)
    assert klaviyo.spec_violations() == []

    # the same snapshots again: nothing is written, every customer ends where it did or unchanged
    writes_before = klaviyo.requests()["by_endpoint"]
    for case in cases:
        again = sync_customer(rt.deps(case.tenant), "hostile-2", case.payload)
        assert again.outcome == SECOND_PASS.get(case.outcome, case.outcome), (case.name, again.reason)
    writes_after = klaviyo.requests()["by_endpoint"]
    for endpoint in ("POST /api/profiles", "PATCH /api/profiles/{id}"):
        rejected_again = sum(c.outcome == Outcome.REJECTED for c in cases) if endpoint.startswith("POST") else 0
        assert writes_after.get(endpoint, 0) - writes_before.get(endpoint, 0) == rejected_again, endpoint


@pytest.mark.parametrize("merge", [True, False], ids=["merge-on", "merge-off"])
def test_preview_predicts_for_each_customer_what_the_backfill_then_records(klaviyo, redis_url, merge):
    """Preview prepares and looks up as the backfill's batch does (`worker.pipeline`), so on the hostile
    corpus it predicts, customer by customer, the outcome the batch then records (but for Klaviyo's own
    refusals of a row, which no preview can foresee). The second pass is the one where what this service
    remembers matters: profiles it wrote, one older snapshot (stale), one email that belongs to another
    customer's profile, and one phone-only customer whose phone was refused before (nothing to create)."""
    key = private_key()
    account = klaviyo.add_account(keys=[{"key": key}])
    klaviyo.set_knobs(rate_limits_enabled=False)
    klaviyo.seed_profiles([{"email": "owned@example.com", "external_id": "someone-else", "first_name": "Owner"}],
                          account_id=account)
    common = dict(loyale_scheme_id="s", loyale_admin_email="a@b.c", loyale_admin_password="p",
                  klaviyo_base_url=klaviyo.base_url, klaviyo_private_key=key, merge_customers=merge)
    tenants = {"t": TenantConfig(id="t", **common), "mt": TenantConfig(id="mt", default_phone_region="MT", **common)}
    rt = Runtime.build(Settings(redis_url=redis_url, limiter_rate_scale=100), tenants=tenants, wait_inline_s=10)
    cases = [c for c in [*CORPUS, NORMAL] if c.customer_id != "(no id)" and c.outcome != Outcome.REJECTED]

    def backfill(run: str, payloads: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
        recorded: dict[str, str] = {}
        for tenant, group in payloads.items():
            sync = BatchSync(rt.deps(tenant), BatchSettings(poll_first_s=0.01), back_off=rt.limiter.back_off)
            items = [Item(task_id=f"{run}-{i}", tenant=tenant, run=run, customer=p) for i, p in enumerate(group)]
            recorded |= {r.item.customer_id: r.outcome.value for r in sync.run(items) if isinstance(r, Done)}
        return recorded

    try:
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for case in cases:
            by_tenant.setdefault(case.tenant, []).append(case.payload)
        backfill("first", by_tenant)
        rt.store.remember_refused_phone("t", "+35679333333")     # the phone-only "id-non-ascii"
        second = {tenant: [{**p, "firstName": "Renamed"} for p in group] for tenant, group in by_tenant.items()}
        older = next(p for p in second["t"] if p["id"] == "h-normal")
        older["updatedDate"] = "2000-01-01T00:00:00Z"
        predicted: dict[str, str] = {}
        for tenant, group in second.items():
            chosen = tenants[tenant]
            for item in preview(rt.klaviyo(tenant), rt.deps(tenant).policy, group,
                                region=chosen.default_phone_region, state=rt.store, tenant=tenant):
                predicted[item.customer_id] = item.plan.outcome.value
        recorded = backfill("second", second)
    finally:
        rt.close()
    assert recorded, "the second backfill recorded outcomes"
    assert {"updated" if merge else "skipped_existing", "conflict", "rejected", "stale"} <= set(recorded.values())
    differ = {cid: (predicted.get(cid), outcome) for cid, outcome in recorded.items() if predicted.get(cid) != outcome}
    assert differ == {}, "preview predicted (first) other than the backfill recorded (second)"


# --- part 2: hostile Klaviyo answers ------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Content-Length to declare; more than the body, and the connection is cut mid-response.
    declared: int | None = None


class CannedKlaviyo(ThreadingHTTPServer):
    """A real HTTP server on loopback that answers every request with `answer` (or `by_method`)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = Answer(200, b"{}")
        self.by_method: dict[str, Answer] = {}
        self.seen: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CannedKlaviyo

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append((self.command, self.path))
        answer = self.server.by_method.get(self.command, self.server.answer)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        cut = answer.declared is not None and answer.declared > len(answer.body)
        self.send_header("Content-Length", str(answer.declared if answer.declared is not None else len(answer.body)))
        if cut:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[CannedKlaviyo]:
    server = CannedKlaviyo()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def client(canned: CannedKlaviyo) -> Iterator[KlaviyoClient]:
    canned.by_method, canned.seen = {}, []
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
        yield KlaviyoClient(http, tenant="brand-x", base_url=canned.url, private_key=SecretStr(private_key()),
                            revision="2026-07-15")


HTML = {"Content-Type": "text/html; charset=UTF-8"}
JSONAPI = {"Content-Type": "application/vnd.api+json"}
CLOUDFLARE = (b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
              b"<h1>Sorry, you have been blocked</h1></body></html>")
NGINX_500 = b"<html><head><title>500 Internal Server Error</title></head><body>nginx</body></html>"
PROFILE = {"type": "profile", "id": "01KPROFILE0000000000000001",
           "attributes": {"email": "a@example.com", "external_id": "c-1", "first_name": "A"}}


def doc(value: Any) -> bytes:
    return json.dumps(value).encode()


def error_doc(status: int, code: str, detail: str, **extra: Any) -> bytes:
    return doc({"errors": [{"id": "e1", "status": status, "code": code, "title": "Error.", "detail": detail,
                            "source": {"pointer": "/data/"}, **extra}]})


Call = Callable[[KlaviyoClient], Any]
CALLS: dict[str, Call] = {
    "find": lambda k: k.find_one("email", "a@example.com"),
    "find_many": lambda k: k.find_many("email", ["a@example.com", "b@example.com"]),
    "create": lambda k: k.create_profile({"email": "a@example.com"}),
    "update": lambda k: k.update_profile("01KPROFILE0000000000000001", {"first_name": "A"}),
    "suppress": lambda k: k.suppress(["a@example.com"]),
    "bulk_job": lambda k: k.bulk_import_job("JOB1"),
    "import_errors": lambda k: k.import_errors("JOB1"),
    "account": lambda k: k.account(),
}


@dataclass
class Hostile:
    name: str
    call: str
    answer: Answer
    error: type[Exception]
    message: str                   #: a fragment the error's message must contain
    exact: bool = True             #: the error must be exactly this class (not a subclass)


HOSTILE_ERRORS = [
    # auth pages that are not Klaviyo's JSON: a CDN in front of the API, retried rather than pausing the tenant
    Hostile("html-403", "find", Answer(403, CLOUDFLARE, HTML), RetryableError, "403 with a non-JSON page"),
    Hostile("html-401", "create", Answer(401, CLOUDFLARE, HTML), RetryableError, "401 with a non-JSON page"),
    Hostile("empty-403", "update", Answer(403), RetryableError, "403 with a non-JSON page"),
    # Klaviyo's own auth errors pause the tenant, with the fix in the message
    Hostile("json-403", "find", Answer(403, error_doc(403, "permission_denied", "You do not have permission."),
                                       JSONAPI), TenantFatalError, "lacks a scope this sync needs"),
    Hostile("json-401", "create", Answer(401, error_doc(401, "not_authenticated", "Missing credentials."), JSONAPI),
            TenantFatalError, "Create a new private key in Klaviyo"),
    Hostile("json-410", "find", Answer(410, error_doc(410, "gone", "Revision retired."), JSONAPI),
            TenantFatalError, "SYNC_KLAVIYO_REVISION"),
    # 2xx that cannot be read: retried
    Hostile("truncated-200", "find", Answer(200, doc({"data": [PROFILE]})[:37], JSONAPI), RetryableError,
            "200 with a body that is not JSON"),
    Hostile("truncated-201", "create", Answer(201, doc({"data": PROFILE})[:20], JSONAPI), RetryableError,
            "201 with a body that is not JSON"),
    Hostile("html-200", "find", Answer(200, b"<html>maintenance</html>", HTML), RetryableError, "not JSON"),
    Hostile("latin1-200", "find", Answer(200, b'{"data": ["\xff\xfe"]}', JSONAPI), RetryableError, "not JSON"),
    Hostile("empty-200", "find", Answer(200, b"", JSONAPI), RetryableError, "without a JSON:API `data` member"),
    Hostile("empty-201", "create", Answer(201, b"", JSONAPI), RetryableError, "without a JSON:API `data` member"),
    Hostile("null-200", "update", Answer(200, b"null", JSONAPI), RetryableError, "without a JSON:API `data` member"),
    Hostile("list-200", "find", Answer(200, b"[1, 2]", JSONAPI), RetryableError, "without a JSON:API `data` member"),
    Hostile("cut-mid-body", "find", Answer(200, doc({"data": [PROFILE]})[:30], JSONAPI, declared=4000),
            RetryableError, "connection to Klaviyo failed"),
    # 2xx JSON of an unexpected shape: retried, never a KeyError/TypeError
    Hostile("data-object", "find", Answer(200, doc({"data": PROFILE}), JSONAPI), RetryableError,
            "`data` that is not a list"),
    Hostile("resource-without-id", "find", Answer(200, doc({"data": [{"type": "profile", "attributes": {}}]}),
                                                  JSONAPI), RetryableError, "without an id"),
    Hostile("resource-not-object", "find_many", Answer(200, doc({"data": ["01KP", None]}), JSONAPI), RetryableError,
            "without an id"),
    Hostile("attributes-not-object", "find", Answer(200, doc({"data": [{**PROFILE, "attributes": "x"}]}), JSONAPI),
            RetryableError, "whose attributes are not an object"),
    Hostile("created-without-id", "create", Answer(201, doc({"data": {"type": "profile"}}), JSONAPI),
            RetryableError, "without an id"),
    Hostile("job-without-id", "bulk_job", Answer(200, doc({"data": {"type": "profile-bulk-import-job"}}), JSONAPI),
            RetryableError, "without an id"),
    Hostile("accounts-object", "account", Answer(200, doc({"data": {"id": "ACC"}}), JSONAPI), RetryableError,
            "no account"),
    Hostile("accounts-empty", "account", Answer(200, doc({"data": []}), JSONAPI), RetryableError, "no account"),
    # 4xx that cannot be read: a rejection of this one record, with the status in the message
    Hostile("truncated-400", "create", Answer(400, error_doc(400, "invalid", "Bad email")[:25], JSONAPI),
            RecordRejected, "Klaviyo 400 400: Bad Request"),
    Hostile("empty-400", "update", Answer(400), RecordRejected, "Klaviyo 400 400: Bad Request"),
    Hostile("html-409", "create", Answer(409, b"<html>conflict</html>", HTML), RecordRejected, "Klaviyo 409"),
    Hostile("html-404", "update", Answer(404, b"<html>not found</html>", HTML), RecordRejected, "Klaviyo 404"),
    Hostile("errors-not-objects", "create", Answer(400, doc({"errors": ["bad", 3, None]}), JSONAPI), RecordRejected,
            "Klaviyo 400"),
    Hostile("duplicate-without-meta", "create",
            Answer(409, error_doc(409, "duplicate_profile", "A profile already exists.", meta="x"), JSONAPI),
            DuplicateProfile, "A profile already exists."),
    # throttling and outages
    Hostile("html-429", "find", Answer(429, b"<html>slow down</html>", HTML), Throttled, "429"),
    Hostile("html-500", "update", Answer(500, NGINX_500, HTML), RetryableError, "Klaviyo answered 500"),
    Hostile("empty-502", "create", Answer(502), RetryableError, "Klaviyo answered 502"),
    Hostile("truncated-503", "find", Answer(503, b'{"errors": [{"det', JSONAPI), RetryableError,
            "Klaviyo answered 503"),
]


@pytest.mark.parametrize("case", HOSTILE_ERRORS, ids=[c.name for c in HOSTILE_ERRORS])
def test_hostile_klaviyo_answers_map_to_the_error_that_says_what_to_do(case, canned, client):
    canned.answer = case.answer
    with pytest.raises(case.error) as caught:
        CALLS[case.call](client)
    if case.exact:
        assert type(caught.value) is case.error, repr(caught.value)
    assert case.message in str(caught.value), str(caught.value)
    if isinstance(caught.value, TenantFatalError):
        assert "brand-x" in str(caught.value)
    assert canned.seen, "the request reached the server"


@pytest.mark.parametrize(("header", "detail", "expected"), [
    (None, "Request was throttled. Expected available in 7 seconds.", 7.0),
    ("soon", "Expected available in 3 seconds.", 3.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None, 0.0),   # an HTTP-date (RFC 9110) in the past: now
    ("-5", None, 0.0),
    ("inf", None, None),
    ("nan", None, None),
    (None, None, None),
])
def test_a_429_wait_is_a_finite_number_of_seconds_or_none(header, detail, expected, canned, client):
    body = error_doc(429, "throttled", detail) if detail else b"<html>429</html>"
    canned.answer = Answer(429, body, {**JSONAPI, **({"Retry-After": header} if header else {})})
    with pytest.raises(Throttled) as caught:
        client.find_one("email", "a@example.com")
    assert caught.value.retry_after_s == expected


def test_unexpected_fields_and_shapes_in_good_answers_are_ignored(canned, client):
    """Klaviyo adds members over time; odd shapes where we only read a little must not break a sync."""
    odd = {**PROFILE, "meta": {"x": 1}, "relationships": "whatever", "attributes": {
        **PROFILE["attributes"], "brand_new_field": {"deep": [1, 2]}, "location": "Malta", "properties": [1],
        "subscriptions": {"email": "subscribed"}}}
    canned.answer = Answer(200, doc({"data": [odd], "links": {"next": 5}, "included": "?", "unexpected": True}),
                           JSONAPI)
    found = client.find_one("email", "a@example.com")
    assert found is not None and (found.id, found.email, found.external_id) == (PROFILE["id"], "a@example.com", "c-1")
    assert found.suppression_reasons == []
    assert found.value("location.city") is None and found.value("properties.Levels") is None

    canned.answer = Answer(200, doc({"data": [odd], "links": "not-an-object"}), JSONAPI)
    assert [p.id for p in client.find_many("email", ["a@example.com"])] == [PROFILE["id"]]

    canned.answer = Answer(200, doc({"data": {"type": "profile-bulk-import-job", "id": "JOB1", "attributes": {
        "status": "processing", "total_count": "many", "completed_count": None, "failed_count": {"x": 1}}}}), JSONAPI)
    job = client.bulk_import_job("JOB1")
    assert (job.id, job.status, job.total_count, job.completed_count, job.failed_count) == ("JOB1", "processing",
                                                                                             None, None, None)

    canned.answer = Answer(200, doc({"data": [
        "garbage", None, {"attributes": "x"},
        {"attributes": {"code": "invalid", "detail": "Invalid email", "source": "nowhere", "original_payload": [1]}},
        {"attributes": {"code": "invalid", "detail": "Bad phone", "source": {"pointer": "/data/attributes/phone"},
                        "original_payload": {"attributes": {"email": "b@example.com"}}}}]}), JSONAPI)
    errors = client.import_errors("JOB1")
    assert errors == [
        ImportError_("", "", None, {}),
        ImportError_("invalid", "Invalid email", None, {}),
        ImportError_("invalid", "Bad phone", "/data/attributes/phone", {"attributes": {"email": "b@example.com"}}),
    ]
    assert errors[2].attributes == {"email": "b@example.com"}

    canned.answer = Answer(202, b"", JSONAPI)
    client.suppress(["a@example.com"])      # a job accepted with an empty body is fine


def test_a_sync_meeting_a_profile_of_odd_shape_still_ends_in_one_outcome(canned, redis_url):
    """The whole per-customer path against odd but readable answers: it plans, writes, records."""
    weird = {**PROFILE, "attributes": {**PROFILE["attributes"], "email": "jane@example.com",
                                       "subscriptions": {"email": {"marketing": "suppressed?"}},
                                       "location": None, "properties": None}}
    canned.by_method = {"GET": Answer(200, doc({"data": [weird], "links": None}), JSONAPI),
                        "PATCH": Answer(200, doc({"data": {**weird, "unexpected": 1}}), JSONAPI)}
    canned.seen = []
    tenant = TenantConfig(id="odd", loyale_scheme_id="s", loyale_admin_email="a@b.c", loyale_admin_password="p",
                          klaviyo_base_url=canned.url, klaviyo_private_key=private_key(), merge_customers=True)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with httpx.Client(timeout=5.0) as http:
            klaviyo = KlaviyoClient(http, tenant="odd", base_url=canned.url,
                                    private_key=tenant.klaviyo_private_key, revision="2026-07-15")
            result = sync_customer(SyncDeps(tenant, klaviyo, Store(client)), "odd-1", loyale_payload(id="c-1"))
        assert result.outcome == Outcome.UPDATED, result.reason
        assert ("PATCH", "/api/profiles/01KPROFILE0000000000000001") in canned.seen
        assert Store(client).outcomes("odd-1") == {"c-1": "updated"}
    finally:
        client.close()
