"""FHIR date / dateTime / instant strings ↔ aware UTC datetimes: the one parser and the one formatter.

``parse_instant`` reads what real servers send and returns an aware UTC datetime, or None when the
value is not a date or date-time (never raises). The rules, the same for every caller:

- ``2026-03-02T10:00:00+01:00``, ``...Z`` (also ``z``): the instant, in UTC. Fractions longer than 6
  digits (.NET sends 7) are truncated; a time without seconds (``T10:00``) is accepted.
- A date-time without an offset (not valid FHIR, but sent) is taken in ``zone``.
- A value without a time (``2026``, ``2026-03``, ``2026-03-02``) follows ``date_only``:

  ``"start-of-day"`` (default)  the first instant of that year / month / day in ``zone``;
  ``"end-of-day"``              its last microsecond in ``zone`` — for the end of a ``Period``, so a
                                bare end date still covers its whole day;
  ``"reject"``                  None — where only an exact instant makes sense.
- ``zone=None``: the value must carry its own offset; dates and date-times without one are None
  (``meta.lastUpdated`` comparisons, command-line instants).

The zone is UTC unless the caller knows better: the engine reads anchor dates (Coverage.period.start
= "2026-03-02") in the clinic's zone.

``format_instant`` writes a FHIR instant: UTC, with ``Z``; ``precision`` "seconds" (the default,
what we write into resources), "milliseconds" (Provenance.recorded) or "auto" (microseconds when
there are any). A naive datetime is refused: its zone would be a guess. None gives None (an optional
element such as a due date that is not set).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Literal, overload

DateOnly = Literal["start-of-day", "end-of-day", "reject"]
Precision = Literal["seconds", "milliseconds", "auto"]

_FHIR_DATETIME = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:[T ](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<offset>[Zz]|[+-]\d{2}:?\d{2})?)?)?)?$"
)


def parse_instant(value: object, *, date_only: DateOnly = "start-of-day", zone: tzinfo | None = UTC) -> datetime | None:
    """A FHIR date / dateTime / instant as an aware UTC datetime, or None (see the module docstring)."""
    if not isinstance(value, str):
        return None
    match = _FHIR_DATETIME.match(value.strip())
    if match is None:
        return None
    part = match.groupdict()
    try:
        if part["hour"] is None:
            return _date_only(int(part["year"]), part["month"], part["day"], date_only, zone)
        offset = _offset(part["offset"])
        if offset is None and zone is None:
            return None
        moment = datetime(
            int(part["year"]),
            int(part["month"]),
            int(part["day"]),
            int(part["hour"]),
            int(part["minute"]),
            int(part["second"] or 0),
            int((part["fraction"] or "0")[:6].ljust(6, "0")),
            tzinfo=offset or zone,
        )
    except ValueError:  # month 13, hour 25, ...
        return None
    return moment.astimezone(UTC)


@overload
def format_instant(moment: datetime, precision: Precision = "seconds") -> str: ...
@overload
def format_instant(moment: None, precision: Precision = "seconds") -> None: ...
def format_instant(moment: datetime | None, precision: Precision = "seconds") -> str | None:
    """``2026-03-02T15:00:00Z``: a FHIR instant in UTC (see the module docstring); None stays None."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"a naive datetime has no instant: {moment!r}")
    return moment.astimezone(UTC).isoformat(timespec=precision).replace("+00:00", "Z")


def _date_only(year: int, month: str | None, day: str | None, policy: DateOnly, zone: tzinfo | None) -> datetime | None:
    if policy == "reject" or zone is None:
        return None
    start = datetime(year, int(month or 1), int(day or 1), tzinfo=zone)
    if policy == "start-of-day":
        return start.astimezone(UTC)
    if day is not None:
        following = start + timedelta(days=1)
    elif month is not None:
        following = start.replace(year=year + start.month // 12, month=start.month % 12 + 1)
    else:
        following = start.replace(year=year + 1)
    return (following - timedelta(microseconds=1)).astimezone(UTC)


def _offset(text: str | None) -> tzinfo | None:
    if text is None:
        return None
    if text in ("Z", "z"):
        return UTC
    sign = 1 if text[0] == "+" else -1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset out of range: {text}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))
