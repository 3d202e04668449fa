"""Flower as operators run it (docker-compose.yml, Procfile): a real `celery -A worker.app flower` with basic
auth from the environment, watching a real worker (-E) that syncs customers from the fakes over HTTP; and the
Procfile's own line (`loyale-sync flower`, the same as compose's), which never serves Flower without auth."""

from __future__ import annotations

import json
import secrets
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass

import httpx
import pytest

from fakes.processes import REPO, FlowerProcess, WorkerProcess, sync_env, wait_for, write_tenants_file
from fakes.serving import free_port
from tests.integration.scenario import build_scenario
from tests.integration.test_backfill import cli, run_id_from
from tests.test_deployment import procfile


def test_flower_requires_auth_and_shows_the_worker_and_its_tasks_without_personal_data(loyale, klaviyo, redis_url,
                                                                                     broker_url):
    """On both brokers: Flower reads the workers' events and the producer's task-sent events from Redis
    or from RabbitMQ's celeryev exchange."""
    scenario = build_scenario(loyale, klaviyo, "flower", customers=3, merge_customers=True, seed=5)
    customers = loyale.customers(scenario.scheme_id)
    env = {k: v for k, v in sync_env(redis_url, write_tenants_file({scenario.tenant_id: scenario.tenant_config()}),
                                     SYNC_BROKER_URL=broker_url).items()
           if not k.startswith("FLOWER_")}   # no FLOWER_UNAUTHENTICATED_API from the caller
    env["FLOWER_BASIC_AUTH"] = f"ops:{secrets.token_urlsafe(12)}"
    worker = WorkerProcess(env, name="flowerw").start()
    flower = FlowerProcess(env).start()
    try:
        worker.wait_ready()
        flower.wait_ready()
        api = httpx.Client(base_url=flower.url, auth=flower.auth, timeout=10)

        # Without credentials, or with wrong ones, neither the API nor the UI answers.
        assert httpx.get(f"{flower.url}/api/workers", timeout=5).status_code == 401
        assert httpx.get(f"{flower.url}/api/tasks", auth=("ops", "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"{flower.url}/workers", timeout=5).status_code == 401

        # Our worker is online (its heartbeat events reached Flower: events are flowing from here on).
        def online() -> dict[str, bool]:
            flower.check_alive()
            status = api.get("/api/workers", params={"status": "true"}).json()
            return {k: v for k, v in status.items() if k.startswith("flowerw@") and v}

        [name] = wait_for(online, 30, interval_s=0.3, what="the worker online in Flower")
        inspected = api.get("/api/workers", params={"refresh": "1"}).json()
        assert "sync.incremental" in {q["name"] for q in inspected[name]["active_queues"]}

        result = cli(env, "backfill", "--tenant", scenario.tenant_id, "--per-customer", "--wait", timeout_s=60)
        assert result.returncode == 0, result.stderr + result.stdout
        run = run_id_from(result.stdout)

        def succeeded() -> dict[str, dict] | None:
            tasks = api.get("/api/tasks", params={"taskname": "sync.customer", "state": "SUCCESS"}).json()
            return tasks if len(tasks) == len(customers) else None

        tasks = wait_for(succeeded, 20, interval_s=0.3, what="every sync.customer task SUCCESS in Flower")
        ids = {c["id"] for c in customers}
        for task in tasks.values():
            assert task["worker"] == name
            # the producer's task-sent events (one list per chunk of customers) reached Flower too
            assert isinstance(task["sent"], float), task
            assert task["args"] in ("()", "[]")
            shown = task["kwargs"]
            assert f"'tenant': '{scenario.tenant_id}'" in shown and f"'run': '{run}'" in shown, shown
            assert any(f"'customer_id': '{cid}'" in shown for cid in ids), shown
        # Nothing Flower holds or shows names a key, a password or a customer's email.
        everything = json.dumps(api.get("/api/tasks").json()) + api.get("/tasks").text
        emails = [c["email"] for c in customers if c.get("email")]
        assert emails, "the scheme should have customers with emails to look for"
        secrets_and_emails = [scenario.key, scenario.admin_password, scenario.admin_email, *emails]
        assert [s for s in secrets_and_emails if s.lower() in everything.lower()] == []
        api.close()
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\nflower: {flower.log()[-2000:]}\nworker: {worker.log()[-2000:]}") from exc
    finally:
        flower.stop()
        worker.stop()


# --- the Procfile's line: `loyale-sync flower`, which checks FLOWER_BASIC_AUTH, then becomes Flower ----------


def procfile_flower(port: int) -> list[str]:
    """The Procfile's flower command (compose runs the same, tests/test_deployment.py checks) with this
    interpreter, on a loopback port of the test's instead of 5555."""
    args = shlex.split(procfile()["flower"])
    assert args[:2] == ["loyale-sync", "flower"] and "--port=5555" in args, args
    return [sys.executable, "-m", "cli", *(f"--port={port}" if a == "--port=5555" else a for a in args[1:]),
            "--address=127.0.0.1"]


@dataclass
class ProcfileFlower(FlowerProcess):
    name: str = "procfile-flower"

    def command(self) -> list[str]:
        return procfile_flower(self.port)


def flower_env(redis_url: str, **flower: str) -> dict[str, str]:
    env = {k: v for k, v in sync_env(redis_url, write_tenants_file({})).items() if not k.startswith("FLOWER_")}
    return env | flower


@pytest.mark.parametrize("auth", [None, "", "ops:", ":long-enough-password", "ops:password123", "ops:demo"])
def test_the_procfile_flower_refuses_to_start_without_sound_basic_auth(redis_url, auth):
    env = flower_env(redis_url, **({} if auth is None else {"FLOWER_BASIC_AUTH": auth}))
    port = free_port()
    result = subprocess.run(procfile_flower(port), env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    said = " ".join(result.stderr.split())
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Flower is never served without auth: set FLOWER_BASIC_AUTH=user:password in .env" in said, said
    assert "openssl rand -hex 16" in said, said
    # It stopped before Flower: no banner, no server, and the port it was given was never taken.
    assert "Visit me at" not in result.stdout + result.stderr
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    if auth and auth.partition(":")[2]:
        assert auth.partition(":")[2] not in said, "the message shows the password"


def test_the_procfile_flower_with_basic_auth_answers_nothing_without_credentials(redis_url):
    password = secrets.token_urlsafe(16)
    flower = ProcfileFlower(flower_env(redis_url, FLOWER_BASIC_AUTH=f"ops:{password},viewer:{password[::-1]}"))
    flower.start()
    try:
        flower.wait_ready()
        assert httpx.get(f"{flower.url}/", timeout=5).status_code == 401
        assert httpx.get(f"{flower.url}/", auth=("ops", "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"{flower.url}/", auth=("ops", password), timeout=5).status_code == 200
        assert httpx.get(f"{flower.url}/", auth=("viewer", password[::-1]), timeout=5).status_code == 200
        # The password reached Flower from the environment, never on its command line.
        assert password not in " ".join(flower.command())
    except (AssertionError, TimeoutError, RuntimeError) as exc:
        raise AssertionError(f"{exc}\nflower: {flower.log()[-2000:]}") from exc
    finally:
        flower.stop()
