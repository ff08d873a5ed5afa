"""Poller.run: per-type interval + jitter, exponential backoff on errors, stops on request (real Redis, the real
FhirClient against the sandbox served over HTTP, its fault injection standing in for a server that is down)."""

from __future__ import annotations

import itertools
import threading

import pytest
import redis
import requests

from fhir_smartflow.config import PollConfig
from fhir_smartflow.connections import Keys
from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.ingest.poll import Poller
from fhir_smartflow.retry import RetryPolicy

pytestmark = pytest.mark.integration


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


def test_backoff_grows_on_errors_then_the_interval_resumes(redis_conn: redis.Redis, sandbox_server: str) -> None:
    clock = [0.0]
    client = FhirClient(sandbox_server, retry=RetryPolicy(max_retries=0))  # each search is one request
    calls: list[float] = []  # the fake time of every Patient search the server answered
    client.session.hooks["response"].append(
        lambda r, *a, **k: calls.append(clock[0]) if "/Patient" in r.request.url else None
    )
    config = PollConfig(interval_seconds=10, jitter_seconds=0, backoff_max_seconds=60, initial_lookback_hours=1)
    poller = Poller(client, lambda events: [], redis_conn, Keys("t:"), config, ["Patient"])
    poller.plans()  # the CapabilityStatement, read once and kept by the client
    requests.post(f"{sandbox_server}/$faults", json={"fail_first": 3, "methods": ["GET"]}, timeout=5)  # then down
    poller.run(FakeStop(clock, limit=6), monotonic=lambda: clock[0])
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) >= 5
    assert 10 <= gaps[0] <= 20 and 20 <= gaps[1] <= 40 and 30 <= gaps[2] <= 60  # backoff, capped at 60
    assert gaps[3] == 10  # healthy again: the plain interval
