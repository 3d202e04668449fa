"""Integration fixtures: fake Loyale and fake Klaviyo as real processes on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fakes.klaviyo.config import default_spec_path
from fakes.klaviyo_control import FakeKlaviyoControl
from fakes.loyale_control import FakeLoyaleControl
from fakes.serving import ServerProcess
from worker.store import Store

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory starts real processes: it is in the `integration` layer."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def fake_loyale_server() -> Iterator[ServerProcess]:
    with ServerProcess(module="fakes.loyale") as server:
        yield server


@pytest.fixture(scope="session")
def fake_klaviyo_server() -> Iterator[ServerProcess]:
    # With Klaviyo's spec at hand, the fake checks every request our code sends against it.
    args = ["--validate-spec"] if default_spec_path().exists() else []
    with ServerProcess(module="fakes.klaviyo", args=args) as server:
        yield server


@pytest.fixture
def loyale(fake_loyale_server: ServerProcess) -> Iterator[FakeLoyaleControl]:
    control = FakeLoyaleControl(fake_loyale_server.url)
    control.reset()
    yield control


@pytest.fixture
def klaviyo(fake_klaviyo_server: ServerProcess) -> Iterator[FakeKlaviyoControl]:
    """The fake Klaviyo, as slow and eventually consistent as the real one (scaled so a bulk job
    takes about a second): the sync is tested against the worst the API documents, not the best."""
    control = FakeKlaviyoControl(fake_klaviyo_server.url)
    control.reset()
    control.realistic(time_scale=REALISTIC_TIME_SCALE)
    yield control


#: Klaviyo's real delays times this: jobs of about a second, read lag 0.15 s, suppressions 1.8 s.
REALISTIC_TIME_SCALE = 0.03


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    """The sync state in the test's Redis, as the commands see it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield Store(client)
    client.close()
