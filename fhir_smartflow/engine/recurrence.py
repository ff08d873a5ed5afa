"""Recurrence times: occurrence k of a series that starts at the trigger event.

daily / weekly step on the clinic's local wall clock (09:00 stays 09:00 across DST); monthly keeps
the day of month (clamped to the month's last day); cron runs in the clinic's zone. Occurrence 0 is
the trigger itself; ``count`` counts all occurrences, ``until`` is the last local date allowed.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fhir_smartflow.engine.due import localize
from fhir_smartflow.engine.model import Recurring


def occurrence_time(rule: Recurring, start: datetime, k: int, tz: str) -> datetime:
    """The instant (UTC) of occurrence ``k`` (0 = ``start``)."""
    zone = ZoneInfo(tz)
    local = start.astimezone(zone).replace(tzinfo=None)
    if k == 0:
        return start.astimezone(UTC)
    if rule.cron:
        from croniter import croniter

        it = croniter(rule.cron, start.astimezone(zone))
        moment = start
        for _ in range(k):
            moment = it.get_next(datetime)
        return moment.astimezone(UTC)
    if rule.every == "daily":
        return localize(local + timedelta(days=k), zone)
    if rule.every == "weekly":
        return localize(local + timedelta(weeks=k), zone)
    months = local.month - 1 + k
    year, month = local.year + months // 12, months % 12 + 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    return localize(local.replace(year=year, month=month, day=day), zone)


def next_occurrence(rule: Recurring, start: datetime, current: int, tz: str) -> datetime | None:
    """When occurrence ``current + 1`` happens, or None when the series has ended."""
    k = current + 1
    if rule.count is not None and k >= rule.count:
        return None
    at = occurrence_time(rule, start, k, tz)
    return at if within_series(rule, k, at, tz) else None


def within_series(rule: Recurring, k: int, at: datetime, tz: str) -> bool:
    """Is occurrence ``k`` (0 = the trigger), happening at ``at``, still inside the series' end?"""
    if rule.count is not None and k >= rule.count:
        return False
    return rule.until is None or at.astimezone(ZoneInfo(tz)).date() <= rule.until


def recurring_from_dict(raw: dict[str, Any]) -> Recurring:
    """A flow's ``recurring`` table as carried in a Schedule payload (``until`` as an ISO date)."""
    until = raw.get("until")
    return Recurring(
        every=raw.get("every"),
        cron=raw.get("cron"),
        count=raw.get("count"),
        until=date.fromisoformat(until[:10]) if isinstance(until, str) else until,
    )
