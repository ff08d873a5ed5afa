"""Fault injection for tests and chaos runs: make the sandbox answer 503/429 or stall, on purpose.

Off unless the sandbox is started with ``--faults`` (``[sandbox] faults = true``). Configured at run
time through ``POST /$faults`` and cleared with ``DELETE /$faults``. ``fail_first: N`` fails exactly
the next N matching requests (deterministic); ``status_rate`` / ``stall_rate`` are probabilities.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fhir_smartflow.sandbox.errors import BadRequest

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class FaultPlan:
    status_rate: float = 0.0
    statuses: tuple[int, ...] = (503,)
    retry_after: int | None = None
    stall_rate: float = 0.0
    stall_seconds: float = 0.0
    fail_first: int = 0
    methods: tuple[str, ...] = ALL_METHODS
    seed: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> FaultPlan:
        if not isinstance(data, dict):
            raise BadRequest("the fault plan must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadRequest(f"unknown fault settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for rate in ("status_rate", "stall_rate"):
            value = data.get(rate, 0.0)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise BadRequest(f"{rate} must be a number between 0 and 1")
        statuses = data.get("statuses", [503])
        if (
            not isinstance(statuses, list)
            or not statuses
            or not all(isinstance(s, int) and 400 <= s <= 599 for s in statuses)
        ):
            raise BadRequest("statuses must be a non-empty list of HTTP error statuses (400-599)")
        methods = data.get("methods", list(ALL_METHODS))
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise BadRequest("methods must be a list of HTTP methods")
        for key in ("fail_first",):
            if not isinstance(data.get(key, 0), int) or data.get(key, 0) < 0:
                raise BadRequest(f"{key} must be a whole number >= 0")
        retry_after = data.get("retry_after")
        if retry_after is not None and (not isinstance(retry_after, int) or retry_after < 0):
            raise BadRequest("retry_after must be a whole number of seconds")
        stall = data.get("stall_seconds", 0.0)
        if not isinstance(stall, int | float) or not 0 <= stall <= 60:
            raise BadRequest("stall_seconds must be between 0 and 60")
        return cls(
            status_rate=float(data.get("status_rate", 0.0)),
            statuses=tuple(statuses),
            retry_after=retry_after,
            stall_rate=float(data.get("stall_rate", 0.0)),
            stall_seconds=float(stall),
            fail_first=int(data.get("fail_first", 0)),
            methods=tuple(m.upper() for m in methods),
            seed=data.get("seed"),
        )


@dataclass(frozen=True)
class Fault:
    """What to do to one request: stall first (seconds), then answer ``status`` (or pass when None)."""

    stall_seconds: float = 0.0
    status: int | None = None
    retry_after: int | None = None


@dataclass
class FaultCounters:
    failed: int = 0
    stalled: int = 0
    passed: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class FaultInjector:
    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._lock = threading.Lock()
        self._plan: FaultPlan | None = None
        self._remaining_failures = 0
        self._rng = random.Random()
        self._sleep = sleep
        self.counters = FaultCounters()

    def configure(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan
            self._remaining_failures = plan.fail_first
            self._rng = random.Random(plan.seed)
            self.counters = FaultCounters()

    def clear(self) -> None:
        with self._lock:
            self._plan = None
            self._remaining_failures = 0

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "plan": asdict(self._plan) if self._plan else None,
                "fail_first_remaining": self._remaining_failures,
                "counters": asdict(self.counters),
            }

    def decide(self, method: str) -> Fault:
        with self._lock:
            plan = self._plan
            if plan is None or method.upper() not in plan.methods:
                return Fault()
            stall = plan.stall_seconds if plan.stall_rate and self._rng.random() < plan.stall_rate else 0.0
            status = None
            if self._remaining_failures > 0:
                # cycle through the statuses so a fail_first run is fully deterministic
                status = plan.statuses[(plan.fail_first - self._remaining_failures) % len(plan.statuses)]
                self._remaining_failures -= 1
            elif plan.status_rate and self._rng.random() < plan.status_rate:
                status = self._rng.choice(plan.statuses)
            if stall:
                self.counters.stalled += 1
            if status is None:
                self.counters.passed += 1
            else:
                self.counters.failed += 1
                self.counters.by_status[status] = self.counters.by_status.get(status, 0) + 1
            return Fault(stall, status, plan.retry_after)

    def apply(self, method: str) -> Fault:
        """Decide, and serve the stall here (in the request thread); the caller answers the status."""
        fault = self.decide(method)
        if fault.stall_seconds:
            self._sleep(fault.stall_seconds)
        return fault
