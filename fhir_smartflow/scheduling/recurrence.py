"""Recurrence arithmetic (pure): daily / weekly / monthly / cron series in the clinic time zone.

Occurrences keep their local wall-clock time across DST changes (a 09:00 weekly check-in stays at
09:00 local, so its UTC instant moves by an hour). A wall time that does not exist on a spring-forward
day is pushed forward by the gap (02:30 becomes 03:30); an ambiguous one takes the first (DST) instant.
Calendar-based series are computed from the series start, never from the previous occurrence, so a
monthly series started on the 31st stays on the last day of shorter months without drifting.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

EVERY = ("daily", "weekly", "monthly")


class RecurrenceError(ValueError):
    """A recurrence rule that cannot be used, naming the field."""


@dataclass(frozen=True)
class Recurrence:
    every: str | None = None  # daily | weekly | monthly
    cron: str | None = None  # five-field cron, evaluated in the clinic time zone
    count: int | None = None  # total occurrences, the first included
    until: date | datetime | None = None  # last allowed day (local, inclusive) or instant
    interval: int = 1  # every N days / weeks / months

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise RecurrenceError("recurring: exactly one of 'every' or 'cron' is required")
        if self.every is not None and self.every not in EVERY:
            raise RecurrenceError(f"recurring.every: must be one of {', '.join(EVERY)}, got {self.every!r}")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise RecurrenceError(f"recurring.cron: not a valid cron expression: {self.cron!r}")
        if self.count is not None and self.count < 1:
            raise RecurrenceError("recurring.count: must be at least 1")
        if self.interval < 1:
            raise RecurrenceError("recurring.interval: must be at least 1")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Recurrence:
        """From a flow's ``recurring = {...}`` table (or a Schedule payload copy of it)."""
        known = {"every", "cron", "count", "until", "interval"}
        unknown = set(raw) - known
        if unknown:
            raise RecurrenceError(f"recurring: unknown keys {sorted(unknown)}")
        until = raw.get("until")
        if isinstance(until, str):
            try:
                until = date.fromisoformat(until) if len(until) == 10 else datetime.fromisoformat(until)
            except ValueError:
                raise RecurrenceError(f"recurring.until: not an ISO date or date-time: {until!r}") from None
        return cls(
            every=raw.get("every"),
            cron=raw.get("cron"),
            count=raw.get("count"),
            until=until,
            interval=int(raw.get("interval", 1)),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interval": self.interval} if self.interval != 1 else {}
        for key in ("every", "cron", "count"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.until is not None:
            out["until"] = self.until.isoformat()
        return out

    def within_end(self, occurrence: int, at: datetime, tz: str) -> bool:
        """Is occurrence number ``occurrence`` (1-based) at instant ``at`` still part of the series?"""
        if self.count is not None and occurrence > self.count:
            return False
        if self.until is None:
            return True
        if isinstance(self.until, datetime):
            until = self.until if self.until.tzinfo else self.until.replace(tzinfo=ZoneInfo(tz))
            return at <= until
        return at.astimezone(ZoneInfo(tz)).date() <= self.until


def occurrence_at(rule: Recurrence, start: datetime, occurrence: int, tz: str) -> datetime:
    """The UTC instant of occurrence number ``occurrence`` (1 = ``start``) of an every-based series."""
    if rule.every is None:
        raise RecurrenceError("occurrence_at needs an 'every' rule; cron series step with next_occurrence")
    zone = ZoneInfo(tz)
    local = start.astimezone(zone)
    steps = (occurrence - 1) * rule.interval
    if rule.every == "daily":
        day = local.date() + timedelta(days=steps)
    elif rule.every == "weekly":
        day = local.date() + timedelta(weeks=steps)
    else:
        month_index = local.month - 1 + steps
        year, month = local.year + month_index // 12, month_index % 12 + 1
        day = date(year, month, min(local.day, calendar.monthrange(year, month)[1]))
    return _local_to_utc(datetime.combine(day, local.time().replace(tzinfo=None)), zone)


def next_occurrence(
    rule: Recurrence, start: datetime, previous: datetime, occurrence: int, tz: str
) -> tuple[int, datetime] | None:
    """Occurrence ``occurrence + 1`` after the one at ``previous``, or None when the series has ended."""
    nxt = occurrence + 1
    if rule.every is not None:
        at = occurrence_at(rule, start, nxt, tz)
    else:
        zone = ZoneInfo(tz)
        it = croniter(rule.cron, previous.astimezone(zone))
        at = it.get_next(datetime).astimezone(UTC)
    if not rule.within_end(nxt, at, tz):
        return None
    return nxt, at


def first_cron_occurrence(rule: Recurrence, not_before: datetime, tz: str) -> datetime:
    """The first cron match at or after ``not_before`` (the first occurrence of a cron series)."""
    zone = ZoneInfo(tz)
    it = croniter(rule.cron, (not_before - timedelta(seconds=1)).astimezone(zone))
    return it.get_next(datetime).astimezone(UTC)


def _local_to_utc(naive_local: datetime, zone: ZoneInfo) -> datetime:
    # PEP 495 fold=0: a nonexistent wall time takes the offset before the gap (so 02:30 lands at 03:30),
    # an ambiguous one takes the first (DST) instant.
    return naive_local.replace(tzinfo=zone, fold=0).astimezone(UTC)
