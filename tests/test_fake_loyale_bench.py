"""Paging 100,000 customers of the fake Loyale 100 at a time stays fast: the unfiltered listing is a list
slice and a filtered/sorted listing is computed once per (Filters, Sorts) and cached until a mutation."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from fakes.loyale_control import FakeLoyaleControl
from fakes.serving import ServerProcess

SCHEME = "0b3e8a55-6a4f-4a53-9f0e-3c1e2d4b5a69"
PASSWORD = "bench-pass"
N = 100_000


@pytest.fixture(scope="module")
def big() -> Iterator[tuple[httpx.Client, FakeLoyaleControl]]:
    started = time.perf_counter()
    proc = ServerProcess(module="fakes.loyale", args=["--customers", str(N), "--scheme-id", SCHEME,
                                                      "--admin-password", PASSWORD, "--seed", "11"]).start(60)
    print(f"\nfake loyale with {N} customers ready in {time.perf_counter() - started:.2f}s")
    client = httpx.Client(base_url=proc.url, timeout=30)
    token = client.post("/api/AdminToken", json={"email": "admin@loyale.test", "password": PASSWORD},
                        headers={"Scheme": SCHEME}).json()["token"]
    client.headers.update({"Authorization": f"Bearer {token}", "X-Scheme": SCHEME})
    control = FakeLoyaleControl(proc.url)
    yield client, control
    control.close()
    client.close()
    proc.stop()


def walk(client: httpx.Client, **params: str) -> tuple[list[tuple[str, str]], int, float]:
    """(id, updatedDate) of every row, the total, and the seconds it took."""
    started = time.perf_counter()
    rows: list[tuple[str, str]] = []
    page, total_pages = 1, None
    while total_pages is None or page <= total_pages:
        response = client.get("/api/Customer", params={**params, "Page": page, "PageSize": 100})
        assert response.status_code == 200
        total_pages = int(response.headers["X-Total-Pages"])
        total = int(response.headers["X-Total-Count"])
        rows.extend((r["id"], r["updatedDate"]) for r in response.json())
        page += 1
    return rows, total, time.perf_counter() - started


def test_paging_100k_unfiltered(big: tuple[httpx.Client, FakeLoyaleControl]) -> None:
    client, _ = big
    rows, total, elapsed = walk(client)
    print(f"unfiltered walk of {total} customers in {len(rows) // 100 + 1} pages: {elapsed:.2f}s")
    assert len(rows) == total and len({r[0] for r in rows}) == total
    assert N * 0.97 < total < N  # about 1% are deleted and not listed
    assert elapsed < 45


def test_paging_100k_filtered_and_sorted(big: tuple[httpx.Client, FakeLoyaleControl]) -> None:
    client, control = big
    watermark = "2019-01-01T00:00:00Z"
    rows, total, elapsed = walk(client, Filters=f"updatedDate>={watermark}", Sorts="updatedDate,id")
    print(f"filtered+sorted walk of {total} customers: {elapsed:.2f}s")
    keys = [(stamp, cid) for cid, stamp in rows]
    assert len(rows) == total and keys == sorted(keys) and len(set(keys)) == total
    assert elapsed < 45  # recomputing filter+sort for each of the ~1000 pages would take minutes

    # a mutation invalidates the cache: the changed customer moves to the end of the same query
    changed = control.update_customer(SCHEME, rows[0][0], firstName="Moved")
    tail = client.get("/api/Customer", params={"Filters": f"updatedDate>={watermark}", "Sorts": "updatedDate,id",
                                               "Page": (total + 99) // 100, "PageSize": 100}).json()
    assert tail[-1]["id"] == changed["id"] and tail[-1]["firstName"] == "Moved"
