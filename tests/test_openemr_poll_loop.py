"""Poller.run: per-type interval + jitter, exponential backoff on errors, stops on request (real Redis)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fhir_smartflow.config import PollConfig
from fhir_smartflow.connections import Keys
from fhir_smartflow.ingest.poll import Poller

pytestmark = pytest.mark.integration

CAPABILITY = {
    "rest": [
        {
            "mode": "server",
            "resource": [
                {"type": "Patient", "interaction": [{"code": "search-type"}], "searchParam": [{"name": "_lastUpdated"}]}
            ],
        }
    ]
}


class FlakyReader:
    """A FhirReader (the poller's Protocol) whose searches fail ``failures`` times, then find nothing."""

    def __init__(self, failures: int, clock: list[float]) -> None:
        self.failures = failures
        self.clock = clock
        self.calls: list[float] = []

    def capability(self) -> dict[str, Any]:
        return CAPABILITY

    def search_pages(self, resource_type: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.calls.append(self.clock[0])
        if len(self.calls) <= self.failures:
            raise RuntimeError("server down")
        yield {"resourceType": "Bundle", "entry": []}


class FakeStop(threading.Event):
    """Advances the fake monotonic clock instead of sleeping; stops after ``limit`` waits."""

    def __init__(self, clock: list[float], limit: int) -> None:
        super().__init__()
        self.clock, self.limit = clock, limit

    def wait(self, timeout: float | None = None) -> bool:
        self.clock[0] += timeout or 0
        self.limit -= 1
        if self.limit <= 0:
            self.set()
        return self.is_set()


def test_backoff_grows_on_errors_then_the_interval_resumes(redis_conn: redis.Redis) -> None:
    clock = [0.0]
    reader = FlakyReader(failures=3, clock=clock)
    config = PollConfig(interval_seconds=10, jitter_seconds=0, backoff_max_seconds=60, initial_lookback_hours=1)
    poller = Poller(reader, lambda events: [], redis_conn, Keys("t:"), config, ["Patient"])
    poller.run(FakeStop(clock, limit=6), monotonic=lambda: clock[0])
    gaps = [b - a for a, b in zip(reader.calls, reader.calls[1:], strict=False)]
    assert len(reader.calls) >= 5
    assert 10 <= gaps[0] <= 20 and 20 <= gaps[1] <= 40 and 30 <= gaps[2] <= 60  # backoff, capped at 60
    assert gaps[3] == 10  # healthy again: the plain interval
