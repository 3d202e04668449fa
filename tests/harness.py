"""Real processes for integration tests (re-exported from `fakes.processes`, which the demo shares)."""

from fakes.processes import (  # noqa: F401
    REPO,
    RedisServer,
    WorkerProcess,
    sync_env,
    wait_for,
    write_tenants_file,
)
