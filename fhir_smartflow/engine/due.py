"""Due-date arithmetic: anchor + offset in the clinic's IANA zone, then the weekend / holiday policy.

- ``days`` / ``weeks`` are calendar units on the local wall clock: "1 day after 2026-03-07 09:00
  America/New_York" is 09:00 local on 03-08 although only 23 hours pass (DST starts that night).
  A wall time that does not exist (the spring-forward hour) moves forward by the gap; an ambiguous
  one (the fall-back hour) takes its first occurrence.
- ``minutes`` / ``hours`` are elapsed time: "2 hours after" is exactly 7200 seconds later.
- Weekend policy ``previous-friday`` / ``next-monday`` moves a due date falling on a Saturday,
  Sunday or holiday to the previous / next working day at the same local time; ``keep`` leaves it.
The result is always an aware UTC datetime.
"""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

_CALENDAR_DAYS = {"days": 1, "weeks": 7}
_ELAPSED = {"minutes": 60, "hours": 3600}
# A policy never walks further than this (a long holiday run would otherwise loop for ever).
_MAX_SHIFT_DAYS = 14


def compute_due(
    anchor: datetime,
    amount: int,
    unit: str,
    direction: str = "after",
    tz: str = "UTC",
    weekend: str = "keep",
    holidays: Container[date] | None = None,
) -> datetime:
    """The due instant (UTC) ``amount`` ``unit`` ``direction`` ``anchor``, per the weekend policy."""
    if anchor.tzinfo is None:
        raise ValueError("anchor must be timezone-aware")
    if direction not in ("after", "before"):
        raise ValueError(f"direction must be 'after' or 'before', got {direction!r}")
    if amount < 0:
        raise ValueError("amount must not be negative")
    sign = 1 if direction == "after" else -1
    zone = ZoneInfo(tz)
    if unit in _ELAPSED:
        moved = anchor.astimezone(UTC) + timedelta(seconds=sign * amount * _ELAPSED[unit])
    elif unit in _CALENDAR_DAYS:
        moved = add_local_days(anchor, sign * amount * _CALENDAR_DAYS[unit], zone)
    else:
        raise ValueError(f"unit must be minutes, hours, days or weeks, got {unit!r}")
    return apply_weekend_policy(moved, weekend, zone, holidays)


def add_local_days(instant: datetime, days: int, zone: ZoneInfo) -> datetime:
    """``instant`` moved ``days`` calendar days on the local wall clock of ``zone`` (UTC result)."""
    local = instant.astimezone(zone)
    wall = local.replace(tzinfo=None) + timedelta(days=days)
    return localize(wall, zone)


def localize(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive local wall time in ``zone`` as a UTC instant (gap → shifted forward, fold → first)."""
    # PEP 495: fold=0 reads a gap time with the offset from before the transition (so 02:30 on the
    # spring-forward night becomes 03:30 local) and an ambiguous time as its first occurrence.
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def is_day_off(day: date, holidays: Container[date] | None) -> bool:
    return day.weekday() >= 5 or (holidays is not None and day in holidays)


def apply_weekend_policy(
    instant: datetime, policy: str, zone: ZoneInfo, holidays: Container[date] | None = None
) -> datetime:
    if policy == "keep":
        return instant.astimezone(UTC)
    if policy not in ("previous-friday", "next-monday"):
        raise ValueError(f"weekend must be keep, previous-friday or next-monday, got {policy!r}")
    step = -1 if policy == "previous-friday" else 1
    wall = instant.astimezone(zone).replace(tzinfo=None)
    for _ in range(_MAX_SHIFT_DAYS):
        if not is_day_off(wall.date(), holidays):
            break
        wall += timedelta(days=step)
    return localize(wall, zone)


def clinic_holidays(country: str, subdivision: str = "") -> Container[date] | None:
    """The clinic's holiday calendar from the ``holidays`` package, or None when no country is set."""
    if not country:
        return None
    import holidays

    return holidays.country_holidays(country, subdiv=subdivision or None)
