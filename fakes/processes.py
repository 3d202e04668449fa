"""Local processes for the demo, the tests and the benchmark: a private redis-server and Celery
workers, each started on demand and stopped cleanly (nothing here is used in production)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import redis
from celery import Celery

from fakes.serving import free_port

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout_s: float = 60.0, interval_s: float = 0.1, what: str = "", diagnose=None):
    """Poll until `predicate()` is truthy; fail with `what` (and what `diagnose()` says) after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f": {diagnose()}" if diagnose is not None else ""
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or predicate}{detail}")
        time.sleep(interval_s)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_tenants_file(tenants: dict[str, dict[str, Any]], directory: str | None = None) -> Path:
    lines = []
    for tenant_id, values in tenants.items():
        lines.append(f"[tenants.{tenant_id}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None)
        lines.append("")
    handle, path = tempfile.mkstemp(suffix=".toml", prefix="tenants-", dir=directory)
    with os.fdopen(handle, "w") as out:
        out.write("\n".join(lines))
    return Path(path)


def sync_env(redis_url: str, tenants_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env.update({"SYNC_REDIS_URL": redis_url, "SYNC_TENANTS_FILE": str(tenants_file), "SYNC_LOG_JSON": "true",
                "SYNC_RETRY_BASE_S": "0.2", "SYNC_RETRY_MAX_S": "2", "PYTHONUNBUFFERED": "1",
                "SYNC_BATCH_SIZE": "500", "SYNC_BATCH_FLUSH_INTERVAL_S": "0.5"})
    env.update(extra)
    return env


@dataclass
class RedisServer:
    """`redis-server` in a temporary directory; `appendonly` turns persistence on (for restart tests)."""

    appendonly: bool = False
    port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="lks-redis-"))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH: install Redis (Debian: apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir,
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--appendfsync", "always", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, decode_responses=True)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    # ours, not another test process's server that took the port first
                    if client.config_get("dir").get("dir") == os.path.realpath(self.workdir):
                        break
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not start")
                time.sleep(0.02)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self) -> RedisServer:
        """Stop and start again on the same port and directory (keeps data only with appendonly)."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def stop_group(proc: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGTERM the process group of `proc` (started with `start_new_session`); SIGKILL it after `timeout_s`."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


#: Why the RabbitMQ tests are skipped where they are.
RABBITMQ_MISSING = ("rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server): "
                    "the tests on the RabbitMQ broker are skipped")


def rabbitmq_server_path() -> str | None:
    """The script that starts a RabbitMQ node in the foreground, or None when RabbitMQ is not installed.
    Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the `rabbitmq` user when run as
    root (dropping our environment) and refuses other users: the real script sits beside it."""
    found = shutil.which("rabbitmq-server") or next(
        (p for p in ("/usr/sbin/rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server") if os.access(p, os.X_OK)),
        None)
    if found is None:
        return None
    real = Path(found).resolve()
    if real.name == "rabbitmq-script-wrapper":
        real = (real.parent / "rabbitmq-server").resolve()
    return str(real) if os.access(real, os.X_OK) else None


@dataclass
class RabbitServer:
    """A RabbitMQ node of its own in a temporary directory: its own node name, AMQP port, distribution
    port, Erlang cookie (HOME), data, logs and configuration, no plugins. The machine's RabbitMQ (and
    its /etc/rabbitmq) is never read nor touched; only the Erlang port mapper (epmd) is shared, which
    tells nodes apart by name. Messages survive `restart()` (quorum queues are on disk)."""

    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="lks-rabbit-"))
    proc: subprocess.Popen | None = None

    @property
    def node(self) -> str:
        return f"rabbit-test-{os.getpid()}-{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        work = Path(self.workdir)
        keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
        return {**{k: v for k, v in os.environ.items() if k in keep}, "HOME": self.workdir,
                "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONF_ENV_FILE": str(work / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(work / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(work / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(work / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(work / "mnesia"), "RABBITMQ_LOG_BASE": str(work / "log"),
                "RABBITMQ_PID_FILE": str(work / "rabbitmq.pid"), "ERL_EPMD_ADDRESS": "127.0.0.1"}

    def _write_config(self) -> None:
        work = Path(self.workdir)
        (work / "rabbitmq-env.conf").write_text("")       # not /etc/rabbitmq/rabbitmq-env.conf
        (work / "enabled_plugins").write_text("[].\n")
        (work / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nlog.console = false\nlog.file.level = warning\n")

    def start(self, timeout_s: float = 60.0) -> RabbitServer:
        exe = rabbitmq_server_path()
        if exe is None:
            raise RuntimeError(RABBITMQ_MISSING)
        self._write_config()
        self.proc = subprocess.Popen([exe], env=self.env(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=open(Path(self.workdir) / "stdout.log", "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(self._ours_answers, timeout_s, interval_s=0.2, what=f"RabbitMQ node {self.node}",
                     diagnose=lambda: self.log()[-2000:])
        except BaseException:
            self.stop()
            raise
        return self

    def _ours_answers(self) -> bool:
        import amqp

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        connection = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=1)
        try:
            connection.connect()
        except (OSError, amqp.exceptions.AMQPError):
            return False
        try:   # ours, not another node that took the port first (the cluster is named after the node)
            return str(connection.server_properties.get("cluster_name", "")).split("@")[0] == self.node.split("@")[0]
        finally:
            connection.close()

    def connect(self, **options: Any):
        """A plain AMQP connection to the node (py-amqp), for tests that look under the app."""
        import amqp

        connection = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=5, **options)
        connection.connect()
        return connection

    def purge(self, queues: list[str]) -> None:
        """Empty these queues of every message (those that exist; a test starts from nothing waiting)."""
        import amqp

        with self.connect() as connection:
            for queue in queues:
                channel = connection.channel()
                try:
                    channel.queue_purge(queue)
                    channel.close()
                except amqp.exceptions.NotFound:
                    pass

    def log(self) -> str:
        logs = [Path(self.workdir) / "stdout.log", *sorted((Path(self.workdir) / "log").glob("*.log"))]
        return "\n".join(p.read_text(errors="replace") for p in logs if p.exists())

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM: RabbitMQ shuts down cleanly (queues written, connections closed) and exits."""
        stop_group(self.proc, timeout_s)

    def restart(self) -> RabbitServer:
        """Stop and start the same node on the same port and data: its quorum queues keep their messages."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class ChildProcess:
    """A command of ours as a child process in its own process group, its output in a log file."""

    env: dict[str, str]
    argv: list[str] = field(default_factory=list)
    name: str = "child"
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="child-", suffix=".log")[1]))
    proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return self.argv

    def start(self) -> Self:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(self.command(), env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no chance to requeue or release anything."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_group(self.proc, timeout_s)


def procfile_backfill_worker() -> tuple[str, int]:
    """The pool and concurrency the Procfile starts the backfill worker with (tests and the benchmark
    start it the same way)."""
    line = next(ln for ln in (REPO / "Procfile").read_text().splitlines() if ln.startswith("backfill-worker:"))
    pool, threads = re.search(r"--pool=(\w+)", line), re.search(r"--concurrency=(\d+)", line)
    if pool is None or threads is None:
        raise ValueError(f"the Procfile's backfill-worker line names no --pool= or --concurrency=: {line}")
    return pool[1], int(threads[1])


def backfill_prefetch(batch_size: int, concurrency: int) -> int:
    """Celery's prefetch multiplier for a backfill worker: (concurrency + 1) batches held in all."""
    return max(1, (concurrency + 1) * batch_size // concurrency)


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", *args]


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


@dataclass
class BeatProcess(ChildProcess):
    """`celery -A worker.app beat` (redbeat: a second one waits for the first one's lock)."""

    name: str = "beat"

    def command(self) -> list[str]:
        return celery_command("beat", "--loglevel", "INFO")


@dataclass
class WebhookProcess(ChildProcess):
    """`loyale-sync webhooks` on a free loopback port."""

    name: str = "webhooks"
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return cli_command("webhooks", "--host", "127.0.0.1", "--port", str(self.port))

    def wait_ready(self, timeout_s: float = 30.0) -> WebhookProcess:
        import httpx

        def ready() -> bool:
            self.check_alive()
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout_s, interval_s=0.1, what="the webhook app")
        return self


@dataclass
class WorkerProcess(ChildProcess):
    """`celery -A worker.app worker` as a child process, in its own process group."""

    concurrency: int = 2
    queues: str = "sync.incremental"
    name: str = "w1"
    #: Backfill workers hold many messages (celery-batches groups them); incremental ones hold one.
    prefetch_multiplier: int = 1
    #: Celery's pool: backfill workers run their batches on threads (see `backfill`).
    pool: str = "prefork"

    def command(self) -> list[str]:
        return celery_command(
            "worker", "-Q", self.queues, "-P", self.pool, "-c", str(self.concurrency), "-n", f"{self.name}@%h",
            "--without-gossip", "--without-mingle", "--prefetch-multiplier", str(self.prefetch_multiplier), "-E",
            "--loglevel", "WARNING")

    @classmethod
    def backfill(cls, env: dict[str, str], concurrency: int = 2, name: str = "bf", pool: str = "threads",
                 **kw: Any) -> WorkerProcess:
        """A backfill worker as the Procfile starts it: batches on `concurrency` threads (prefork still
        works, with a process per batch), holding enough messages to fill one batch more than it runs."""
        batch = int(env.get("SYNC_BATCH_SIZE", "5000"))
        return cls(env, concurrency=concurrency, queues="sync.backfill", name=name, pool=pool,
                   prefetch_multiplier=backfill_prefetch(batch, concurrency), **kw)

    def wait_ready(self, timeout_s: float = 60.0) -> WorkerProcess:
        probe = Celery(broker=self.env.get("SYNC_BROKER_URL") or self.env["SYNC_REDIS_URL"], set_as_current=False)

        def ready() -> bool:
            self.check_alive()
            replies = probe.control.ping(timeout=0.5)
            return any(name.startswith(f"{self.name}@") for reply in replies for name in reply)

        try:
            wait_for(ready, timeout_s, interval_s=0.2, what=f"worker {self.name} to be ready")
        finally:
            probe.close()
        return self


@dataclass
class FlowerProcess(ChildProcess):
    """`celery -A worker.app flower` on a free loopback port. Basic auth comes from the environment
    (`FLOWER_BASIC_AUTH=user:password`, read by Flower itself), as in docker-compose.yml."""

    name: str = "flower"
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        """The first user of FLOWER_BASIC_AUTH, for requests to the API."""
        user, _, password = self.env["FLOWER_BASIC_AUTH"].split(",")[0].partition(":")
        return user, password

    def command(self) -> list[str]:
        return celery_command("flower", f"--port={self.port}", "--address=127.0.0.1")

    def wait_ready(self, timeout_s: float = 30.0) -> FlowerProcess:
        import httpx

        def ready() -> bool:
            self.check_alive()
            try:   # /healthcheck is the one page Flower serves without auth
                return httpx.get(f"{self.url}/healthcheck", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout_s, interval_s=0.1, what="Flower")
        return self
