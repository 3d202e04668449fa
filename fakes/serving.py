"""Run an ASGI fake on loopback, in this process or in a child process.

Tests, the demo and the benchmark all talk to the fakes over real HTTP, so a fake is always served
by uvicorn on a real port. `ServerProcess` starts `python -m <module> --port N ...` and waits until
the fake answers `GET /_fake/health`, so callers never sleep and hope.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(url: str, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200, or raise with what went wrong."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s}s ({last_error})")


@dataclass
class ServerProcess:
    """A fake served by uvicorn in a child process: `python -m {module} --port {port} {args}`."""

    module: str
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    env: dict[str, str] | None = None
    #: Send the fake's own output (its URLs and keys) to /dev/null instead of this terminal.
    quiet: bool = False
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            env=env,
            stdout=subprocess.DEVNULL if self.quiet else None,
        )
        try:
            wait_until_healthy(f"{self.url}/_fake/health", timeout_s=timeout_s, proc=self.proc)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
