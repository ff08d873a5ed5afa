"""The seams between the ingest path, the engine and the write-back.

Each is a small Protocol so tests and the sandbox can supply their own implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from fhir_smartflow.engine.plan import Deliver, Plan, Schedule
from fhir_smartflow.events import ResourceEvent


class Dispatcher(Protocol):
    """Receives every deduplicated ResourceEvent from the worker."""

    def dispatch(self, event: ResourceEvent) -> None: ...


class PriorState(Protocol):
    """The fields mappings care about from the last version of a resource we saw."""

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None: ...

    def put(self, resource_type: str, resource_id: str, resource: dict[str, Any]) -> None: ...


class ContextSource(Protocol):
    """Resources the planner needs besides the trigger's own: Encounter, Coverage, Practitioner, ..."""

    def read(self, reference: str) -> dict[str, Any] | None: ...

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]: ...


class Executor(Protocol):
    """Carries out a plan: writes, deliveries, scheduled jobs, cancellations. Idempotent."""

    def execute(self, plan: Plan) -> Any: ...


class WriteBackTarget(Protocol):
    """Where the executor writes resources: the FHIR server (``fhir``) or the local store + OpenEMR mirror.

    ``create`` is idempotent by business identifier (system from config, value = ``identifier``): a second
    call with the same identifier returns the existing resource and creates nothing.
    """

    def create(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]: ...

    def read(self, reference: str) -> dict[str, Any] | None: ...

    def update(self, resource: dict[str, Any]) -> dict[str, Any]: ...

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one Deliver action; the executor maps it onto the Communication."""

    status: str  # completed | not-done | deferred | retry
    reason: str = ""  # statusReason text for not-done, why deferred / retried
    provider_id: str | None = None  # the channel provider's message id
    retry_at: datetime | None = None  # for deferred (quiet hours, rate limit) and retry
    # not-done because delivery failed (provider rejection, no usable address, retries exhausted, channel
    # not configured), as opposed to declined (patient opt-out, withdrawn): the owner may need to know.
    failed: bool = False


class Deliverer(Protocol):
    """Resolves the recipient's address and preferences, applies quiet hours / opt-out / rate limits, sends."""

    def deliver(
        self, action: Deliver, recipient: dict[str, Any] | None, consents: list[dict[str, Any]], now: datetime
    ) -> DeliveryOutcome: ...


class Scheduler(Protocol):
    """Runs Schedule actions later (reminders, overdue checks, recurrences); cancels a group's pending jobs."""

    def schedule(self, action: Schedule) -> None: ...

    def cancel(self, group: str | None = None, patient: str | None = None, flows: tuple[str, ...] = ()) -> int: ...
