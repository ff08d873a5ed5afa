"""Due-date anchors: the instants on the record a due date is measured from.

Each anchor is found on the trigger's own resource when it is of the right type, else through the
ContextSource (searches by patient). A date without a time (Coverage.period.start = "2026-03-02")
means the start of that day in the clinic's time zone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fhir_smartflow.engine.interfaces import ContextSource
from fhir_smartflow.engine.plan import TriggerEvent
from fhir_smartflow.instants import parse_instant

KEPT_STATUSES = ("arrived", "fulfilled", "checked-in")


class AnchorMissing(LookupError):
    """The record has no date for this anchor (no admission, no primary coverage, ...)."""


def event_time(trigger: TriggerEvent) -> datetime:
    """When the trigger happened: the resource's meta.lastUpdated (stable across redeliveries),
    else the server's event timestamp, else when we received it."""
    resource = trigger.event.resource or {}
    for value in ((resource.get("meta") or {}).get("lastUpdated"), trigger.event.timestamp, trigger.event.received_at):
        parsed = parse_instant(value)
        if parsed is not None:
            return parsed
    raise AnchorMissing("the event has no time")


def resolve_anchor(anchor: str, trigger: TriggerEvent, context: ContextSource, tz: str) -> datetime:
    """The anchor instant (UTC); AnchorMissing with a readable reason when the record has none."""
    zone = ZoneInfo(tz)
    if anchor == "event":
        return event_time(trigger)
    resource = trigger.event.resource or {}
    rtype = trigger.event.resource_type
    patient = trigger.patient
    if anchor == "appointment_start":
        if rtype == "Appointment":
            return _required(parse_instant(resource.get("start"), zone=zone), "the appointment has no start")
        after = event_time(trigger)
        starts = [
            s for s in _starts(_search(context, "Appointment", patient, {"status": "booked"}), zone) if s >= after
        ]
        return _required(min(starts, default=None), "the patient has no upcoming booked appointment")
    if anchor == "first_kept_appointment":
        found = _search(context, "Appointment", patient, {"status": ",".join(KEPT_STATUSES)})
        if rtype == "Appointment" and resource.get("status") in KEPT_STATUSES:
            found = [*found, resource]
        kept = [a for a in found if a.get("status") in KEPT_STATUSES]
        return _required(min(_starts(kept, zone), default=None), "the patient has no kept appointment")
    if anchor in ("admission", "discharge"):
        encounters = [resource] if rtype == "Encounter" else _search(context, "Encounter", patient, {})
        key = "start" if anchor == "admission" else "end"
        instants = [parse_instant((e.get("period") or {}).get(key), zone=zone) for e in encounters]
        found_instants = [i for i in instants if i is not None]
        what = "admission (Encounter.period.start)" if anchor == "admission" else "discharge (Encounter.period.end)"
        return _required(max(found_instants, default=None), f"no {what} on the record")
    if anchor == "insurance_effective":
        coverages = _search(context, "Coverage", patient, {"status": "active"}, param="beneficiary")
        if rtype == "Coverage" and resource.get("status") == "active":
            coverages = [c for c in coverages if c.get("id") != resource.get("id")] + [resource]
        primary = primary_coverage(coverages)
        if primary is None:
            raise AnchorMissing("the patient has no active coverage")
        start = parse_instant((primary.get("period") or {}).get("start"), zone=zone)
        return _required(start, f"the primary coverage Coverage/{primary.get('id')} has no period.start")
    raise AnchorMissing(f"unknown anchor {anchor!r}")


def primary_coverage(coverages: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The coverage with the lowest ``order`` (no order counts as last; ties by id)."""
    if not coverages:
        return None
    return min(
        coverages, key=lambda c: (c.get("order") if isinstance(c.get("order"), int) else 10**9, str(c.get("id", "")))
    )


def _required(value: datetime | None, reason: str) -> datetime:
    if value is None:
        raise AnchorMissing(reason)
    return value


def _starts(appointments: list[Mapping[str, Any]], zone: ZoneInfo) -> list[datetime]:
    return [s for s in (parse_instant(a.get("start"), zone=zone) for a in appointments) if s is not None]


def _search(
    context: ContextSource, rtype: str, patient: str | None, extra: dict[str, str], param: str = "patient"
) -> list[dict[str, Any]]:
    if not patient:
        raise AnchorMissing(f"no patient on the trigger to search {rtype} for")
    return [r for r in context.search(rtype, {param: patient, **extra}) if r.get("resourceType", rtype) == rtype]
