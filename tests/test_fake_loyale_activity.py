"""The fake Loyale's loyalty activity, in process (Starlette's TestClient): transactions (earn, spend,
top-up, transfer), coupons linked and used, levels that follow points, their list routes, and their
webhooks (topics 0, 1, 2, 3, 6, 7, 10) delivered twice or lost. Webhooks go to an in-process receiver
(`create_app(webhook_transport=...)`); waits are bounded polls of the fake's own delivery log."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from fakes.loyale import FakeLoyaleConfig, SchemeConfig, create_app
from fakes.loyale_control import FakeLoyaleControl, FakeLoyaleError

SCHEME = "7a1c2e3d-4b5f-4a6e-8d7c-9b0a1f2e3d4c"
PASSWORD = "activity-pass"
HOOKS = "http://receiver.test"


@dataclass
class Receiver:
    """Records every webhook POST; answers 200."""

    bodies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.bodies.append((int(request.url.path.rsplit("/", 1)[1]), json.loads(request.content)))
        return httpx.Response(200)

    def of(self, topic: int) -> list[dict[str, Any]]:
        with self.lock:
            return [body for t, body in self.bodies if t == topic]


@dataclass
class Fake:
    api: TestClient
    control: FakeLoyaleControl
    receiver: Receiver

    def subscribe(self, *topics: int) -> None:
        for topic in topics:
            response = self.api.post("/api/Webhook/Subscribe", json={"topic": topic, "url": f"{HOOKS}/{topic}"})
            assert response.status_code == 200, response.text

    def delivered(self) -> list[dict[str, Any]]:
        return self.control.wait_for_deliveries(timeout_s=30)


@pytest.fixture
def fake() -> Iterator[Fake]:
    receiver = Receiver()
    config = FakeLoyaleConfig(schemes=[SchemeConfig(scheme_id=SCHEME, admin_password=PASSWORD)])
    app = create_app(config, webhook_transport=httpx.MockTransport(receiver.handle))
    with TestClient(app, base_url="http://fake-loyale") as api:
        token = api.post("/api/AdminToken", json={"email": "admin@loyale.test", "password": PASSWORD},
                         headers={"Scheme": SCHEME}).json()["token"]
        api.headers.update({"Authorization": f"Bearer {token}", "X-Scheme": SCHEME})
        yield Fake(api, FakeLoyaleControl("http://fake-loyale", http=api), receiver)


def customer(fake: Fake, points: float = 0, **fields: Any) -> str:
    (cid,) = fake.control.add_customers(SCHEME, [{"email": f"c{len(fake.control.customers(SCHEME))}@x.com",
                                                  "marketingSub": True, "balance": {"pointsValue": points,
                                                                                    "monetaryValue": points / 100},
                                                  "Levels": [], "detailedLevels": [], **fields}], emit=False)
    return cid


# -- transactions -------------------------------------------------------------------------------------


def test_earning_stores_a_transaction_with_the_balance_after_and_sends_topic_2(fake: Fake) -> None:
    fake.subscribe(2)
    cid = customer(fake, points=300)
    tx = fake.control.earn(SCHEME, cid, 120, 1.2, value=30, outlet="Valletta", external_ref="TILL-1-0042",
                           description="Coffee", transaction_date="2024-05-01T10:15:00Z")
    assert (tx["customerId"], tx["pointValue"], tx["monetaryValue"], tx["cachedResultantPointValue"]) == (
        cid, 120, 1.2, 420)
    assert (tx["transactionType"], tx["value"], tx["saleCurrency"], tx["externalRefId"], tx["description"]) == (
        0, "30.00", "EUR", "TILL-1-0042", "Coffee")
    assert tx["outlet"]["name"] == "Valletta" and tx["outletId"] == tx["outlet"]["id"]
    assert tx["transactionDate"] == "2024-05-01T10:15:00.000000Z" and tx["isSendPointsAction"] is False
    assert tx["customer"]["email"] == fake.control.customer(SCHEME, cid)["email"]
    after = fake.control.customer(SCHEME, cid)
    assert after["balance"]["pointsValue"] == 420 and after["lastTransactionDate"] == tx["createdDate"]
    assert fake.api.get(f"/api/Transaction/{tx['id']}").json() == tx
    assert fake.api.get(f"/api/PointBalance?Filters=customerId=={cid}").json()[0]["pointsValue"] == 420
    [delivery] = fake.delivered()
    assert (delivery["topic"], delivery["ok"], delivery["customer_id"]) == (2, True, cid)
    assert fake.receiver.of(2) == [tx]
    # The same outlet by name is the same outlet.
    again = fake.control.earn(SCHEME, cid, 5, outlet="Valletta")
    assert again["outletId"] == tx["outletId"] and again["monetaryValue"] == 0.05


def test_spending_is_a_redeem_and_never_beyond_the_balance(fake: Fake) -> None:
    cid = customer(fake, points=100)
    with pytest.raises(FakeLoyaleError, match="409"):
        fake.control.spend(SCHEME, cid, 101)
    tx = fake.control.spend(SCHEME, cid, 60, external_ref="R-1")
    assert (tx["pointValue"], tx["transactionType"], tx["cachedResultantPointValue"], tx["monetaryValue"]) == (
        -60, 3, 40, -0.6)
    assert [t["id"] for t in fake.control.transactions(SCHEME, cid)] == [tx["id"]]


def test_a_top_up_is_stored_but_sends_no_webhook(fake: Fake) -> None:
    fake.subscribe(2)
    cid = customer(fake)
    top_up = fake.control.transaction(SCHEME, cid, 50, kind=5)
    earned = fake.control.earn(SCHEME, cid, 10)
    assert [d["topic"] for d in fake.delivered()] == [2]
    assert [body["id"] for body in fake.receiver.of(2)] == [earned["id"]]
    assert [t["id"] for t in fake.control.transactions(SCHEME)] == [top_up["id"], earned["id"]]


def test_transactions_are_listed_by_customer_and_date_with_sieve_and_paging(fake: Fake) -> None:
    jane, joe = customer(fake), customer(fake)
    made = [fake.control.earn(SCHEME, who, 10 * (i + 1), transaction_date=f"2024-05-0{i + 1}T09:00:00Z")
            for i, who in enumerate([jane, joe, jane, jane, joe])]

    def listed(**params: Any) -> tuple[list[str], dict[str, str]]:
        response = fake.api.get("/api/Transaction", params=params)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()], dict(response.headers)

    ids = [t["id"] for t in made]
    assert listed()[0] == ids                                                   # in the order they happened
    assert listed(Filters=f"customerId=={jane}")[0] == [ids[0], ids[2], ids[3]]
    assert listed(Filters=f"customerId=={jane},transactionDate>=2024-05-03T00:00:00Z")[0] == [ids[2], ids[3]]
    assert listed(Filters="pointValue>20", Sorts="-transactionDate")[0] == [ids[4], ids[3], ids[2]]
    page, headers = listed(Sorts="transactionDate", Page=2, PageSize=2)
    assert page == [ids[2], ids[3]] and (headers["x-total-count"], headers["x-total-pages"]) == ("5", "3")
    assert listed(Filters="nosuch==1")[0] == ids                                # Sieve ignores unknown names
    assert fake.api.get("/api/Transaction/00000000-0000-4000-8000-000000000000").status_code == 404


def test_a_transfer_is_a_transaction_on_each_side_and_one_topic_10(fake: Fake) -> None:
    fake.subscribe(2, 10)
    source, target = customer(fake, points=500), customer(fake, points=20)
    moved = fake.control.transfer(SCHEME, source, target, 200)
    assert (moved["source"]["balance"]["pointsValue"], moved["target"]["balance"]["pointsValue"]) == (300, 220)
    sent, received = fake.control.transactions(SCHEME)
    assert [(t["customerId"], t["pointValue"], t["cachedResultantPointValue"], t["isSendPointsAction"])
            for t in (sent, received)] == [(source, -200, 300, True), (target, 200, 220, True)]
    assert sent["targetTransactionId"] == received["id"] and received["sourceTransactionId"] == sent["id"]
    assert sorted(d["topic"] for d in fake.delivered()) == [2, 2, 10]
    (transfer,) = fake.receiver.of(10)
    assert (transfer["sourceCustomerId"]["id"], transfer["targetCustomerId"]["id"]) == (source, target)


# -- coupons -------------------------------------------------------------------------------------------


def test_a_coupon_linked_then_used_sends_topics_6_and_7(fake: Fake) -> None:
    fake.subscribe(6, 7)
    cid = customer(fake)
    cc = fake.control.issue_coupon(SCHEME, cid, name="Free coffee", uses=2)
    assert (cc["customerId"], cc["usesLeft"], cc["isUsed"], cc["coupon"]["name"]) == (cid, 2, False, "Free coffee")
    assert cc["coupon"]["initialNumberOfUses"] == 2 and cc["couponId"] == cc["coupon"]["id"]
    first = fake.control.use_coupon(SCHEME, cc["id"])
    last = fake.control.use_coupon(SCHEME, cc["id"])
    assert [(u["usesLeft"], u["isUsed"]) for u in (first, last)] == [(1, False), (0, True)]
    assert cc["updatedDate"] < first["updatedDate"] < last["updatedDate"]
    with pytest.raises(FakeLoyaleError, match="409"):
        fake.control.use_coupon(SCHEME, cc["id"])
    fake.delivered()
    assert fake.receiver.of(6) == [cc]
    assert sorted((b["usesLeft"], b["isUsed"]) for b in fake.receiver.of(7)) == [(0, True), (1, False)]
    listed = fake.api.get("/api/CustomerCoupon", params={"Filters": f"customerId=={cid},isUsed==true"}).json()
    assert [c["id"] for c in listed] == [cc["id"]]
    assert [c["name"] for c in fake.api.get("/api/Coupon").json()] == ["Free coffee"]
    assert fake.api.get(f"/api/CustomerCoupon/{cc['id']}").json()["usesLeft"] == 0


def test_one_coupon_of_the_scheme_linked_to_two_customers(fake: Fake) -> None:
    coupon = fake.control.define_coupon(SCHEME, "10% off", uses=1, valid_to="2030-01-01T00:00:00Z")
    a, b = customer(fake), customer(fake)
    links = [fake.control.issue_coupon(SCHEME, who, coupon_id=coupon["id"]) for who in (a, b)]
    assert {c["couponId"] for c in links} == {coupon["id"]} and len({c["id"] for c in links}) == 2
    assert links[0]["to"] == "2030-01-01T00:00:00.000000Z"
    assert [c["customerId"] for c in fake.control.customer_coupons(SCHEME, b)] == [b]
    with pytest.raises(FakeLoyaleError, match="404"):
        fake.control.issue_coupon(SCHEME, a, coupon_id="00000000-0000-4000-8000-000000000000")


def test_a_purchase_can_use_a_coupon(fake: Fake) -> None:
    fake.subscribe(2, 7)
    cid = customer(fake)
    cc = fake.control.issue_coupon(SCHEME, cid, name="Free cake")
    tx = fake.control.earn(SCHEME, cid, 40, coupons_used=[cc["id"]])
    assert [c["name"] for c in tx["couponsUsed"]] == ["Free cake"]
    assert fake.control.customer_coupons(SCHEME, cid)[0]["isUsed"] is True
    assert sorted(d["topic"] for d in fake.delivered()) == [2, 7]
    other = customer(fake)
    with pytest.raises(FakeLoyaleError, match="404"):     # not this customer's coupon
        fake.control.earn(SCHEME, other, 5, coupons_used=[cc["id"]])


# -- levels --------------------------------------------------------------------------------------------


def _levels(fake: Fake, cid: str) -> list[str]:
    names = {lv["id"]: lv["name"] for lv in fake.control.schemes()[0]["levels"]}
    return [names[lv["levelId"]] for lv in fake.control.customer(SCHEME, cid)["Levels"]]


def test_with_the_knob_levels_follow_points_and_say_so_on_topic_1(fake: Fake) -> None:
    fake.subscribe(1)
    cid = customer(fake, points=900)
    fake.control.earn(SCHEME, cid, 200)
    assert _levels(fake, cid) == [] and fake.delivered() == []                   # off by default
    fake.control.set_knobs(levels_follow_points=True)
    fake.control.earn(SCHEME, cid, 10)                                           # 1,110 points: Silver (1,000)
    assert _levels(fake, cid) == ["Silver"]
    reached = fake.control.customer(SCHEME, cid)["detailedLevels"][0]["createdDate"]
    fake.control.earn(SCHEME, cid, 5)                                            # still Silver: no change
    assert fake.control.customer(SCHEME, cid)["detailedLevels"][0]["createdDate"] == reached
    fake.control.spend(SCHEME, cid, 200)                                         # 915: Bronze
    assert _levels(fake, cid) == ["Bronze"]
    updates = [d for d in fake.delivered() if d["topic"] == 1]
    assert len(updates) == 2
    assert [[lv["levelId"] for lv in body["Levels"]] for body in fake.receiver.of(1)] == [
        [fake.control.schemes()[0]["levels"][i]["id"]] for i in (1, 0)]


def test_set_levels_keeps_when_a_level_still_held_was_reached(fake: Fake) -> None:
    cid = customer(fake)
    bronze, silver, gold = (lv["id"] for lv in fake.control.schemes()[0]["levels"][:3])
    fake.control.set_levels(SCHEME, cid, [bronze, silver])
    before = {d["levelId"]: d["createdDate"] for d in fake.control.customer(SCHEME, cid)["detailedLevels"]}
    fake.control.set_levels(SCHEME, cid, [silver, gold])
    after = {d["levelId"]: d["createdDate"] for d in fake.control.customer(SCHEME, cid)["detailedLevels"]}
    assert after[silver] == before[silver] and after[gold] > before[silver] and bronze not in after


# -- membership, duplicates, losses --------------------------------------------------------------------


def test_joining_and_leaving_send_topics_0_and_3(fake: Fake) -> None:
    fake.subscribe(0, 3)
    cid = customer(fake)
    fake.control.leave_scheme(SCHEME, cid)
    fake.control.join_scheme(SCHEME, cid)
    fake.delivered()
    assert [b["id"] for b in fake.receiver.of(3)] == [cid] and [b["id"] for b in fake.receiver.of(0)] == [cid]
    assert fake.receiver.of(3)[0]["updatedDate"] < fake.receiver.of(0)[0]["updatedDate"]


def test_every_webhook_twice(fake: Fake) -> None:
    fake.subscribe(2, 6)
    fake.control.set_knobs(webhook_duplicate_rate=1.0)
    cid = customer(fake)
    tx = fake.control.earn(SCHEME, cid, 10)
    cc = fake.control.issue_coupon(SCHEME, cid, name="Gift")
    deliveries = fake.delivered()
    assert sorted((d["topic"], d["duplicate"]) for d in deliveries) == [(2, False), (2, True), (6, False), (6, True)]
    assert fake.receiver.of(2) == [tx, tx] and fake.receiver.of(6) == [cc, cc]


def test_a_lost_webhook_is_never_delivered_and_only_the_control_api_knows(fake: Fake) -> None:
    fake.subscribe(2, 7)
    cid = customer(fake)
    fake.control.lose_next_webhook(2)
    lost = fake.control.earn(SCHEME, cid, 10)
    kept = fake.control.earn(SCHEME, cid, 20)
    assert [d["topic"] for d in fake.delivered()] == [2]
    assert [b["id"] for b in fake.receiver.of(2)] == [kept["id"]]
    (gone,) = fake.control.lost_webhooks()
    assert (gone["topic"], gone["customer_id"], gone["data"]) == (2, cid, f"Transaction Id: {lost['id']}")
    assert fake.api.get("/api/Webhook/Failed").json() == []                   # not a failure Loyale knows of
    assert [t["id"] for t in fake.control.transactions(SCHEME, cid)] == [lost["id"], kept["id"]]   # catch-up
    fake.control.set_knobs(webhook_loss_rate=1.0)
    fake.control.earn(SCHEME, cid, 1)
    assert len(fake.control.lost_webhooks()) == 2 and len(fake.receiver.of(2)) == 1


def test_bad_control_calls_are_refused(fake: Fake) -> None:
    cid = customer(fake)
    for call in (lambda: fake.control.earn(SCHEME, cid, "ten"),                       # type: ignore[arg-type]
                 lambda: fake.control.transaction(SCHEME, cid, 1, kind=9),
                 lambda: fake.control.earn(SCHEME, cid, 1, transaction_date="yesterday"),
                 lambda: fake.control.issue_coupon(SCHEME, cid, name=""),
                 lambda: fake.control.set_knobs(webhook_lose_next=[99])):
        with pytest.raises(FakeLoyaleError, match="400"):
            call()
    assert fake.control.transactions(SCHEME) == []
