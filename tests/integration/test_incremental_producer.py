"""The incremental producer against the fake Loyale over HTTP and a real Redis broker: watermark,
overlap deduplication, the guard against an ignored filter, and a pass that fails part-way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis
from pydantic import SecretStr

from producers.incremental import FilterIgnored, run_incremental
from producers.loyale import LoyaleClient
from producers.watermarks import Watermarks
from worker.app import create_app
from worker.errors import RetryableError
from worker.messages import QUEUE_INCREMENTAL
from worker.settings import Settings
from worker.store import Store


class FilterDroppingLoyale(LoyaleClient):
    """Loyale as Sieve behaves with a filter it does not know: the filter is silently ignored."""

    def page(self, number, **kw):
        kw.pop("filters", None)
        return super().page(number, **kw)


@pytest.fixture
def world(loyale, redis_url):
    scheme = loyale.create_scheme(customers=0)
    http = httpx.Client(timeout=10)
    client_redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def client(cls=LoyaleClient, **kw) -> LoyaleClient:
        return cls(http, tenant="t", base_url=loyale.base_url, scheme_id=scheme["scheme_id"],
                   admin_email=scheme["admin_email"], admin_password=SecretStr(scheme["admin_password"]), **kw)

    app = create_app(Settings(redis_url=redis_url))
    yield scheme["scheme_id"], client, Store(client_redis), Watermarks(client_redis), app, client_redis
    app.close()
    http.close()
    client_redis.close()


class FailingAfterFirstPage(LoyaleClient):
    """Loyale answering the first page, then failing longer than the client retries."""

    answered = 0

    def page(self, number, **kw):
        if self.answered == 1:
            raise RetryableError("Loyale answered 500 five times")
        self.answered += 1
        return super().page(number, **kw)


def customers(n: int, start: int = 0) -> list[dict]:
    return [{"email": f"c{i}@example.com", "firstName": f"C{i}", "marketingSub": True, "deleted": False,
             "onHold": False} for i in range(start, start + n)]


def test_overlapping_passes_enqueue_each_change_once_and_the_watermark_never_passes_the_start(loyale, world):
    scheme, client, store, watermarks, app, r = world
    loyale.add_customers(scheme, customers(30), emit=False)
    first_start = datetime.now(UTC)
    first = run_incremental(app=app, store=store, watermarks=watermarks, loyale=client(), tenant="t", overlap_s=60,
                            now=first_start)
    assert (first.read, first.enqueued) == (30, 30)
    assert watermarks.watermark("t") == first_start
    assert r.llen(QUEUE_INCREMENTAL) == 30

    ids = [c["id"] for c in loyale.customers(scheme)]
    loyale.update_customer(scheme, ids[0], firstName="Changed")
    loyale.add_customers(scheme, customers(2, start=100), emit=False)
    second = run_incremental(app=app, store=store, watermarks=watermarks, loyale=client(), tenant="t", overlap_s=60)
    # The overlap reads the first 30 again; only the 3 new changes are enqueued.
    assert second.read == 32 and second.enqueued == 3
    assert r.llen(QUEUE_INCREMENTAL) == 33
    assert store.run(second.run_id).expected == 3


def test_a_loyale_that_ignores_the_filter_stops_the_pass_instead_of_resyncing_everyone(loyale, world):
    scheme, client, store, watermarks, app, r = world
    loyale.add_customers(scheme, customers(5), emit=False)
    watermarks.set_watermark("t", datetime.now(UTC) + timedelta(hours=1))   # every customer is older
    with pytest.raises(FilterIgnored, match="ignored the updatedDate filter"):
        run_incremental(app=app, store=store, watermarks=watermarks, loyale=client(FilterDroppingLoyale), tenant="t",
                        overlap_s=1)
    assert r.llen(QUEUE_INCREMENTAL) == 0
    assert store.runs("t")[0].state == "failed"


def test_a_pass_that_fails_part_way_leaves_the_watermark_and_the_next_pass_catches_up(loyale, world):
    scheme, client, store, watermarks, app, r = world
    loyale.add_customers(scheme, customers(150), emit=False)    # two pages of 100
    before = datetime.now(UTC) - timedelta(minutes=5)
    watermarks.set_watermark("t", before)
    with pytest.raises(RetryableError):
        run_incremental(app=app, store=store, watermarks=watermarks, loyale=client(FailingAfterFirstPage), tenant="t",
                        overlap_s=1)
    assert watermarks.watermark("t") == before
    enqueued_first = r.llen(QUEUE_INCREMENTAL)
    assert enqueued_first == 100
    again = run_incremental(app=app, store=store, watermarks=watermarks, loyale=client(), tenant="t", overlap_s=1)
    assert again.read == 150 and enqueued_first + again.enqueued == 150
    assert r.llen(QUEUE_INCREMENTAL) == 150
    assert watermarks.watermark("t") > before
