"""Webhooks of the fake Loyale: subscriptions, asynchronous delivery to a real local receiver, retries,
the failed-jobs list, duplicates. No sleeps: every wait is on a condition with a timeout."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from fakes.loyale_control import FakeLoyaleControl
from fakes.serving import ServerProcess, free_port

#: Each test talks to a fake served on a loopback port (a child process): the integration layer.
pytestmark = pytest.mark.integration

SCHEME = "5d0c6f64-3f3c-4d5e-9a51-0b5a4c1b2e77"
EMAIL = "admin@loyale.test"
PASSWORD = "hook-pass"


class Receiver:
    """A tiny HTTP server that records webhook POSTs and answers scripted statuses."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.gate: threading.Event | None = None
        self.finished = 0
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.cond:
                    outer.received.append({"path": self.path, "headers": dict(self.headers),
                                           "json": json.loads(body)})
                    status = outer.statuses.pop(0) if outer.statuses else 200
                    outer.cond.notify_all()
                if outer.gate is not None:
                    outer.gate.wait(10)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with outer.cond:
                    outer.finished += 1
                    outer.cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= count, timeout=timeout_s), self.received
            return list(self.received)

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(module="fakes.loyale", args=["--customers", "20", "--seed", "2", "--scheme-id", SCHEME,
                                                      "--admin-password", PASSWORD]).start()
    yield proc
    proc.stop()


@pytest.fixture
def control(server: ServerProcess) -> Iterator[FakeLoyaleControl]:
    with FakeLoyaleControl(server.url) as ctl:
        ctl.reset()
        ctl.set_knobs(webhook_retry_base_s=0.001)
        yield ctl
        ctl.reset()  # cancels deliveries still retrying


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


@pytest.fixture
def http(server: ServerProcess, control: FakeLoyaleControl) -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=server.url, timeout=10)
    token = client.post("/api/AdminToken", json={"email": EMAIL, "password": PASSWORD},
                        headers={"Scheme": SCHEME}).json()["token"]
    client.headers.update({"Authorization": f"Bearer {token}", "X-Scheme": SCHEME})
    yield client
    client.close()


def subscribe(http: httpx.Client, topic: int, url: str, email: str = "ops@brand.test") -> dict[str, Any]:
    response = http.post("/api/Webhook/Subscribe", content=json.dumps({"topic": topic, "url": url, "email": email}),
                         headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 200, response.text
    return response.json()


def customer_id(control: FakeLoyaleControl, index: int = 0) -> str:
    return [c for c in control.customers(SCHEME) if not c["deleted"]][index]["id"]


def test_subscribe_list_and_unsubscribe(http: httpx.Client, control: FakeLoyaleControl) -> None:
    sub = subscribe(http, 1, "http://127.0.0.1:9/updated")
    assert sub["topic"] == 1 and sub["url"] == "http://127.0.0.1:9/updated" and sub["createdBy"] == EMAIL
    assert set(sub) == {"id", "topic", "url", "email", "createdDate", "updatedDate", "createdBy", "updatedBy"}
    assert subscribe(http, 1, "http://127.0.0.1:9/updated")["id"] == sub["id"]  # idempotent
    subscribe(http, 1, "https://hooks.example/other")
    assert [s["url"] for s in http.get("/api/Webhook").json()] == ["http://127.0.0.1:9/updated",
                                                                   "https://hooks.example/other"]
    assert httpx.get(f"{http.base_url}/api/Webhook", headers={"X-Scheme": SCHEME}).status_code == 401
    for bad in ({"topic": 99, "url": "https://x"}, {"topic": 1, "url": "ftp://x"}, {"url": "https://x"}):
        assert http.post("/api/Webhook/Subscribe", json=bad).status_code == 400
    control.set_knobs(allow_http_webhooks=False)  # what real Loyale enforces
    assert http.post("/api/Webhook/Subscribe", json={"topic": 0, "url": "http://127.0.0.1:9/x"}).status_code == 400
    assert http.post("/api/Webhook/Subscribe", json={"topic": 0, "url": "https://hooks.example/x"}).status_code == 200

    gone = http.request("DELETE", "/api/Webhook/Unsubscribe", json={"topic": 1, "url": "http://127.0.0.1:9/updated"})
    assert gone.status_code == 200 and gone.json() == {"removed": 1}
    assert http.request("DELETE", "/api/Webhook/Unsubscribe", json={"topic": 1, "url": "http://127.0.0.1:9/updated"}
                        ).status_code == 404
    assert {(s["topic"], s["url"]) for s in http.get("/api/Webhook").json()} == {
        (1, "https://hooks.example/other"), (0, "https://hooks.example/x")}


def test_customer_topics_deliver_the_customer_view(http: httpx.Client, control: FakeLoyaleControl,
                                                   receiver: Receiver) -> None:
    for topic in (0, 1, 3, 8, 9, 11):
        subscribe(http, topic, f"{receiver.url}/topic/{topic}")
    cid = customer_id(control)
    expected = {
        1: control.update_customer(SCHEME, cid, updated_by="ops@brand.test", marketingSub=False),
        9: control.action(SCHEME, cid, "suspend"),
        8: control.action(SCHEME, cid, "activate"),
        3: control.action(SCHEME, cid, "leave"),
        0: control.action(SCHEME, cid, "join"),
        11: control.action(SCHEME, cid, "delete"),
    }
    got = {int(r["path"].rsplit("/", 1)[1]): r for r in receiver.wait_for(6)}
    assert set(got) == set(expected)
    for topic, view in expected.items():
        assert got[topic]["json"] == view  # a snapshot taken when the change happened
        assert not any("signature" in h.lower() or "hmac" in h.lower() for h in got[topic]["headers"])
    assert got[1]["json"]["updatedBy"] == "ops@brand.test" and got[1]["json"]["marketingSub"] is False
    assert got[9]["json"]["onHold"] is True and got[8]["json"]["onHold"] is False
    assert got[11]["json"]["deleted"] is True and got[11]["json"]["updatedBy"] == "fake-admin@loyale.test"
    attempts = control.wait_for_deliveries()
    assert sorted(d["topic"] for d in attempts) == [0, 1, 3, 8, 9, 11]
    assert all(d["ok"] and d["attempt"] == 1 and d["status"] == 200 and d["customer_id"] == cid for d in attempts)


def test_transaction_additional_field_and_transfer_payloads(http: httpx.Client, control: FakeLoyaleControl,
                                                            receiver: Receiver) -> None:
    for topic in (2, 4, 5, 10):
        subscribe(http, topic, f"{receiver.url}/topic/{topic}")
    source, target = customer_id(control, 0), customer_id(control, 1)
    control.set_balance(SCHEME, source, points=500, monetary=5.0)
    control.set_additional_field(SCHEME, source, "Favourite", "tea")
    control.set_additional_field(SCHEME, source, "Favourite", "coffee")
    moved = control.transfer(SCHEME, source, target, 200)
    by_topic: dict[int, list[dict[str, Any]]] = {}
    for r in receiver.wait_for(6):   # the transfer is a transaction on each side too (topic 2)
        by_topic.setdefault(int(r["path"].rsplit("/", 1)[1]), []).append(r["json"])
    got = {topic: bodies[0] for topic, bodies in by_topic.items()}
    balance_tx, sent, received = control.transactions(SCHEME)
    transactions = {t["id"]: t for t in by_topic[2]}
    assert set(transactions) == {balance_tx["id"], sent["id"], received["id"]}
    assert transactions[balance_tx["id"]]["customerId"] == source
    assert transactions[balance_tx["id"]]["cachedResultantPointValue"] == 500
    assert [(transactions[t["id"]]["pointValue"], transactions[t["id"]]["isSendPointsAction"]) for t in (sent, received)
            ] == [(-200, True), (200, True)]
    assert transactions[received["id"]]["cachedResultantPointValue"] == moved["target"]["balance"]["pointsValue"]
    assert got[4]["key"] == "Favourite" and got[4]["value"] == "tea" and got[4]["customerId"] == source
    assert got[5]["id"] == got[4]["id"] and got[5]["value"] == "coffee"
    assert got[10]["sourceCustomerId"] == moved["source"] and got[10]["targetCustomerId"] == moved["target"]
    assert moved["source"]["balance"]["pointsValue"] == 300


def test_delivery_never_blocks_the_request(http: httpx.Client, control: FakeLoyaleControl,
                                           receiver: Receiver) -> None:
    receiver.gate = threading.Event()
    subscribe(http, 1, f"{receiver.url}/slow")
    cid = customer_id(control)
    control.update_customer(SCHEME, cid, firstName="Quick")  # returns although the receiver is held
    receiver.wait_for(1)
    with receiver.cond:
        assert receiver.finished == 0  # the receiver is still holding the delivery open
    assert control.customer(SCHEME, cid)["firstName"] == "Quick"  # and the fake keeps serving
    assert http.get(f"/api/Customer/{cid}").status_code == 200
    receiver.gate.set()
    assert control.wait_for_deliveries()[0]["ok"] is True


def test_non_2xx_is_retried_until_success(http: httpx.Client, control: FakeLoyaleControl,
                                          receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    subscribe(http, 1, f"{receiver.url}/flaky")
    control.update_customer(SCHEME, customer_id(control), lastName="Retry")
    bodies = [r["json"] for r in receiver.wait_for(3)]
    assert bodies[0] == bodies[1] == bodies[2]
    attempts = control.wait_for_deliveries()
    assert [(d["attempt"], d["status"], d["ok"]) for d in attempts] == [(1, 500, False), (2, 503, False),
                                                                        (3, 200, True)]
    assert http.get("/api/Webhook/Failed").json() == []


def test_gives_up_after_ten_retries_and_lists_the_failed_job(http: httpx.Client, control: FakeLoyaleControl,
                                                             receiver: Receiver) -> None:
    receiver.statuses = [404] * 20
    sub = subscribe(http, 9, f"{receiver.url}/gone")
    cid = customer_id(control)
    control.action(SCHEME, cid, "suspend")
    attempts = control.wait_for_deliveries(timeout_s=20)
    assert [d["attempt"] for d in attempts] == list(range(1, 12))  # 1 try + 10 retries
    assert not any(d["ok"] for d in attempts)
    [failed] = http.get("/api/Webhook/Failed").json()
    assert failed["topic"] == 9 and failed["url"] == sub["url"] and failed["email"] == "ops@brand.test"
    assert failed["data"] == f"Customer Id: {cid}" and failed["reason"] == "404 Not Found"


def test_connection_errors_are_retried_too(http: httpx.Client, control: FakeLoyaleControl) -> None:
    control.set_knobs(webhook_max_retries=2)
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    subscribe(http, 1, dead)
    control.update_customer(SCHEME, customer_id(control), firstName="Lost")
    attempts = control.wait_for_deliveries()
    assert [(d["attempt"], d["status"], d["ok"]) for d in attempts] == [(1, None, False), (2, None, False),
                                                                        (3, None, False)]
    assert "ConnectError" in attempts[0]["error"]
    [failed] = http.get("/api/Webhook/Failed").json()
    assert failed["url"] == dead and "ConnectError" in failed["reason"]


def test_duplicate_deliveries(http: httpx.Client, control: FakeLoyaleControl, receiver: Receiver) -> None:
    control.set_knobs(webhook_duplicate_rate=1.0)
    subscribe(http, 1, f"{receiver.url}/dup")
    control.update_customer(SCHEME, customer_id(control), firstName="Twice")
    first, second = receiver.wait_for(2)
    assert first["json"] == second["json"]
    attempts = control.wait_for_deliveries()
    assert sorted(d["duplicate"] for d in attempts) == [False, True]
    assert len({d["event_id"] for d in attempts}) == 1
