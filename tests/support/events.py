"""Resource events as the webhook would queue them, for tests of the queue and the worker."""

from __future__ import annotations

from typing import Any

from fhir_smartflow.events import ResourceEvent


def patient_event(number: int | None = None, version: str | None = "1", rid: str = "p1", **kw: Any) -> ResourceEvent:
    """A full-resource Patient event of subscription ``sub-a``; numbered ones carry a matching timestamp."""
    return ResourceEvent(
        subscription="sub-a",
        resource_type="Patient",
        resource_id=rid,
        received_at="2026-11-25T10:00:00+00:00",
        event_number=number,
        version_id=version,
        timestamp=f"2026-11-25T10:00:{number or 0:02d}Z" if number else None,
        resource={"resourceType": "Patient", "id": rid},
        **kw,
    )
