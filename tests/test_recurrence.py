"""Recurrence arithmetic in the clinic time zone, including DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from fhir_smartflow.scheduling.recurrence import (
    Recurrence,
    RecurrenceError,
    first_cron_occurrence,
    next_occurrence,
    occurrence_at,
)

NY = "America/New_York"


def series(rule: Recurrence, start: datetime, limit: int = 50) -> list[datetime]:
    out, previous, n = [start], start, 1
    while len(out) < limit:
        nxt = next_occurrence(rule, start, previous, n, NY)
        if nxt is None:
            break
        n, previous = nxt
        out.append(previous)
    return out


def test_weekly_keeps_local_time_across_spring_forward():
    start = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # Mon 09:00 EST
    got = series(Recurrence(every="weekly", count=3), start)
    # 2026-03-08 DST starts: 09:00 EDT is 13:00 UTC.
    assert got == [start, datetime(2026, 3, 9, 13, 0, tzinfo=UTC), datetime(2026, 3, 16, 13, 0, tzinfo=UTC)]


def test_daily_across_fall_back_and_count():
    start = datetime(2026, 10, 31, 12, 30, tzinfo=UTC)  # 08:30 EDT
    got = series(Recurrence(every="daily", count=3), start)
    assert got[1:] == [datetime(2026, 11, 1, 13, 30, tzinfo=UTC), datetime(2026, 11, 2, 13, 30, tzinfo=UTC)]


def test_daily_nonexistent_wall_time_moves_forward():
    start = datetime(2026, 3, 7, 7, 30, tzinfo=UTC)  # Sat 02:30 EST; Sunday 02:30 does not exist
    sunday = occurrence_at(Recurrence(every="daily"), start, 2, NY)
    assert sunday == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # = 03:30 EDT
    assert occurrence_at(Recurrence(every="daily"), start, 3, NY) == datetime(2026, 3, 9, 6, 30, tzinfo=UTC)


def test_monthly_clamps_to_month_end_without_drift():
    start = datetime(2026, 1, 31, 15, 0, tzinfo=UTC)  # 10:00 EST
    got = series(Recurrence(every="monthly", count=4), start)
    assert [d.date() for d in got] == [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)]
    assert got[2].hour == 14  # 10:00 EDT


def test_until_date_is_inclusive_in_local_time():
    start = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    got = series(Recurrence(every="weekly", until=date(2026, 3, 16)), start)
    assert len(got) == 3


def test_cron_in_clinic_time_zone_across_dst():
    rule = Recurrence(cron="0 9 * * MON", count=3)
    first = first_cron_occurrence(rule, datetime(2026, 3, 1, 0, 0, tzinfo=UTC), NY)
    assert first == datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    got = series(rule, first)
    assert got == [first, datetime(2026, 3, 9, 13, 0, tzinfo=UTC), datetime(2026, 3, 16, 13, 0, tzinfo=UTC)]


def test_from_dict_and_bad_rules():
    assert Recurrence.from_dict({"every": "weekly", "count": 12}).count == 12
    assert Recurrence.from_dict({"cron": "0 9 * * MON", "until": "2026-06-30"}).until == date(2026, 6, 30)
    with pytest.raises(RecurrenceError, match="exactly one"):
        Recurrence.from_dict({"count": 3})
    with pytest.raises(RecurrenceError, match="every"):
        Recurrence.from_dict({"every": "yearly"})
    with pytest.raises(RecurrenceError, match="cron"):
        Recurrence.from_dict({"cron": "not cron"})
    with pytest.raises(RecurrenceError, match="unknown"):
        Recurrence.from_dict({"every": "daily", "times": 3})
