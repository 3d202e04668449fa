"""The events' catch-up pass (`producers/event_catchup.py`) against the fake Loyale over HTTP and a real
Redis broker: it reads the transactions and customer coupons since its watermark, hints each customer
with the events not yet settled, reads a list again while it moves, and stops when Loyale ignores its
filter; a list route Loyale does not have is skipped."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
from pydantic import SecretStr

from producers.event_catchup import CUSTOMER_COUPONS, TRANSACTIONS, read_since, run_event_catch_up
from producers.incremental import FilterIgnored
from producers.loyale import LoyaleClient, Page
from producers.watermarks import Watermarks
from worker import events as ev
from worker.app import create_app
from worker.messages import QUEUE_INCREMENTAL, TASK_CUSTOMER_HINT
from worker.settings import Settings
from worker.store import EventOutcome, Store


@pytest.fixture
def world(loyale, redis_url):
    scheme = loyale.create_scheme(customers=0)
    http = httpx.Client(timeout=10)
    client_redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def client(cls: type[LoyaleClient] = LoyaleClient) -> LoyaleClient:
        return cls(http, tenant="t", base_url=loyale.base_url, scheme_id=scheme["scheme_id"],
                   admin_email=scheme["admin_email"], admin_password=SecretStr(scheme["admin_password"]))

    app = create_app(Settings(redis_url=redis_url))
    yield scheme["scheme_id"], client, Store(client_redis), Watermarks(client_redis), app, client_redis
    app.close()
    http.close()
    client_redis.close()


def hints(r: redis.Redis) -> dict[str, list[str]]:
    """Customer id -> the metrics of the events each hint on the incremental queue carries."""
    found: dict[str, list[str]] = {}
    for raw in r.lrange(QUEUE_INCREMENTAL, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == TASK_CUSTOMER_HINT
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        found[kwargs["customer_id"]] = sorted(e["metric"] for e in kwargs["events"])
    return found


def test_a_pass_hints_each_customer_with_its_events_not_yet_settled_and_moves_the_watermark(loyale, world):
    scheme, client, store, watermarks, app, r = world
    ann, ben = loyale.add_customers(scheme, [{"email": "ann@example.com"}, {"email": "ben@example.com"}],
                                    emit=False)
    settled = loyale.earn(scheme, ann, 50)
    loyale.earn(scheme, ann, 70)
    loyale.spend(scheme, ann, 20)
    coupon = loyale.issue_coupon(scheme, ben, name="Welcome", uses=2)
    loyale.use_coupon(scheme, coupon["id"])
    # A webhook brought the first transaction already: its event has an outcome.
    store.record_event(run_id="r", tenant="t", customer_id=ann, metric=ev.POINTS_EARNED,
                       unique_id=f"loyale-transaction-{settled['id']}", time_iso="", outcome=EventOutcome.SENT)
    started = datetime.now(UTC)

    done = run_event_catch_up(app=app, store=store, watermarks=watermarks, loyale=client(), tenant="t",
                              overlap_s=60, now=started)

    assert (done.read, done.events, done.customers) == (4, 4, 2)
    assert hints(r) == {ann: [ev.POINTS_EARNED, ev.POINTS_SPENT], ben: [ev.COUPON_ISSUED, ev.COUPON_USED]}
    assert watermarks.event_watermark("t") == started
    run = store.run(done.run_id or "")
    assert run is not None and (run.kind, run.expected) == ("events", 2)
    # The next pass reads the same rows again (the overlap): events still without an outcome are offered
    # again (their sync may have been lost), those settled meanwhile are not.
    settle_all = [(ben, ev.COUPON_ISSUED, f"loyale-coupon-{coupon['id']}-issued")]
    for customer_id, metric, unique_id in settle_all:
        store.record_event(run_id="r", tenant="t", customer_id=customer_id, metric=metric, unique_id=unique_id,
                           time_iso="", outcome=EventOutcome.SENT)
    r.delete(QUEUE_INCREMENTAL)
    again = run_event_catch_up(app=app, store=store, watermarks=watermarks, loyale=client(), tenant="t",
                               overlap_s=60, now=started + timedelta(seconds=1))
    assert again.events == 3 and hints(r) == {ann: [ev.POINTS_EARNED, ev.POINTS_SPENT], ben: [ev.COUPON_USED]}
    assert watermarks.event_watermark("t") == started + timedelta(seconds=1)


class MovingCoupons(LoyaleClient):
    """Loyale while a coupon is used during the pass: after the first page of customer coupons, the
    first coupon read moves to the end of the `updatedDate` order and every row after it up by one."""

    def __init__(self, *args, use, **kw):
        super().__init__(*args, **kw)
        self.use, self.used = use, False

    def list_page(self, route: str, number: int, **kw) -> Page:
        page = super().list_page(route, number, **kw)
        if route == CUSTOMER_COUPONS and number == 1 and not self.used:
            self.used = True
            self.use(page.customers[0]["id"])
        return page


def test_a_coupon_used_while_the_list_is_read_skips_no_one(loyale, world):
    scheme, client, store, watermarks, app, r = world
    [cid] = loyale.add_customers(scheme, [{"email": "ann@example.com"}], emit=False)
    issued = [loyale.issue_coupon(scheme, cid, name=f"C{i}", uses=3)["id"] for i in range(7)]
    since = datetime.now(UTC) - timedelta(hours=1)
    moving = client(lambda *a, **k: MovingCoupons(*a, use=lambda cc: loyale.use_coupon(scheme, cc), **k))
    rows = list(read_since(moving, CUSTOMER_COUPONS, "updatedDate", since, page_size=3))
    assert {row["id"] for row in rows} == set(issued)          # every coupon, though one moved mid-read
    assert len(rows) == 8                                       # the moved one twice: before and after its use


class FilterDroppingLoyale(LoyaleClient):
    """Loyale as Sieve behaves with a filter it does not know: the filter is silently ignored."""

    def list_page(self, route: str, number: int, **kw) -> Page:
        kw.pop("filters", None)
        return super().list_page(route, number, **kw)


def test_an_ignored_filter_stops_the_pass_and_a_missing_route_is_skipped(loyale, world):
    scheme, client, store, watermarks, app, r = world
    [cid] = loyale.add_customers(scheme, [{"email": "ann@example.com"}], emit=False)
    loyale.set_clock_offset(-3 * 86400)      # a transaction made three days ago, before the watermark
    loyale.earn(scheme, cid, 10)
    loyale.set_clock_offset(0)
    loyale.earn(scheme, cid, 10)
    with pytest.raises(FilterIgnored, match="ignored the filter"):
        run_event_catch_up(app=app, store=store, watermarks=watermarks, loyale=client(FilterDroppingLoyale),
                           tenant="t", overlap_s=60)
    assert watermarks.event_watermark("t") is None and r.llen(QUEUE_INCREMENTAL) == 0

    loyale.set_knobs(missing_routes=[TRANSACTIONS])
    done = run_event_catch_up(app=app, store=store, watermarks=watermarks, loyale=client(), tenant="t",
                              overlap_s=60)
    assert (done.read, done.events) == (0, 0) and watermarks.event_watermark("t") is not None
