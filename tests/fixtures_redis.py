"""A real redis-server for tests: started on a free loopback port in a temp dir, stopped after.

Tests import the fixture explicitly (`from tests.fixtures_redis import redis_url  # noqa: F401`).
Persistence is off so nothing outlives the test; it never touches a system Redis.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisProcess:
    """One redis-server process that can be stopped and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                    # Polling is the only readiness signal redis-server offers.
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[RedisProcess]:
    """A started RedisProcess, stopped on exit."""
    server = RedisProcess(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Each fixture stands alone, so a test module can import just the one it uses.
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A running redis-server that the test may stop() and start() again on the same port."""
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty redis-server (redis://127.0.0.1:PORT/0)."""
    with running_redis(tmp_path) as server:
        yield server.url
