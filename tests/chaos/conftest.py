"""Fixtures of the chaos harness (helpers in chaos_harness.py).

- ``chaos_redis``: a dedicated redis-server with AOF + fsync always (kill9() / restart() keep data).
- ``chaos_n``: notifications per run, 500 or 10,000 with ``--chaos-long``.
- ``repeaters``: bounded background actions (kill and restart a worker every few seconds).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_harness import LONG_N, SHORT_N, RedisServer, Repeater, free_port


@pytest.fixture
def chaos_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def chaos_n(request: pytest.FixtureRequest) -> int:
    return LONG_N if request.config.getoption("--chaos-long") else SHORT_N


@pytest.fixture
def repeaters() -> Iterator[Callable[..., Repeater]]:
    """Start Repeaters; every one is stopped at the end of the test even when it fails."""
    started: list[Repeater] = []

    def start(action: Callable[[int], None], interval: float, max_times: int, name: str = "chaos") -> Repeater:
        rep = Repeater(action, interval, max_times, name).start()
        started.append(rep)
        return rep

    yield start
    for rep in started:
        rep.stop()
