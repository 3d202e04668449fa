"""Shared fixtures: a private Redis per test session, fakes on real loopback ports.

A test that starts a process or a server is marked `integration` (pyproject's marker):
`pytest -m "not integration"` runs the fast layer alone. Tests under tests/integration/ are marked by
their conftest; here, every test that uses the session's redis-server (`redis_url`); files whose tests
serve a fake on a loopback port say so with `pytestmark`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from fakes.processes import RedisServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
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
