"""FHIR date / dateTime / instant strings as aware UTC datetimes, tolerant of what real servers send."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime


def parse_instant(value: str | None) -> datetime | None:
    """A FHIR instant / dateTime / date as an aware UTC datetime; tolerant of what servers send.

    Date-only values mean midnight UTC; fractions longer than 6 digits (.NET sends 7) are truncated;
    values without an offset are taken as UTC. None when unparseable.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        if len(text) in (4, 7):  # FHIR partial dates: YYYY, YYYY-MM
            year, month = int(text[:4]), int(text[5:7]) if len(text) == 7 else 1
            return datetime(year, month, 1, tzinfo=UTC)
        text = text.replace("z", "Z").replace("Z", "+00:00")
        match = re.match(r"^(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", text)
        if match:
            head, frac, tail = match.groups()
            text = head + (frac[:7] if frac else "") + tail  # "." + at most 6 digits
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
