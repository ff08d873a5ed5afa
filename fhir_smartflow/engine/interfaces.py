"""The seams between the ingest path, the engine and the write-back.

Each is a small Protocol so tests and the sandbox can supply their own implementation.
"""

from __future__ import annotations

from typing import Any, Protocol

from fhir_smartflow.engine.plan import Plan
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
