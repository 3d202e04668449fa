"""Shared fixtures: a private Redis per test session, fakes on real loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from fakes.processes import RedisServer


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
