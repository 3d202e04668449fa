"""docker-compose.yml, Procfile, Dockerfile and .env.example agree with the code, without Docker: every
service runs a command that exists (ours, Celery's or a fake's) with options it accepts, on queues that
exist; Redis persists; Flower is never served without auth (every Flower goes through `loyale-sync flower`);
the demo and RabbitMQ are behind their profiles."""

from __future__ import annotations

import importlib
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import typer.main
import yaml
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli

from fakes.processes import WorkerProcess
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PROCESSES = {"worker", "backfill-worker", "beat", "flower", "webhooks", "metrics"}
DEMO = {"fake-loyale", "fake-klaviyo", "demo-backfill"}
#: Services of other images: the broker and state store.
INFRASTRUCTURE = {"redis", "rabbitmq"}
PROFILES = {**{name: ["demo"] for name in DEMO}, "rabbitmq": ["rabbitmq"]}
CELERY_SUBCOMMANDS = {"worker", "beat", "flower"}
#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@cache
def procfile() -> dict[str, str]:
    lines = [line for line in (REPO / "Procfile").read_text().splitlines() if line.strip()]
    processes = dict(line.split(":", 1) for line in lines)
    assert len(processes) == len(lines), "a process type is defined twice"
    return {name.strip(): command.strip() for name, command in processes.items()}


def env_example() -> str:
    return (REPO / ".env.example").read_text()


def interpolate(text: str) -> str:
    """What compose makes of a value with nothing set: defaults used, required variables marked."""
    def value(match: re.Match[str]) -> str:
        if match["op"] in (":-", "-"):
            return match["arg"]
        return f"<required {match['name']}>" if match["op"] else ""
    return VARIABLE.sub(value, text.replace("$$", "\0")).replace("\0", "$")


def argv(command: str | list[str]) -> list[str]:
    return [interpolate(a) for a in command] if isinstance(command, list) else shlex.split(interpolate(command))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@cache
def celery_app():
    from worker.app import app

    return app


def app_queues() -> set[str]:
    return {q.name for q in celery_app().conf.task_queues}


def check_command(args: list[str]) -> click.Context | None:
    """Fail unless `args` is a command that exists and accepts its options; the parsed context for Celery
    and loyale-sync commands."""
    assert args, "empty command"
    if args[0] == "celery":
        assert args[1:3] == ["-A", "worker.app"], f"{args}: run Celery with -A worker.app"
        sub, rest = args[3], args[4:]
        assert sub in CELERY_SUBCOMMANDS and sub in celery_cli.commands, f"{args}: {sub} is not a Celery command"
        obj = CLIContext(app=celery_app(), no_color=True, workdir=None, quiet=True)
        ctx = celery_cli.commands[sub].make_context(sub, rest, obj=obj)   # raises on an unknown option
        if sub == "flower":
            from flower.options import default_options

            for option in ctx.params["tornado_argv"]:
                name = option.lstrip("-").partition("=")[0].replace("-", "_")
                assert name in default_options, f"{args}: Flower has no option {option}"
        if sub == "worker":
            assert ctx.params["queues"], f"{args}: name the queues with -Q"
            assert set(ctx.params["queues"]) <= app_queues(), f"{args}: unknown queue in {ctx.params['queues']}"
            assert ctx.params["task_events"], f"{args}: start workers with -E (Flower needs task events)"
        return ctx
    if args[0] == "loyale-sync":
        from cli.main import app

        commands = typer.main.get_command(app).commands
        assert args[1] in commands, f"{args}: {args[1]!r} is not a loyale-sync command (have {sorted(commands)})"
        if args[1] == "flower":   # checks FLOWER_BASIC_AUTH, then becomes `celery -A worker.app flower` with the rest
            return check_command(["celery", "-A", "worker.app", "flower", *args[2:]])
        return commands[args[1]].make_context(args[1], args[2:])
    if args[:2] == ["python", "-m"]:
        module = importlib.import_module(f"{args[2]}.__main__")
        try:
            module.parse_args(args[3:])
        except SystemExit as exc:   # argparse exits on an unknown option
            raise AssertionError(f"{args}: python -m {args[2]} does not accept these options") from exc
        return None
    raise AssertionError(f"{args}: not a command of ours, of Celery or of a fake")


# --- docker-compose.yml -----------------------------------------------------------------------------


def test_compose_has_every_process_and_the_demo():
    assert set(services()) == INFRASTRUCTURE | PROCESSES | DEMO


def test_every_service_command_exists_with_the_options_it_is_given():
    for name, service in services().items():
        if name not in INFRASTRUCTURE:
            check_command(argv(service["command"]))


def test_app_services_share_one_image_the_env_file_and_redis():
    for name, service in services().items():
        if name in INFRASTRUCTURE:
            continue
        assert service["build"] == "." and service["image"] == services()["worker"]["image"], name
        env_files = service["env_file"] if isinstance(service["env_file"], list) else [service["env_file"]]
        assert ".env" in env_files, name
        depends = service["depends_on"]
        assert "redis" in depends, f"{name} does not depend on redis"
        # with the rabbitmq profile, wait for the broker; without it, do not need it
        assert depends["rabbitmq"] == {"condition": "service_healthy", "required": False}, name
        assert environment(service)["SYNC_REDIS_URL"].startswith("redis://redis:6379"), name


def test_redis_persists_on_a_named_volume():
    redis = services()["redis"]
    assert redis["image"] == "redis:7"
    command = argv(redis["command"])
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    volumes = [v.split(":") for v in redis["volumes"]]
    assert [v for v in volumes if v[0] in compose()["volumes"] and v[1] == "/data"], volumes


def flower_commands() -> dict[str, list[str]]:
    """Every command, of compose and of the Procfile, that starts Flower (whichever way it is spelled)."""
    commands = {f"compose {name}": argv(s["command"]) for name, s in services().items() if "command" in s}
    commands |= {f"Procfile {name}": shlex.split(command) for name, command in procfile().items()}
    return {where: args for where, args in commands.items() if "flower" in args}


def test_every_flower_goes_through_the_basic_auth_check():
    found = flower_commands()
    assert set(found) == {"compose flower", "Procfile flower"}, found
    for where, args in found.items():
        assert args[:2] == ["loyale-sync", "flower"], f"{where} starts Flower without the check: {args}"


def test_flower_serves_5555_with_basic_auth_from_the_environment_only():
    flower = services()["flower"]
    assert any(str(port).split(":")[-1] == "5555" for port in flower["ports"])
    assert argv(flower["command"])[:2] == ["loyale-sync", "flower"]
    auth = environment(flower)["FLOWER_BASIC_AUTH"]
    # a required variable of .env / the shell: compose refuses to start without it, and no password is in the file
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", auth), auth
    assert not any("basic-auth" in a or "basic_auth" in a for a in argv(flower["command"]))
    for service in services().values():
        assert environment(service).get("FLOWER_UNAUTHENTICATED_API", "") in ("", "false")
    assert not re.search(r"^\s*FLOWER_UNAUTHENTICATED_API\s*=", env_example(), re.M)
    assert "FLOWER_UNAUTHENTICATED_API" not in (REPO / "Procfile").read_text()


def test_demo_services_and_rabbitmq_are_only_in_their_profiles():
    for name, service in services().items():
        assert service.get("profiles", []) == PROFILES.get(name, []), name
    modules = {tuple(argv(services()[name]["command"])[:3]) for name in DEMO}
    assert {("python", "-m", "fakes.loyale"), ("python", "-m", "fakes.klaviyo")} <= modules
    one_shot = services()["demo-backfill"]
    assert argv(one_shot["command"])[:2] == ["loyale-sync", "backfill"] and one_shot["restart"] == "no"
    assert {"fake-loyale", "fake-klaviyo"} <= set(one_shot["depends_on"])


def test_workers_consume_every_queue_and_the_backfill_worker_prefetches_a_batch_per_thread_and_one():
    contexts = {name: check_command(argv(services()[name]["command"])) for name in ("worker", "backfill-worker")}
    assert contexts["worker"].params["queues"] == ["sync.incremental", "sync.producers"]
    assert contexts["backfill-worker"].params["queues"] == ["sync.backfill"]
    assert {q for ctx in contexts.values() for q in ctx.params["queues"]} == app_queues()
    batch_size = int(re.search(r"^SYNC_BATCH_SIZE=(\d+)", env_example(), re.M)[1])
    backfill = contexts["backfill-worker"].params
    threads = backfill["concurrency"]
    expected = WorkerProcess.backfill({"SYNC_BATCH_SIZE": str(batch_size)}, concurrency=threads)
    # batches wait for Klaviyo's jobs side by side, on threads
    assert backfill["pool"].__module__ == "celery.concurrency.thread" and expected.pool == "threads"
    assert backfill["prefetch_multiplier"] == expected.prefetch_multiplier == (threads + 1) * batch_size // threads


def header() -> str:
    """The leading comment of docker-compose.yml: how to run it."""
    lines = (REPO / "docker-compose.yml").read_text().splitlines()
    return "\n".join(line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def test_rabbitmq_profile_keeps_its_data_reports_health_and_never_runs_without_a_password():
    rabbitmq = services()["rabbitmq"]
    assert re.fullmatch(r"rabbitmq:[34]-management", rabbitmq["image"]), rabbitmq["image"]
    # the node's name (rabbit@hostname) names its data directory: fixed, so a new container finds the data
    assert rabbitmq["hostname"] == "rabbitmq"
    volumes = [v.split(":") for v in rabbitmq["volumes"]]
    assert [v for v in volumes if v[0] in compose()["volumes"] and v[1] == "/var/lib/rabbitmq"], volumes
    assert rabbitmq["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert any(str(port).split(":")[-1] == "15672" for port in rabbitmq["ports"]), "the management UI"
    assert rabbitmq["restart"] == "unless-stopped"
    # Unset, RabbitMQ gives its user the password "guest": the entrypoint refuses to start instead.
    env = environment(rabbitmq)
    assert env["RABBITMQ_DEFAULT_PASS"] == "${RABBITMQ_DEFAULT_PASS:-}"
    script = rabbitmq["entrypoint"][-1].replace("$$", "$")
    assert rabbitmq["entrypoint"][:2] == ["sh", "-c"]
    assert script.startswith('test -n "$RABBITMQ_DEFAULT_PASS" || {') and "exit 1" in script
    assert script.endswith("exec docker-entrypoint.sh rabbitmq-server")


def test_services_reach_rabbitmq_with_the_url_of_env_example_and_the_header_says_how():
    rabbitmq = services()["rabbitmq"]
    [url] = re.findall(r"^# SYNC_BROKER_URL=(amqp://\S+)$", env_example(), re.M)
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == (rabbitmq["hostname"], 5672)
    assert parts.username == interpolate(environment(rabbitmq)["RABBITMQ_DEFAULT_USER"])
    assert "--profile rabbitmq" in header() and "SYNC_BROKER_URL=amqp://" in header()
    assert "RABBITMQ_DEFAULT_PASS=" in header()


# --- Procfile ------------------------------------------------------------------------------------------


def test_procfile_runs_the_same_commands_as_compose():
    assert set(procfile()) == PROCESSES
    for name, command in procfile().items():
        check_command(shlex.split(command))
        assert shlex.split(command) == argv(services()[name]["command"]), name


# --- Dockerfile and .env.example -----------------------------------------------------------------------


def test_dockerfile_builds_a_slim_locked_image_run_by_a_non_root_user():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "uv sync --frozen --no-dev" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"^COPY\s+\.\s", text, re.M), "copy the packages, never the host's .venv or .env"
    for package in ("worker", "producers", "cli", "fakes"):
        assert re.search(rf"^COPY {package}/ ", text, re.M), package


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_env_example_lists_every_setting(field):
    assert re.search(rf"^(# )?SYNC_{field.upper()}=", env_example(), re.M), f"SYNC_{field.upper()} is missing"


def test_env_example_lists_what_compose_and_the_procfile_read():
    listed = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", env_example(), re.M))
    text = (REPO / "docker-compose.yml").read_text()
    used = {m["name"] for m in VARIABLE.finditer(text)} | {m["name"] for m in VARIABLE.finditer("\n".join(procfile()))}
    assert used - listed == set()
    assert re.search(r"^FLOWER_BASIC_AUTH=", env_example(), re.M)
    # the demo block of .env.example is exactly what the fakes of the demo profile accept
    for m in VARIABLE.finditer(text):
        if m["op"] in (":-", "-"):
            assert re.search(rf"^(# )?{m['name']}={re.escape(m['arg'])}$", env_example(), re.M), m[0]
