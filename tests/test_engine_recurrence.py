"""Recurrence arithmetic (engine/recurrence.py) in the clinic time zone, including DST changes.

Occurrence 0 is the trigger itself; ``count`` counts every occurrence; ``until`` is an inclusive local date.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from fhir_smartflow.engine.model import Recurring
from fhir_smartflow.engine.recurrence import next_occurrence, recurring_from_dict, within_series

NY = "America/New_York"


def series(rule: Recurring, start: datetime, limit: int = 50) -> list[datetime]:
    out, k = [start], 0
    while len(out) < limit:
        nxt = next_occurrence(rule, start, k, NY)
        if nxt is None:
            break
        out.append(nxt)
        k += 1
    return out


def test_weekly_keeps_local_time_across_spring_forward() -> None:
    start = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # Mon 09:00 EST
    got = series(Recurring(every="weekly", count=3), start)
    # 2026-03-08 DST starts: 09:00 EDT is 13:00 UTC.
    assert got == [start, datetime(2026, 3, 9, 13, 0, tzinfo=UTC), datetime(2026, 3, 16, 13, 0, tzinfo=UTC)]


def test_daily_across_fall_back_and_count() -> None:
    start = datetime(2026, 10, 31, 12, 30, tzinfo=UTC)  # 08:30 EDT
    got = series(Recurring(every="daily", count=3), start)
    assert got[1:] == [datetime(2026, 11, 1, 13, 30, tzinfo=UTC), datetime(2026, 11, 2, 13, 30, tzinfo=UTC)]


def test_monthly_clamps_to_month_end_without_drift() -> None:
    start = datetime(2026, 1, 31, 15, 0, tzinfo=UTC)  # 10:00 EST
    got = series(Recurring(every="monthly", count=4), start)
    assert [d.date() for d in got] == [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)]
    assert got[2].hour == 14  # 10:00 EDT


def test_until_date_is_inclusive_in_local_time() -> None:
    start = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    assert len(series(Recurring(every="weekly", until=date(2026, 3, 16)), start)) == 3


def test_cron_in_clinic_time_zone_across_dst() -> None:
    start = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # Mon 09:00 EST
    got = series(Recurring(cron="0 9 * * MON", count=3), start)
    assert got == [start, datetime(2026, 3, 9, 13, 0, tzinfo=UTC), datetime(2026, 3, 16, 13, 0, tzinfo=UTC)]


def test_within_series_and_payload_rules() -> None:
    at = datetime(2026, 3, 16, 13, 0, tzinfo=UTC)
    assert within_series(Recurring(every="weekly", count=4), 3, at, NY)
    assert not within_series(Recurring(every="weekly", count=4), 4, at, NY)
    assert not within_series(Recurring(every="weekly", until=date(2026, 3, 15)), 2, at, NY)
    rule = recurring_from_dict({"cron": "0 9 * * MON", "until": "2026-06-30"})
    assert rule == Recurring(cron="0 9 * * MON", until=date(2026, 6, 30))
