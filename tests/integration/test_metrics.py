"""`loyale-sync metrics` as a real process, scraped over HTTP while a real worker syncs a backfill and an
incremental pass: the numbers it serves are the ones the runs recorded in Redis."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes.processes import ChildProcess, cli_command
from fakes.serving import free_port
from tests.harness import REPO, WorkerProcess, sync_env, wait_for, write_tenants_file
from tests.integration.scenario import build_scenario, private_key
from worker.metrics import unsynced_since
from worker.store import RunInfo

CUSTOMERS = 40
OVERLAP_S = 120.0  # SYNC_INCREMENTAL_OVERLAP_S's default: a first pass looks back twice this far


def cli(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s)


def run_id_from(output: str, kind: str) -> str:
    return next(word.rstrip(":") for word in output.split() if word.startswith(f"{kind}-"))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample served, by name and sorted labels."""
    text = httpx.get(url, timeout=10).raise_for_status().text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def samples(scraped: dict, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of `name` whose labels include `labels`."""
    return {key: value for (sample, key), value in scraped.items()
            if sample == name and set(labels.items()) <= set(key)}


@pytest.fixture
def exporter() -> Iterator[Callable[[dict[str, str]], str]]:
    """`exporter(env)` starts `loyale-sync metrics` with `env` on a free port and returns its URL."""
    started: list[ChildProcess] = []

    def start(env: dict[str, str]) -> str:
        port = free_port()
        process = ChildProcess(env, cli_command("metrics", "--host", "127.0.0.1", "--port", str(port)),
                               name="metrics").start()
        started.append(process)
        url = f"http://127.0.0.1:{port}/metrics"

        def ready() -> bool:
            process.check_alive()
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 30, what="the metrics exporter")
        return url

    yield start
    for process in started:
        process.stop()


def test_metrics_show_queue_depths_outcomes_requests_and_the_oldest_unsynced_change(loyale, klaviyo, redis_url,
                                                                                    store, exporter):
    """Given a backfill and an incremental pass enqueued while no worker runs, the exporter shows them waiting
    (queue depths) and the pass's changes as unsynced for at least its look-back. Once a worker has synced
    both runs, it shows every customer's outcome and every Klaviyo request of both runs, per tenant, empty
    queues, and an oldest unsynced change no older than the pass."""
    scenario = build_scenario(loyale, klaviyo, "shop", customers=CUSTOMERS, merge_customers=True, seed=5)
    env = sync_env(redis_url, write_tenants_file({"shop": scenario.tenant_config()}))
    url = exporter(env)
    before = scrape(url)
    assert before[("loyale_sync_redis_up", ())] == 1
    assert samples(before, "loyale_sync_customers_total") == {}
    assert samples(before, "loyale_sync_oldest_unsynced_change_seconds") == {}  # no pass yet
    assert before[("loyale_sync_tenant_paused", (("tenant", "shop"),))] == 0

    backfill = cli(env, "backfill", "--tenant", "shop")
    assert backfill.returncode == 0, backfill.stderr
    backfill_run = run_id_from(backfill.stdout, "backfill")
    changed = [c["id"] for c in loyale.customers(scenario.scheme_id)[:3]]
    for customer_id in changed:
        loyale.update_customer(scenario.scheme_id, customer_id, firstName="Changed")
    pass_started = time.time()
    incremental = cli(env, "incremental", "--tenant", "shop")
    assert incremental.returncode == 0, incremental.stderr
    pass_run = run_id_from(incremental.stdout, "incremental")
    enqueued = store.enqueued_count(pass_run)
    assert enqueued >= len(changed)

    waiting = scrape(url)
    assert waiting[("loyale_sync_queue_depth", (("queue", "sync.backfill"),))] == CUSTOMERS
    assert waiting[("loyale_sync_queue_depth", (("queue", "sync.incremental"),))] == enqueued
    assert waiting[("loyale_sync_queue_depth", (("queue", "sync.producers"),))] == 0
    assert waiting[("loyale_sync_oldest_unsynced_change_seconds", (("tenant", "shop"),))] >= 2 * OVERLAP_S

    worker = WorkerProcess(env, concurrency=2, queues="sync.backfill,sync.incremental", name="both",
                           prefetch_multiplier=500).start().wait_ready()
    try:
        # Done, and every message acknowledged: a worker stopped between a batch's outcomes and its acks
        # puts the batch's messages back on the queue (harmless duplicates, but not an empty queue).
        wait_for(lambda: all(store.run(r).done for r in (backfill_run, pass_run)) and not store.redis.hlen("unacked"),
                 60, what="both runs to finish and their messages to be acknowledged")
    finally:
        worker.stop()

    done = scrape(url)
    runs = [store.run(backfill_run), store.run(pass_run)]
    outcomes = sum((Counter(info.counts) for info in runs), Counter())
    assert sum(outcomes.values()) == CUSTOMERS + enqueued
    assert samples(done, "loyale_sync_customers_total") == {
        (("outcome", outcome), ("tenant", "shop")): count for outcome, count in outcomes.items()}

    requests = sum((Counter(store.requests(r)) for r in (backfill_run, pass_run)), Counter())
    served = samples(done, "loyale_sync_klaviyo_requests_total", tenant="shop")
    assert served == {(("endpoint", key.rsplit(" ", 1)[0]), ("status", key.rsplit(" ", 1)[1]), ("tenant", "shop")):
                      count for key, count in requests.items()}
    assert any(dict(labels)["endpoint"] == "POST /api/profile-bulk-import-jobs" for labels in served)
    assert samples(done, "loyale_sync_klaviyo_throttled_total") == {}  # no 429 in this run

    assert samples(done, "loyale_sync_queue_depth") == {
        (("queue", q),): 0 for q in ("sync.backfill", "sync.incremental", "sync.producers")}
    lag = done[("loyale_sync_oldest_unsynced_change_seconds", (("tenant", "shop"),))]
    assert lag <= time.time() - pass_started + 1

    store.pause_tenant("shop", "Klaviyo rejected the private API key")
    assert scrape(url)[("loyale_sync_tenant_paused", (("tenant", "shop"),))] == 1


def test_an_unreachable_redis_is_a_gauge_not_a_failed_scrape(exporter):
    """Given an exporter whose Redis is down, a scrape still answers 200, with loyale_sync_redis_up 0."""
    tenants = write_tenants_file({"shop": {"loyale_scheme_id": "s", "loyale_admin_email": "a@b.test",
                                           "loyale_admin_password": "x", "klaviyo_private_key": private_key()}})
    url = exporter(sync_env(f"redis://127.0.0.1:{free_port()}/0", tenants))
    assert scrape(url) == {("loyale_sync_redis_up", ()): 0}


def run(kind: str, state: str, started_at: float, since: str | None = None) -> RunInfo:
    return RunInfo(id=f"{kind}-{started_at}", tenant="shop", kind=kind, state=state, started_at=started_at,
                   finished_at=None, expected=None, completed=0, meta={"since": since} if since else {})


def test_unsynced_since_follows_the_chain_of_passes():
    """The oldest unsynced change is measured from the watermark when every pass is done, else from the start
    of the pass before the oldest unfinished one; failed passes and backfills do not count."""
    watermark = datetime(2026, 11, 28, 12, 3, tzinfo=UTC)
    t = watermark.timestamp()
    assert unsynced_since(None, []) is None
    assert unsynced_since(watermark, [run("incremental", "done", t), run("backfill", "running", t - 500)]) == t
    newest_first = [run("incremental", "running", t), run("incremental", "done", t - 60),
                    run("incremental", "running", t - 120), run("incremental", "done", t - 180)]
    assert unsynced_since(watermark, newest_first) == t - 180
    assert unsynced_since(watermark, [run("incremental", "failed", t - 60), run("incremental", "done", t - 120)]) == t
    assert unsynced_since(watermark, [run("incremental", "running", t, since="2026-11-28T11:59:00+00:00")]) == t - 240
