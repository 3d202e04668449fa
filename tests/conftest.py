"""Shared fixtures: a private Redis per test session, a private RabbitMQ node per test process that
asks for one (`broker_url` runs a test on both brokers), fakes on real loopback ports.

A test that starts a process or a server is marked `integration` (pyproject's marker):
`pytest -m "not integration"` runs the fast layer alone. Tests under tests/integration/ are marked by
their conftest; here, every test that uses the session's redis-server (`redis_url`); files whose tests
serve a fake on a loopback port say so with `pytestmark`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from fakes.processes import RABBITMQ_MISSING, RabbitServer, RedisServer, rabbitmq_server_path
from worker.messages import QUEUES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"redis_server", "rabbitmq_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database on the private server for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitServer]:
    """A private RabbitMQ node (its own name, ports, data and cookie), started once per test process on
    first use: a start costs about 4 s. Skipped, with the reason, where RabbitMQ is not installed."""
    if rabbitmq_server_path() is None:
        pytest.skip(RABBITMQ_MISSING)
    server = RabbitServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def rabbitmq_url(rabbitmq_server: RabbitServer) -> str:
    """The private node, with every queue the app declares, and Celery's delay queues, emptied."""
    rabbitmq_server.purge([*QUEUES, *DELAY_QUEUES])
    return rabbitmq_server.url


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The Celery broker of a test that runs on both: the state Redis itself (the default deployment),
    or a private RabbitMQ beside it (Redis stays the state store)."""
    return redis_url if request.param == "redis" else str(request.getfixturevalue("rabbitmq_url"))


#: Celery's native delayed delivery: a countdown message waits in these (kombu's names, levels 0-27).
DELAY_QUEUES = [f"celery_delayed_{level}" for level in range(28)]
