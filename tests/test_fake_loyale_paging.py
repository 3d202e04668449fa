"""Paging a large scheme of the fake Loyale 100 at a time does the work once, not once per page: the
unfiltered listing is a list slice, and a filtered/sorted listing is computed once per (Filters, Sorts)
and cached until a mutation. In process (Starlette's TestClient), so the work can be counted; the
speed over 100,000 customers is a figure `python -m bench.fakes` prints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from fakes.loyale import FakeLoyaleConfig, SchemeConfig, create_app, state

SCHEME = "0b3e8a55-6a4f-4a53-9f0e-3c1e2d4b5a69"
PASSWORD = "bench-pass"
N = 3_000
WATERMARK = "2019-01-01T00:00:00Z"


class Work:
    """How often the fake built the unfiltered listing (customers looked at) and sorted a query."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listed = 0
        self.sorts = 0
        listed, sort_records = state.Scheme.listed, state.sort_records

        def count_listed(scheme: state.Scheme, *args: Any) -> bool:
            self.listed += 1
            return listed(scheme, *args)

        def count_sorts(*args: Any, **kw: Any) -> Any:
            self.sorts += 1
            return sort_records(*args, **kw)

        monkeypatch.setattr(state.Scheme, "listed", count_listed)
        monkeypatch.setattr(state, "sort_records", count_sorts)


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Work:
    return Work(monkeypatch)


@pytest.fixture
def client() -> Iterator[TestClient]:
    config = FakeLoyaleConfig(schemes=[SchemeConfig(scheme_id=SCHEME, admin_password=PASSWORD, customers=N, seed=11)])
    with TestClient(create_app(config), base_url="http://fake-loyale") as http:
        token = http.post("/api/AdminToken", json={"email": "admin@loyale.test", "password": PASSWORD},
                          headers={"Scheme": SCHEME}).json()["token"]
        http.headers.update({"Authorization": f"Bearer {token}", "X-Scheme": SCHEME})
        yield http


def walk(client: TestClient, **params: str) -> tuple[list[tuple[str, str]], int, int]:
    """(id, updatedDate) of every row, the total, and the number of pages."""
    rows: list[tuple[str, str]] = []
    page, total_pages, total = 1, 1, 0
    while page <= total_pages:
        response = client.get("/api/Customer", params={**params, "Page": page, "PageSize": 100})
        assert response.status_code == 200
        total_pages = int(response.headers["X-Total-Pages"])
        total = int(response.headers["X-Total-Count"])
        rows.extend((r["id"], r["updatedDate"]) for r in response.json())
        page += 1
    return rows, total, total_pages


def test_paging_unfiltered_builds_the_listing_once(client: TestClient, work: Work) -> None:
    rows, total, pages = walk(client)
    assert len(rows) == total and len({r[0] for r in rows}) == total
    assert N * 0.97 < total < N  # about 1% are deleted and not listed
    assert pages >= 29 and work.listed == N   # every customer looked at once for all the pages, not per page


def test_paging_filtered_and_sorted_sorts_once_until_a_mutation(client: TestClient, work: Work) -> None:
    rows, total, pages = walk(client, Filters=f"updatedDate>={WATERMARK}", Sorts="updatedDate,id")
    keys = [(stamp, cid) for cid, stamp in rows]
    assert len(rows) == total and keys == sorted(keys) and len(set(keys)) == total
    assert pages >= 29 and work.sorts == 1  # one sort for the whole walk, not one per page

    # a mutation invalidates the cache: the changed customer moves to the end of the same query
    changed = client.patch(f"/_fake/schemes/{SCHEME}/customers/{rows[0][0]}",
                           json={"fields": {"firstName": "Moved"}, "updated_by": None})
    assert changed.status_code == 200, changed.text
    tail = client.get("/api/Customer", params={"Filters": f"updatedDate>={WATERMARK}", "Sorts": "updatedDate,id",
                                               "Page": pages, "PageSize": 100}).json()
    assert tail[-1]["id"] == rows[0][0] and tail[-1]["firstName"] == "Moved"
    assert work.sorts == 2
