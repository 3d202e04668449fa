"""`python -m bench`: throughput, quota use and memory of a backfill, measured end to end.

Each scenario starts a private Redis, the fake Loyale and the fake Klaviyo (real HTTP on loopback)
and real Celery worker processes, runs `loyale-sync backfill`, and prints a table plus one JSON line
per scenario. The fake Klaviyo is in its realistic mode at Klaviyo's own orders of magnitude (time
scale 1: bulk jobs take 30 s + 10 s per 1,000 rows, lists lag writes by 5 s, suppressions by 60 s)
unless `--kind` (the kind fake: jobs end on the next GET) or `--time-scale` says otherwise. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import psutil
import redis

from bench.ceiling import run_ceiling
from bench.producer import produce_in_child
from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.loyale_control import FakeLoyaleControl
from fakes.processes import (
    REPO,
    RabbitServer,
    RedisServer,
    WorkerProcess,
    procfile_backfill_worker,
    rabbitmq_server_path,
    sync_env,
    write_tenants_file,
)
from fakes.serving import ServerProcess
from worker import keys
from worker.broker import RedisBroker
from worker.messages import QUEUE_BACKFILL
from worker.ratelimit import endpoint_limits, load_spec_limits
from worker.settings import DEFAULT_SPEC_PATH, Settings, TenantConfig
from worker.store import RunInfo, Store

LOOKUPS = "GET /api/profiles"


@dataclass
class Result:
    scenario: str
    customers: int
    workers: int
    seconds: float
    klaviyo_requests: int
    requests_per_customer: float
    throttled_429: int
    allowed_requests_per_min: float
    achieved_requests_per_min: float
    customers_per_second: float
    peak_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        data = asdict(self)
        data.update(data.pop("extra"))
        return json.dumps(data)


class RssSampler:
    """The peak resident memory of processes (and their children), until stopped.

    Each process's own peak comes from the kernel (`VmHWM`), so a sample a second misses no peak of a
    process alive at the sample; the process tree is read once per sample. (Reading every process's
    tree five times a second cost this bench a quarter of a core, taken from the workers it measures.)
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.pids: dict[str, int] = {}
        self.peak_mb: dict[str, float] = {}
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        """Watch `pid` from now: its kernel peak is reset first (Linux's clear_refs 5), so a process
        watched for one phase (the bench's own, running the ceiling) reports that phase's peak."""
        with suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        self.pids[name] = pid

    @staticmethod
    def _peak_mb(pid: int) -> float:
        with suppress(OSError, ValueError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        with suppress(psutil.Error):   # not Linux: the current size
            return float(psutil.Process(pid).memory_info().rss) / 1_048_576
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            children: dict[int, list[int]] = {}
            for proc in psutil.process_iter(["ppid"]):
                children.setdefault(proc.info["ppid"], []).append(proc.pid)
            for name, pid in list(self.pids.items()):
                tree = [pid]
                for member in tree:
                    tree += children.get(member, [])
                for member in tree:
                    self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), self._peak_mb(member))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Stack:
    redis_server: RedisServer
    loyale: FakeLoyaleControl
    klaviyo: FakeKlaviyoControl
    servers: list[ServerProcess]
    #: Celery's broker: "redis" (the state Redis itself) or "rabbitmq" (a private node beside it).
    broker: str = "redis"
    rabbitmq: RabbitServer | None = None

    @property
    def broker_url(self) -> str:
        return self.rabbitmq.url if self.rabbitmq is not None else self.redis_server.url


#: The fake Klaviyo of every scenario: None = kind, else the realistic mode at this time scale.
TIME_SCALE: float | None = 1.0


def fake_klaviyo_label(time_scale: float | None) -> str:
    return "kind" if time_scale is None else f"realistic x{time_scale:g}"


@contextmanager
def stack(time_scale: float | None = None, broker: str = "redis") -> Iterator[Stack]:
    """Redis, both fakes and, with `broker="rabbitmq"`, a private RabbitMQ node as Celery's broker;
    `time_scale` (default: `TIME_SCALE`) as for `--time-scale`."""
    time_scale = TIME_SCALE if time_scale is None else time_scale
    realism = [] if time_scale is None else ["--realistic", "--time-scale", str(time_scale)]
    redis_server = RedisServer().start()
    rabbitmq = RabbitServer().start() if broker == "rabbitmq" else None
    loyale_server = ServerProcess("fakes.loyale", quiet=True).start()
    klaviyo_server = ServerProcess("fakes.klaviyo", args=realism, quiet=True).start(timeout_s=60)
    try:
        yield Stack(redis_server, FakeLoyaleControl(loyale_server.url, timeout_s=300),
                    FakeKlaviyoControl(klaviyo_server.url, timeout_s=300), [loyale_server, klaviyo_server],
                    broker=broker, rabbitmq=rabbitmq)
    finally:
        for server in (loyale_server, klaviyo_server):
            server.stop()
        if rabbitmq is not None:
            rabbitmq.cleanup()
        redis_server.cleanup()


def brand(s: Stack, tenant: str, customers: int, *, existing_share: int = 3, seed: int = 1,
          headroom: float = 0.0, scheme: dict[str, Any] | None = None) -> dict[str, Any]:
    """A scheme of `customers` (or `scheme`, another brand's, read again), every `existing_share`-th
    customer already in Klaviyo with conflicting data, in a Klaviyo account of the brand's own."""
    scheme = scheme or s.loyale.create_scheme(customers=customers, seed=seed)
    key = "pk_" + os.urandom(17).hex()
    account = s.klaviyo.add_account(keys=[{"key": key}])
    seeds, seen = [], set()
    for index, customer in enumerate(s.loyale.customers(scheme["scheme_id"])):
        email = (customer.get("email") or "").strip().lower()
        if index % existing_share or "@" not in email or email in seen:
            continue
        seen.add(email)
        seeds.append({"email": email, "first_name": f"Klaviyo-{index}",
                      "properties": {"LoyalePointBalance": -1, "FavouriteColour": "blue"}})
    for start in range(0, len(seeds), 5000):
        with suppress(Exception):  # a synthetic email the fake refuses: that profile is just not seeded
            s.klaviyo.seed_profiles(seeds[start:start + 5000], account_id=account)
    return {"tenant": tenant, "account": account, "scheme": scheme, "config": {
        "loyale_base_url": s.loyale.base_url, "loyale_scheme_id": scheme["scheme_id"],
        "loyale_admin_email": scheme["admin_email"], "loyale_admin_password": scheme["admin_password"],
        "klaviyo_base_url": s.klaviyo.base_url, "klaviyo_private_key": key, "merge_customers": True,
        "headroom": headroom}}


@dataclass
class Producer:
    """`loyale-sync backfill` running; its output goes to a file (a pipe nobody reads until it ends
    would fill and stall it)."""

    proc: subprocess.Popen[str]
    output: Any

    def done(self) -> None:
        self.proc.wait()
        with self.output:
            if self.proc.returncode:
                self.output.seek(0)
                raise RuntimeError(f"backfill failed: {self.output.read()[-4000:]}")


def backfill(env: dict[str, str], tenant: str, rss: RssSampler, store: Store,
             per_customer: bool = False) -> tuple[str, Producer]:
    """Start `loyale-sync backfill` (it returns when the producer has enqueued every customer) and
    return its run id as soon as the run exists, so that the run is watched while it is produced."""
    args = [sys.executable, "-m", "cli", "backfill", "--tenant", tenant]
    if per_customer:
        args.append("--per-customer")
    before = {info.id for info in store.runs(tenant, limit=100)}
    output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed with the Producer, after the run
    producer = Producer(subprocess.Popen(args, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                         text=True), output)
    rss.watch("producer", producer.proc.pid)
    while True:
        new = [info.id for info in store.runs(tenant, limit=100) if info.id not in before]
        if new:
            return new[0], producer
        if producer.proc.poll() is not None:
            producer.done()
            raise RuntimeError("backfill ended without starting a run")
        time.sleep(0.05)


def record_sample(waiting: list[int], without_outcome: list[int], w: int, n: int) -> None:
    waiting.append(w)
    without_outcome.append(n)


def wait_done(store: Store, run_id: str, on_sample: Callable[[int, int], None] | None = None,
              timeout_s: float = 3600, progress: list[tuple[float, int]] | None = None) -> None:
    """Wait for the run; `on_sample` gets the customers waiting (what the producer's bound bounds: queue,
    workers' buffers) and those without an outcome (plus what running batches hold), `progress`
    (seconds, completed) pairs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = store.run(run_id)
        if on_sample is not None and info is not None:
            on_sample(store.waiting(run_id), store.enqueued_count(run_id) - info.completed)
        if progress is not None and info is not None:
            progress.append((time.monotonic(), info.completed))
        if info is not None and info.done:
            return
        time.sleep(0.2)
    raise TimeoutError(f"run {run_id} did not finish in {timeout_s}s")


def account_requests(klaviyo: FakeKlaviyoControl, account: str) -> list[dict[str, Any]]:
    return [e for e in klaviyo.request_log() if e["account_id"] == account]


def steady_rate(progress: list[tuple[float, int]], total: int) -> float | None:
    """Customers per second between 10 % and 90 % of the run's outcomes: the rate while the pipeline is
    full, without the start (the first lookups and jobs) or the tail (the last job's duration)."""
    low = next((t for t, done in progress if done >= total * 0.1), None)
    high = next(((t, done) for t, done in progress if done >= total * 0.9), None)
    if low is None or high is None or high[0] <= low:
        return None
    first = next(done for t, done in progress if t == low)
    return round((high[1] - first) / (high[0] - low), 1)


def timeline(progress: list[tuple[float, int]], total: int, started: float) -> dict[str, float]:
    """Seconds from the run's start until the first outcome and 10/50/90/99/100 % of them: where a run
    loses time (its start, its middle or its tail)."""
    marks = {"first": 1, "10%": total * 0.1, "50%": total * 0.5, "90%": total * 0.9, "99%": total * 0.99,
             "100%": total}
    return {name: round(next((t - started for t, done in progress if done >= need), float("nan")), 1)
            for name, need in marks.items()}


def last_outcomes(client: redis.Redis, run_id: str, tenant: str, share: float = 0.01) -> dict[str, int]:
    """What the last `share` of a run's outcomes were (outcome and the start of its reason, counted),
    from each customer's ledger: what a run's tail waits for."""
    ids = list(client.hkeys(keys.run_outcomes(run_id)))
    pipe = client.pipeline(transaction=False)
    for customer_id in ids:
        pipe.lrange(keys.ledger(tenant, customer_id), 0, 4)
    entries = [entry for history in pipe.execute() for raw in history
               if (entry := json.loads(raw)).get("run") == run_id]
    entries.sort(key=lambda e: e["at"])
    tail = entries[int(len(entries) * (1 - share)):]
    return dict(Counter(f"{e['outcome']}: {e['reason'][:70]}" for e in tail).most_common(8))


def producer_rate(info: RunInfo) -> float | None:
    """Customers the producer enqueued per second, from its own start (the run's creation) to its finish."""
    if info.produced_at is None or info.expected is None:
        return None
    return round(info.expected / max(info.produced_at - info.started_at, 1e-9), 1)


def measured(s: Stack, name: str, b: dict[str, Any], *, customers: int, workers: int, seconds: float,
             limiter: dict[str, float], peak_rss_mb: float, extra: dict[str, Any]) -> Result:
    """The figures of one run of brand `b`, from the fake Klaviyo's log of its account."""
    log = account_requests(s.klaviyo, b["account"])
    lookups = sorted(e["received_ts"] for e in log if e["endpoint"] == LOOKUPS)
    span_min = max(lookups[-1] - lookups[0], 1e-9) / 60 if len(lookups) > 1 else 0
    table = load_spec_limits(DEFAULT_SPEC_PATH if DEFAULT_SPEC_PATH.exists() else None)
    allowed = endpoint_limits(table, headroom=b["config"]["headroom"], transit_ms=0,
                              rate_scale=limiter["rate"], window_scale=limiter["window"])[LOOKUPS]
    return Result(
        scenario=name, customers=customers, workers=workers, seconds=round(seconds, 1),
        klaviyo_requests=len(log), requests_per_customer=round(len(log) / max(1, customers), 4),
        throttled_429=sum(1 for e in log if e["status"] == 429),
        allowed_requests_per_min=round(allowed.steady_per_min, 1),
        achieved_requests_per_min=round(len(lookups) / span_min, 1) if span_min else 0.0,
        customers_per_second=round(customers / seconds, 1), peak_rss_mb=round(peak_rss_mb, 1),
        extra={**extra, "jobs_in_flight_max": in_flight_max(s.klaviyo.bulk_jobs(b["account"])),
               "throttled_by_endpoint": dict(Counter(e["endpoint"] for e in log if e["status"] == 429)),
               "requests_by_endpoint": dict(Counter(e["endpoint"] for e in log).most_common())},
    )


def in_flight_max(jobs: list[dict[str, Any]]) -> int:
    """The most jobs not yet complete at once (`FakeKlaviyoControl.bulk_jobs`; a job that never ended
    counts to the end). A job ending at the instant another starts is not counted with it."""
    events = sorted([(j["created"], 1) for j in jobs]
                    + [(j["completed"], -1) for j in jobs if j["completed"] is not None])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def run_scenario(s: Stack, name: str, brands: list[dict[str, Any]], *, workers: int, per_customer: bool,
                 env_extra: dict[str, str], limiter: dict[str, float], time_scale: float | None = None
                 ) -> list[Result]:
    env = sync_env(s.redis_server.url, write_tenants_file({b["tenant"]: b["config"] for b in brands}),
                   SYNC_LOG_LEVEL="WARNING", SYNC_BROKER_URL=s.broker_url, **env_extra)
    store = Store(redis.Redis.from_url(s.redis_server.url, decode_responses=True))
    pool, threads = procfile_backfill_worker()   # backfill workers as the Procfile starts them
    procs = [(WorkerProcess(env, concurrency=1, name=f"{name}-{i}") if per_customer
              else WorkerProcess.backfill(env, concurrency=threads, pool=pool, name=f"{name}-{i}"))
             for i in range(workers)]
    results = []
    with RssSampler() as rss:
        for i, w in enumerate(procs):
            w.start()
            rss.watch(f"worker-{i}", w.proc.pid)
        for w in procs:
            w.wait_ready()
        try:
            for b in brands:
                progress: list[tuple[float, int]] = []
                s.klaviyo.set_knobs(request_log_size=200_000)
                s.klaviyo.loop_lag_max_s()   # from here on
                started = time.monotonic()
                run_id, producer = backfill(env, b["tenant"], rss, store, per_customer)
                depth: list[int] = []
                in_flight: list[int] = []
                wait_done(store, run_id, partial(record_sample, depth, in_flight), progress=progress)
                producer.done()
                seconds = time.monotonic() - started
                loop_lag_s = s.klaviyo.loop_lag_max_s()
                info = store.run(run_id)
                assert info is not None
                results.append(measured(
                    s, name, b, customers=info.completed, workers=workers, seconds=seconds, limiter=limiter,
                    peak_rss_mb=max(rss.peak_mb.values()),
                    extra={"path": "per-customer" if per_customer else "batched", "broker": s.broker,
                           "fake_klaviyo": fake_klaviyo_label(TIME_SCALE if time_scale is None else time_scale),
                           "outcomes": info.counts, "max_queue_depth": max(depth or [0]),
                           "max_without_outcome": max(in_flight or [0]),
                           "producer_peak_rss_mb": round(rss.peak_mb.get("producer", 0.0), 1),
                           "producer_enqueue_per_second": producer_rate(info),
                           "steady_customers_per_second": steady_rate(progress, info.completed),
                           "outcomes_at_s": timeline(progress, info.completed, started),
                           "last_1_percent": last_outcomes(store.redis, run_id, b["tenant"]),
                           "produced_at_s": (round(info.produced_at - info.started_at, 1)
                                             if info.produced_at is not None else None),
                           "fake_loop_lag_max_s": loop_lag_s,
                           "limiter_deferrals": info.deferrals}))
                rss.peak_mb.pop("producer", None)
        finally:
            for w in procs:
                w.stop()
    return results


def quota_bound(customers: int, workers: int) -> list[Result]:
    """Klaviyo's limits scaled down so the limiter binds: achieved vs allowed, zero 429s."""
    scale = {"rate": 0.1, "window": 0.2}   # lookups: 75 per 12 s window = 375/min
    with stack() as s:
        s.klaviyo.set_knobs(rate_limit_scale=scale["rate"], window_scale=scale["window"])
        b = brand(s, "quota", customers)
        return run_scenario(s, "quota-bound", [b], workers=workers, per_customer=True, limiter=scale,
                            env_extra={"SYNC_LIMITER_RATE_SCALE": str(scale["rate"]),
                                       "SYNC_LIMITER_WINDOW_SCALE": str(scale["window"])})


def real_limits(customers: int, workers: int, per_customer_customers: int,
                brokers: tuple[str, ...] = ("redis",)) -> list[Result]:
    """Klaviyo's real limits: the batched path on `customers`, the per-customer path on a subset; once
    per broker (a fresh stack each, the same schemes by seed), so the lines sit side by side."""
    scale = {"rate": 1.0, "window": 1.0}
    results: list[Result] = []
    for broker in brokers:
        with stack(broker=broker) as s:
            batched = brand(s, "batched", customers, seed=7)
            single = brand(s, "single", per_customer_customers, seed=7)   # the same first customers
            pair = run_scenario(s, "real-limits", [batched], workers=workers, per_customer=False, limiter=scale,
                                env_extra={"SYNC_BATCH_SIZE": "10000", "SYNC_MAX_QUEUED_PER_TENANT": "40000"})
            pair += run_scenario(s, "real-limits", [single], workers=workers, per_customer=True, limiter=scale,
                                 env_extra={})
        ratio = pair[0].customers_per_second / max(pair[1].customers_per_second, 1e-9)
        for r in pair:
            r.extra["batched_vs_per_customer_speed"] = round(ratio, 1)
        results += pair
    return results


def bulk_jobs(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows per bulk import job (from the POSTs) and, per job, the seconds between its first and last
    status GET: how long our workers waited on Klaviyo's jobs."""
    rows = [len(((e["body"] or {}).get("data", {}).get("attributes", {}).get("profiles", {}).get("data")) or [])
            for e in log if e["endpoint"] == "POST /api/profile-bulk-import-jobs" and e["status"] == 202]
    polls: dict[str, list[float]] = {}
    for e in log:
        if e["endpoint"] == "GET /api/profile-bulk-import-jobs/{job_id}":
            polls.setdefault(e["path"].rsplit("/", 1)[-1], []).append(e["received_ts"])
    spans = sorted(round(max(ts) - min(ts), 1) for ts in polls.values())
    return {"bulk_job_rows": rows, "bulk_job_poll_span_s": spans}


def realistic(customers: int, workers: int, time_scale: float) -> list[Result]:
    """Klaviyo's job latency and read lag: the realistic fake at `time_scale` (1 = Klaviyo's orders of
    magnitude: a job of 1,000 rows takes 40 s), Klaviyo's real limits, a batched backfill with Merge
    Customers on and a third of the customers already in Klaviyo with conflicting data."""
    scale = {"rate": 1.0, "window": 1.0}
    with stack(time_scale) as s:
        b = brand(s, "realistic", customers, seed=7)
        knobs = s.klaviyo.knobs()
        results = run_scenario(s, "realistic", [b], workers=workers, per_customer=False, limiter=scale,
                               time_scale=time_scale, env_extra={"SYNC_BATCH_SIZE": "1000"})
        log = account_requests(s.klaviyo, b["account"])
        merges = len(s.klaviyo.merges())
    for r in results:
        r.extra.update({name: knobs[name] for name in (
            "job_seconds", "job_seconds_per_1000_rows", "read_lag_s", "suppression_lag_s")})
        r.extra.update(bulk_jobs(log))
        r.extra["profiles_merged_by_klaviyo"] = merges
    return results


def ceiling(s: Stack, b: dict[str, Any], limiter: dict[str, float], extra: dict[str, Any]) -> Result:
    """`bench.ceiling` for brand `b`, in this process: the machine's limit for the work."""
    s.klaviyo.set_knobs(request_log_size=200_000)
    tenant = TenantConfig(id=b["tenant"], **b["config"])
    with RssSampler() as rss:
        rss.watch("ceiling", os.getpid())
        done = run_ceiling(s.redis_server.url, tenant)
    return measured(s, "ceiling", b, customers=done.customers, workers=1, seconds=done.seconds, limiter=limiter,
                    peak_rss_mb=max(rss.peak_mb.values()),
                    extra={"path": "ceiling", **extra, "ceiling_customers_per_second":
                           round(done.customers_per_second, 1), "bulk_jobs": done.jobs, "row_verdicts": done.rows,
                           "planned": done.outcomes})


#: The batch size of the job-latency scenario: the product's default (the tests' environment sets 500).
BATCH_SIZE: int = Settings.model_fields["batch_size"].default


def job_timing(s: Stack, job_seconds: float) -> dict[str, Any]:
    """Every bulk job takes `job_seconds` (0: it ends on its next status GET); returns the knobs as JSON figures."""
    knobs = s.klaviyo.set_knobs(job_seconds=job_seconds, job_seconds_per_1000_rows=0.0)
    return {"fake_klaviyo": f"realistic x1, jobs {job_seconds:g} s",
            **{name: knobs[name] for name in ("job_seconds", "job_seconds_per_1000_rows", "read_lag_s")}}


def ceiling_only(customers: int) -> list[Result]:
    """The ceiling alone, against the fake of `--kind` / `--time-scale` (see `bench.ceiling`)."""
    scale = {"rate": 1.0, "window": 1.0}
    with stack() as s:
        b = brand(s, "ceiling", customers, seed=7)
        return [ceiling(s, b, scale, {"fake_klaviyo": fake_klaviyo_label(TIME_SCALE)})]


def job_latency(customers: int, workers: int, job_seconds: list[float]) -> list[Result]:
    """Per job duration: the ceiling, then the batched path with `workers` processes, on the same customers
    (one Loyale scheme, a Klaviyo account each, a third already there with conflicting data, Merge
    Customers on), against the realistic fake (read lag 5 s) with every bulk job taking `job_seconds`."""
    scale = {"rate": 1.0, "window": 1.0}
    results: list[Result] = []
    for seconds in job_seconds:
        with stack(1.0) as s:
            knobs = job_timing(s, seconds)
            top = brand(s, f"ceiling{seconds:g}", customers, seed=7)
            b = brand(s, f"latency{seconds:g}", customers, scheme=top["scheme"])
            limit = ceiling(s, top, scale, knobs)
            (run,) = run_scenario(s, "job-latency", [b], workers=workers, per_customer=False, limiter=scale,
                                  time_scale=1.0, env_extra={"SYNC_BATCH_SIZE": str(BATCH_SIZE)})
        run.extra.update({**knobs, "batch_size": BATCH_SIZE})
        for r in (limit, run):
            r.scenario = "job-latency"
            r.extra["ceiling_customers_per_second"] = limit.customers_per_second
            r.extra["ratio_to_ceiling"] = round(r.customers_per_second / max(limit.customers_per_second, 1e-9), 3)
        results += [limit, run]
    return results


def producer_memory(workers: int, sizes: tuple[int, ...] = (10_000, 100_000)) -> list[Result]:
    """The producer's memory does not grow with the scheme (it streams and is held back by the bound)."""
    results = []
    for size in sizes:
        with stack() as s:
            b = brand(s, f"memory{size}", size, existing_share=10**9)
            results += run_scenario(s, "producer-memory", [b], workers=workers, per_customer=False,
                                    limiter={"rate": 1.0, "window": 1.0},
                                    env_extra={"SYNC_MAX_QUEUED_PER_TENANT": "10000", "SYNC_BATCH_SIZE": "5000"})
    small, large = results[0].extra["producer_peak_rss_mb"], results[-1].extra["producer_peak_rss_mb"]
    for r in results:
        r.extra["producer_rss_growth"] = round(large / max(small, 1e-9) - 1, 3)
    return results


def producer_throughput(sizes: tuple[int, ...]) -> list[Result]:
    """The backfill producer alone (`bench.producer`: a process of its own, no worker, no bound) against the
    fake Loyale and a private Redis, per scheme size: `producer_enqueue_per_second` is customers enqueued per
    second of the producer's own time (snapshot, dedupe, publish), Loyale's paging time left out;
    `producer_peak_rss_mb` its peak memory and, with two sizes, `producer_rss_growth` the growth from the
    smaller to the larger. The queue is checked to hold one message per customer."""
    results = []
    for customers in sizes:
        with stack() as s:
            b = brand(s, "producer", customers, existing_share=10**9)
            produced = produce_in_child(s.redis_server.url, write_tenants_file({b["tenant"]: b["config"]}),
                                        b["tenant"])
            queued = RedisBroker(redis.Redis.from_url(s.redis_server.url)).depth(QUEUE_BACKFILL)
        if queued != produced.enqueued:
            raise RuntimeError(f"{produced.enqueued} customers enqueued but {queued} messages on the queue")
        results.append(Result(
            scenario="producer-throughput", customers=produced.enqueued, workers=0, seconds=round(produced.seconds, 1),
            klaviyo_requests=0, requests_per_customer=0.0, throttled_429=0, allowed_requests_per_min=0.0,
            achieved_requests_per_min=0.0, customers_per_second=round(produced.enqueued / produced.seconds, 1),
            peak_rss_mb=round(produced.peak_rss_mb, 1),
            extra={"path": "producer", "loyale_paging_s": round(produced.paging_s, 1),
                   "producer_enqueue_per_second": round(produced.enqueue_per_second, 1),
                   "producer_enqueue_per_cpu_second": round(produced.enqueue_per_cpu_second, 1),
                   "producer_peak_rss_mb": round(produced.peak_rss_mb, 1), "load_average_1m": os.getloadavg()[0]}))
    if len(results) > 1:
        small, large = results[0].extra["producer_peak_rss_mb"], results[-1].extra["producer_peak_rss_mb"]
        for r in results:
            r.extra["producer_rss_growth"] = round(large / max(small, 1e-9) - 1, 3)
    return results


def print_table(results: list[Result]) -> None:
    header = ("scenario", "path", "broker", "customers", "workers", "seconds", "req/cust", "429s", "allowed/min",
              "achieved/min", "cust/s", "peak MB", "producer MB", "max queue")
    rows = [(r.scenario, r.extra.get("path", ""), r.extra.get("broker", "redis"), r.customers, r.workers, r.seconds,
             r.requests_per_customer,
             r.throttled_429, r.allowed_requests_per_min, r.achieved_requests_per_min, r.customers_per_second,
             r.peak_rss_mb, r.extra.get("producer_peak_rss_mb", ""), r.extra.get("max_queue_depth", ""))
            for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["quota-bound", "real-limits", "producer-memory", "producer-throughput",
                                               "realistic", "ceiling", "job-latency", "all"], default="all")
    parser.add_argument("--customers", type=int, default=None,
                        help="customers (quota-bound: 600, real-limits: 20000, producer-throughput: 10000 and 100000, "
                             "realistic: 5000, ceiling and job-latency: 100000)")
    parser.add_argument("--job-seconds", default="0,30,90",
                        help="job-latency: the bulk job durations to run, in seconds (default 0,30,90)")
    parser.add_argument("--kind", action="store_true",
                        help="the kind fake Klaviyo (jobs end on the next GET, nothing lags) for every scenario but "
                             "realistic")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="durations of the realistic fake Klaviyo (default 1: Klaviyo's orders of magnitude, "
                             "tens of seconds per bulk job; 0.03: about a second)")
    parser.add_argument("--per-customer-customers", type=int, default=2000,
                        help="real-limits: customers synced on the per-customer path for comparison")
    parser.add_argument("--workers", type=int, default=4, help="Celery worker processes (default 4)")
    parser.add_argument("--brokers", default=None,
                        help="real-limits: Celery's brokers to run it on, one after the other, e.g. redis,rabbitmq "
                             "(default: both where rabbitmq-server is installed, else redis); the other scenarios "
                             "run on Redis")
    args = parser.parse_args(argv)
    brokers = tuple(b.strip() for b in (args.brokers or ("redis,rabbitmq" if rabbitmq_server_path() else "redis"))
                    .split(",") if b.strip())
    if not brokers or set(brokers) - {"redis", "rabbitmq"}:
        parser.error("--brokers: redis, rabbitmq or both, separated by a comma")
    if "rabbitmq" in brokers and rabbitmq_server_path() is None:
        parser.error("--brokers rabbitmq: rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)")
    if args.time_scale < 0:
        parser.error("--time-scale must be at least 0")
    try:
        job_seconds = [float(x) for x in args.job_seconds.split(",") if x.strip()]
    except ValueError:
        parser.error("--job-seconds: numbers separated by commas, e.g. 0,30,90")
    global TIME_SCALE
    TIME_SCALE = None if args.kind else args.time_scale
    results: list[Result] = []
    if args.scenario in ("quota-bound", "all"):
        results += quota_bound(args.customers or 600, args.workers)
    if args.scenario in ("real-limits", "all"):
        results += real_limits(args.customers or 20_000, args.workers, args.per_customer_customers, brokers)
    if args.scenario in ("producer-memory", "all"):
        results += producer_memory(args.workers)
    if args.scenario in ("producer-throughput", "all"):
        results += producer_throughput((args.customers,) if args.customers else (10_000, 100_000))
    if args.scenario in ("realistic", "all"):
        results += realistic(args.customers or 5000, args.workers, args.time_scale)
    if args.scenario == "ceiling":
        results += ceiling_only(args.customers or 100_000)
    if args.scenario in ("job-latency", "all"):
        results += job_latency(args.customers or 100_000, args.workers, job_seconds)
    print_table(results)
    for r in results:
        print(r.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
