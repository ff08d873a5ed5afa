"""Due-date anchors: the instants on the record a due date is measured from.

Each anchor is found on the trigger's own resource when it is of the right type, else through the
ContextSource (searches by patient). A date without a time (Coverage.period.start = "2026-03-02")
means that day at the clinic's ``date_only_due_time`` (end of business by default), and the anchor says
it was date-only, so texts can show the due as a date alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from fhir_smartflow.engine.due import localize
from fhir_smartflow.engine.interfaces import ContextSource
from fhir_smartflow.engine.plan import TriggerEvent
from fhir_smartflow.instants import parse_instant

KEPT_STATUSES = ("arrived", "fulfilled", "checked-in")


class AnchorMissing(LookupError):
    """The record has no date for this anchor (no admission, no primary coverage, ...)."""


@dataclass(frozen=True)
class AnchorInstant:
    at: datetime  # UTC
    date_only: bool = False  # the record gave a date without a time (placed at the clinic's default time)


def event_source(trigger: TriggerEvent) -> tuple[datetime, str]:
    """When the trigger happened and where that time comes from: the resource's meta.lastUpdated
    (stable across redeliveries), else the server's event timestamp, else when we received it."""
    resource = trigger.event.resource or {}
    sources = (
        (
            (resource.get("meta") or {}).get("lastUpdated"),
            f"meta.lastUpdated of {trigger.event.reference or 'the resource'}",
        ),
        (trigger.event.timestamp, "the notification's event timestamp"),
        (trigger.event.received_at, "the time the notification was received"),
    )
    for value, source in sources:
        parsed = parse_instant(value)
        if parsed is not None:
            return parsed, source
    raise AnchorMissing("the event has no time")


def event_time(trigger: TriggerEvent) -> datetime:
    return event_source(trigger)[0]


def resolve_anchor(anchor: str, trigger: TriggerEvent, context: ContextSource, tz: str) -> datetime:
    """The anchor instant (UTC), a date-only value at 00:00 local; AnchorMissing when the record has none."""
    return find_anchor(anchor, trigger, context, tz, "00:00").at


def find_anchor(
    anchor: str, trigger: TriggerEvent, context: ContextSource, tz: str, date_only_time: str
) -> AnchorInstant:
    """The anchor; a date without a time is that day at ``date_only_time`` (HH:MM, clinic time)."""
    zone = ZoneInfo(tz)
    if anchor == "event":
        return AnchorInstant(event_time(trigger))
    instant = _resolve(anchor, trigger, context, zone)
    if not instant.date_only:
        return instant
    hours, minutes = (int(part) for part in date_only_time.split(":"))
    day = instant.at.astimezone(zone).date()
    return AnchorInstant(localize(datetime.combine(day, time(hours, minutes)), zone), date_only=True)


def _resolve(anchor: str, trigger: TriggerEvent, context: ContextSource, zone: ZoneInfo) -> AnchorInstant:
    """The anchor from the record, a date-only value at 00:00 local (``find_anchor`` moves it)."""
    resource = trigger.event.resource or {}
    rtype = trigger.event.resource_type
    patient = trigger.patient
    if anchor == "appointment_start":
        if rtype == "Appointment":
            return _dated(resource.get("start"), zone, "the appointment has no start")
        after = event_time(trigger)
        booked = _search(context, "Appointment", patient, {"status": "booked"})
        starts = [(s, a.get("start")) for a in booked if (s := parse_instant(a.get("start"), zone=zone)) and s >= after]
        return _dated(min(starts, default=(None, None))[1], zone, "the patient has no upcoming booked appointment")
    if anchor == "first_kept_appointment":
        found = _search(context, "Appointment", patient, {"status": ",".join(KEPT_STATUSES)})
        if rtype == "Appointment" and resource.get("status") in KEPT_STATUSES:
            found = [*found, resource]
        kept = [a for a in found if a.get("status") in KEPT_STATUSES]
        starts = [(s, a.get("start")) for a in kept if (s := parse_instant(a.get("start"), zone=zone))]
        return _dated(min(starts, default=(None, None))[1], zone, "the patient has no kept appointment")
    if anchor in ("admission", "discharge"):
        encounters = [resource] if rtype == "Encounter" else _search(context, "Encounter", patient, {})
        key = "start" if anchor == "admission" else "end"
        values = [(e.get("period") or {}).get(key) for e in encounters]
        dated = [(i, v) for v in values if (i := parse_instant(v, zone=zone)) is not None]
        what = "admission (Encounter.period.start)" if anchor == "admission" else "discharge (Encounter.period.end)"
        return _dated(max(dated, default=(None, None))[1], zone, f"no {what} on the record")
    if anchor == "insurance_effective":
        coverages = _search(context, "Coverage", patient, {"status": "active"}, param="beneficiary")
        if rtype == "Coverage" and resource.get("status") == "active":
            coverages = [c for c in coverages if c.get("id") != resource.get("id")] + [resource]
        primary = primary_coverage(coverages)
        if primary is None:
            raise AnchorMissing("the patient has no active coverage")
        start = (primary.get("period") or {}).get("start")
        return _dated(start, zone, f"the primary coverage Coverage/{primary.get('id')} has no period.start")
    raise AnchorMissing(f"unknown anchor {anchor!r}")


def primary_coverage(coverages: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The coverage with the lowest ``order`` (no order counts as last; ties by id)."""
    if not coverages:
        return None
    return min(
        coverages, key=lambda c: (c.get("order") if isinstance(c.get("order"), int) else 10**9, str(c.get("id", "")))
    )


def _dated(value: Any, zone: ZoneInfo, reason: str) -> AnchorInstant:
    """A FHIR date / dateTime as an anchor (AnchorMissing with ``reason`` when there is none)."""
    parsed = parse_instant(value, zone=zone)
    if parsed is None:
        raise AnchorMissing(reason)
    return AnchorInstant(parsed, date_only="T" not in str(value))


def _search(
    context: ContextSource, rtype: str, patient: str | None, extra: dict[str, str], param: str = "patient"
) -> list[dict[str, Any]]:
    if not patient:
        raise AnchorMissing(f"no patient on the trigger to search {rtype} for")
    return [r for r in context.search(rtype, {param: patient, **extra}) if r.get("resourceType", rtype) == rtype]
