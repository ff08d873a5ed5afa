"""What the pure engine needs from outside: a way to read the record while it plans.

The worker's other seams live with their implementations: ``Dispatcher`` / ``ResourceFetcher`` /
``GapRecovery`` in worker/seams.py, ``PriorState`` in worker/prior.py, ``Executor`` in
worker/execute.py, ``WriteBackTarget`` in fhir/target.py, ``Deliverer`` in delivery/outcome.py,
``Scheduler`` in scheduling/scheduler.py.
"""

from __future__ import annotations

from typing import Any, Protocol


class ContextSource(Protocol):
    """Resources the planner needs besides the trigger's own: Encounter, Coverage, Practitioner, ..."""

    def read(self, reference: str) -> dict[str, Any] | None: ...

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]: ...
