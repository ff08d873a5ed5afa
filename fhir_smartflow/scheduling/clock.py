"""Injectable clocks. Production reads system time; tests share a controllable "now" through Redis.

Every scheduling decision (is a follow-up due? quiet hours? which rate-limit window?) asks a clock,
never ``datetime.now`` directly, so tests can move time forward without sleeping. The Redis clock
stores its "now" under ``<prefix>clock:now`` so separate processes (worker, scheduler, serve) all see
the same controlled time. It is only ever enabled explicitly, and says so loudly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis

from fhir_smartflow.connections import Keys

log = logging.getLogger(__name__)

TEST_CLOCK_ENV = "SMARTFLOW_TEST_CLOCK"


class Clock(Protocol):
    """A clock object; calling it is the same as ``now()``, so it serves wherever a plain
    ``Callable[[], datetime]`` clock is expected (the runtime, the scheduler, the executor)."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    def __call__(self) -> datetime: ...


class SystemClock:
    """Wall-clock time (production)."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now()


class ManualClock:
    """An in-process clock for pure unit tests: set and advance by hand."""

    def __init__(self, start: datetime) -> None:
        self._now = _aware(start)

    def now(self) -> datetime:
        return self._now

    def __call__(self) -> datetime:
        return self.now()

    def set(self, when: datetime) -> None:
        self._now = _aware(when)

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now


class RedisClock:
    """A controllable "now" shared by every process using the same Redis (tests only).

    While no time was set it follows the system clock, so a freshly started test process behaves normally.
    """

    def __init__(self, conn: redis.Redis, keys: Keys) -> None:
        self.conn = conn
        self.key = clock_key(keys)

    def now(self) -> datetime:
        raw = self.conn.get(self.key)
        if raw is None:
            return datetime.now(UTC)
        return datetime.fromtimestamp(float(raw), UTC)

    def __call__(self) -> datetime:
        return self.now()

    def set(self, when: datetime) -> None:
        self.conn.set(self.key, repr(_aware(when).timestamp()))

    def advance(self, delta: timedelta) -> datetime:
        when = self.now() + delta
        self.set(when)
        return when


def clock_key(keys: Keys) -> str:
    return f"{keys.prefix}clock:now"


def test_clock_requested(enabled_in_settings: bool = False, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return enabled_in_settings or env.get(TEST_CLOCK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def make_clock(conn: redis.Redis, keys: Keys, test_clock: bool = False, env: Mapping[str, str] | None = None) -> Clock:
    """The process clock: system time unless the test clock is explicitly enabled
    (``[scheduler] test_clock = true`` or ``SMARTFLOW_TEST_CLOCK=1``)."""
    if test_clock_requested(test_clock, env):
        log.warning(
            "TEST CLOCK ENABLED: 'now' is read from Redis key %s. Scheduling follows a controlled time, "
            "not the wall clock. NEVER enable this in production.",
            clock_key(keys),
        )
        return RedisClock(conn, keys)
    return SystemClock()


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("clock times must be timezone-aware")
    return when.astimezone(UTC)
