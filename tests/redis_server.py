"""A throwaway ``redis-server`` for the shared-cache tests: a free loopback port, no persistence, stopped
after the test. Tests that need one take the :func:`redis_server` fixture (imported into the test module);
without the Debian ``redis-server`` binary (``make redis-setup``) or the ``redis`` package they skip."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A loopback TCP port nothing listens on (the OS picks it; a later bind could race, rarely)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, in its own folder, saving nothing to disk."""

    def __init__(self, directory: Path) -> None:
        import redis

        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(directory)]
        self.process = subprocess.Popen(
            command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); a no-op once stopped."""
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server: `make redis-setup`)")
    pytest.importorskip("redis", reason="the redis package is missing (pip install -e '.[dev]')")
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
