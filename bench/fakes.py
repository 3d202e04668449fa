"""`python -m bench.fakes`: how fast the fakes themselves are, as figures (no pass or fail).

The tests check that the fakes do their work once (tests/test_fake_loyale_paging.py counts sorts and
listings, tests/test_fake_klaviyo_jobs.py counts the profiles a lookup checks); these are the speeds
that work gives on this machine: generating 100,000 Loyale customers, paging them 100 at a time
unfiltered and filtered+sorted, a 10,000-row Klaviyo bulk import and 20 lookups of 100 emails each.
The fakes run in this process (Starlette's TestClient), so no port or child process is measured.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

with warnings.catch_warnings():   # Starlette 1.x would rather its TestClient ran on `httpx2`
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from fakes.klaviyo.app import create_app as klaviyo_app
from fakes.klaviyo.config import AccountSpec, FakeKlaviyoConfig, KeySpec
from fakes.klaviyo_control import REVISION
from fakes.loyale import FakeLoyaleConfig, SchemeConfig
from fakes.loyale import create_app as loyale_app
from fakes.loyale_data import generate_customers, generate_levels

SCHEME = "0b3e8a55-6a4f-4a53-9f0e-3c1e2d4b5a69"
PASSWORD = "bench-pass"
KEY = "pk_" + "feedface" * 4 + "01"


def seconds_of(work: Any) -> float:
    started = time.perf_counter()
    work()
    return round(time.perf_counter() - started, 2)


def walk(client: TestClient, **params: str) -> int:
    page, pages = 1, 1
    while page <= pages:
        response = client.get("/api/Customer", params={**params, "Page": page, "PageSize": 100})
        response.raise_for_status()
        pages = int(response.headers["X-Total-Pages"])
        page += 1
    return pages


def loyale_figures(customers: int) -> dict[str, float]:
    figures = {"generate_s": seconds_of(lambda: generate_customers(1, customers, generate_levels(7, SCHEME),
                                                                   scheme_id=SCHEME))}
    config = FakeLoyaleConfig(schemes=[SchemeConfig(scheme_id=SCHEME, admin_password=PASSWORD,
                                                    customers=customers, seed=11)])
    with TestClient(loyale_app(config), base_url="http://fake-loyale") as client:
        token = client.post("/api/AdminToken", json={"email": "admin@loyale.test", "password": PASSWORD},
                            headers={"Scheme": SCHEME}).json()["token"]
        client.headers.update({"Authorization": f"Bearer {token}", "X-Scheme": SCHEME})
        figures["page_unfiltered_s"] = seconds_of(lambda: walk(client))
        figures["page_filtered_sorted_s"] = seconds_of(
            lambda: walk(client, Filters="updatedDate>=2019-01-01T00:00:00Z", Sorts="updatedDate,id"))
    return figures


def klaviyo_figures(rows: int) -> dict[str, float]:
    app = klaviyo_app(FakeKlaviyoConfig(accounts=[AccountSpec("BenCh1", [KeySpec(KEY, None)])]))
    headers = {"Authorization": f"Klaviyo-API-Key {KEY}", "revision": REVISION}
    with TestClient(app, base_url="http://fake-klaviyo", headers=headers) as api:
        body = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": {"email": f"user{i}@x.com", "external_id": f"L-{i}"}}
            for i in range(rows)]}}}}

        def import_all() -> None:
            job_id = api.post("/api/profile-bulk-import-jobs", json=body).json()["data"]["id"]
            while api.get(f"/api/profile-bulk-import-jobs/{job_id}").json()["data"]["attributes"]["status"] \
                    != "complete":
                pass

        emails = ",".join(f'"user{i}@x.com"' for i in range(0, rows, max(1, rows // 100)))
        figures = {"bulk_import_s": seconds_of(import_all)}
        figures["lookups_20x100_s"] = seconds_of(lambda: [
            api.get("/api/profiles", params={"filter": f"any(email,[{emails}])", "page[size]": "100"})
            for _ in range(20)])
    return figures


def main() -> None:
    print(json.dumps({"fake_loyale_100k": loyale_figures(100_000), "fake_klaviyo_10k": klaviyo_figures(10_000)}))


if __name__ == "__main__":
    main()
