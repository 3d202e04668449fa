"""Real processes for integration tests (re-exported from `fakes.processes`, which the demo shares), and a
counter of the round trips our code makes to them."""

from typing import Any

import pytest
import redis

from fakes.processes import (  # noqa: F401
    REPO,
    RedisServer,
    WorkerProcess,
    sync_env,
    wait_for,
    write_tenants_file,
)


class RoundTrips:
    """Counts the packed writes redis-py sends while it is installed: one per round trip to Redis (a pipeline
    or a MULTI is one, whatever it holds), from every client of the process (the store's, kombu's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        send = redis.connection.AbstractConnection.send_packed_command

        def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            send(conn, command, check_health)
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
