"""Chaos harness: a Redis that survives kill -9, process killers, and the fixtures built on them.

Test modules that use the fixtures load this module as a plugin: ``pytest_plugins = ["chaos_harness"]``
(a plugin, not a tests/chaos/conftest.py, so the fixtures are only there where a module asks).

- ``chaos_redis``: a dedicated ``redis-server`` on a free port with AOF on and fsync on every write
  (``--appendfsync always``), so SIGKILL + restart on the same directory keeps every acknowledged
  write, like a production Redis configured for durability.
- ``Repeater``: runs an action (kill a worker and restart it, ...) every few seconds in a background
  thread, bounded by a count and by ``stop()``.
- ``chaos_n``: 500 notifications, or 10,000 with ``--chaos-long``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.procs import RedisServer

SHORT_N = 500
LONG_N = 10_000


class Repeater:
    """Call ``action(i)`` every ``interval`` s in a daemon thread, at most ``max_times``, until stop()."""

    def __init__(self, action: Callable[[int], None], interval: float, max_times: int, name: str = "chaos") -> None:
        self.action = action
        self.interval = interval
        self.max_times = max_times
        self.done = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while self.done < self.max_times and not self._stop.wait(self.interval):
            try:
                self.action(self.done)
            except BaseException as exc:  # reported by stop(): the test decides
                self.errors.append(exc)
            self.done += 1

    def start(self) -> Repeater:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.done


def sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def chaos_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, durable=True)
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
