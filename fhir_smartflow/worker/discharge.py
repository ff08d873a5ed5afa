"""Whether a patient is discharged — the one check the pipeline and the follow-up jobs share.

Discharged means: the marker ``Keys.discharged(patient)`` is set (``track`` sets it on
``patient.discharged`` and clears it on ``patient.admitted``), or else the record says so
(``Patient.active`` is false). Only flows with ``not_after = "patient.discharged"`` ask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import TriggerEvent

PatientReader = Callable[[str], dict[str, Any] | None]


class DischargeMarkers:
    def __init__(self, conn: redis.Redis, keys: Keys) -> None:
        self.conn = conn
        self.keys = keys

    def track(self, trigger: TriggerEvent) -> None:
        """Set the marker on a discharge, clear it when the patient is admitted again."""
        if not trigger.patient:
            return
        if trigger.trigger == "patient.discharged":
            self.conn.set(self.keys.discharged(trigger.patient), trigger.id)
        elif trigger.trigger == "patient.admitted":
            self.conn.delete(self.keys.discharged(trigger.patient))

    def is_discharged(self, patient: str, read_patient: PatientReader) -> bool:
        """The marker, else ``Patient.active`` false (read only when there is no marker)."""
        if self.conn.exists(self.keys.discharged(patient)):
            return True
        resource = read_patient(patient)
        return bool(resource) and resource.get("active") is False
