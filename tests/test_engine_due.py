"""Due-date arithmetic: DST, weekend and holiday policies, with hypothesis properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_smartflow.engine.due import clinic_holidays, compute_due

NY = "America/New_York"
NYZ = ZoneInfo(NY)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=NYZ)


def test_one_day_across_spring_forward_keeps_wall_time():
    due = compute_due(local(2026, 3, 7, 9, 0), 1, "days", "after", NY)
    assert due == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)  # 09:00 EDT, only 23 hours later
    assert due.astimezone(NYZ).hour == 9


def test_hours_are_elapsed_time_across_dst():
    due = compute_due(local(2026, 3, 8, 1, 0), 2, "hours", "after", NY)
    assert due.astimezone(NYZ) == local(2026, 3, 8, 4, 0)  # 01:00 EST + 2h = 04:00 EDT


def test_nonexistent_wall_time_moves_forward():
    due = compute_due(local(2026, 3, 7, 2, 30), 1, "days", "after", NY)
    assert due.astimezone(NYZ).replace(tzinfo=None) == datetime(2026, 3, 8, 3, 30)


def test_weeks_before_and_fall_back():
    due = compute_due(local(2026, 11, 9, 9, 0), 2, "weeks", "before", NY)
    assert due == datetime(2026, 10, 26, 13, 0, tzinfo=UTC)  # 09:00 EDT


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("keep", local(2026, 3, 14, 10, 0)),
        ("next-monday", local(2026, 3, 16, 10, 0)),
        ("previous-friday", local(2026, 3, 13, 10, 0)),
    ],
)
def test_weekend_policies(policy, expected):
    assert compute_due(local(2026, 3, 13, 10, 0), 1, "days", "after", NY, policy) == expected.astimezone(UTC)


def test_holidays_count_as_days_off():
    us_ny = clinic_holidays("US", "NY")
    assert date(2026, 7, 3) in us_ny  # Independence Day observed (July 4 is a Saturday)
    due = compute_due(local(2026, 7, 2, 9, 0), 2, "days", "after", NY, "next-monday", us_ny)
    assert due.astimezone(NYZ) == local(2026, 7, 6, 9, 0)  # Sat 4th → Mon 6th
    due = compute_due(local(2026, 7, 2, 9, 0), 1, "days", "after", NY, "previous-friday", us_ny)
    assert due.astimezone(NYZ) == local(2026, 7, 2, 9, 0)  # Fri 3rd is a holiday → Thu 2nd
    assert clinic_holidays("") is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="unit"):
        compute_due(local(2026, 1, 1, 9, 0), 1, "fortnights", "after", NY)
    with pytest.raises(ValueError, match="aware"):
        compute_due(datetime(2026, 1, 1), 1, "days", "after", NY)


ZONES = st.sampled_from(["America/New_York", "Europe/London", "Australia/Sydney", "America/Los_Angeles", "UTC"])
INSTANTS = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)
UNITS = st.sampled_from(["minutes", "hours", "days", "weeks"])
HOLIDAYS = clinic_holidays("US")


@settings(max_examples=100, deadline=None)
@given(
    anchor=INSTANTS,
    amount=st.integers(0, 60),
    unit=UNITS,
    tz=ZONES,
    policy=st.sampled_from(["previous-friday", "next-monday"]),
    direction=st.sampled_from(["after", "before"]),
)
def test_never_on_a_day_off_and_moves_little(anchor, amount, unit, tz, policy, direction):
    kept = compute_due(anchor, amount, unit, direction, tz, "keep", HOLIDAYS)
    moved = compute_due(anchor, amount, unit, direction, tz, policy, HOLIDAYS)
    moved_local = moved.astimezone(ZoneInfo(tz))
    assert moved.tzinfo == UTC
    assert moved_local.weekday() < 5 and moved_local.date() not in HOLIDAYS
    # Never further than a weekend plus the holidays in between (plus an hour of DST slack).
    span = range(-7, 8)
    days_off = sum(1 for d in span if (kept.astimezone(ZoneInfo(tz)).date() + timedelta(days=d)) in HOLIDAYS)
    assert abs(moved - kept) <= timedelta(days=2 + days_off, hours=1)
    assert (moved <= kept) if policy == "previous-friday" else (moved >= kept)


@settings(max_examples=100, deadline=None)
@given(
    a=INSTANTS,
    delta=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=9)),
    amount=st.integers(0, 30),
    unit=UNITS,
    tz=ZONES,
    policy=st.sampled_from(["keep", "previous-friday", "next-monday"]),
)
def test_monotonic_in_the_anchor(a, delta, amount, unit, tz, policy):
    """A later anchor never gives an earlier due day (the instant itself, with policy keep).

    With a moving policy only the day is monotonic: Saturday 10:00 → Friday 10:00 is earlier in the
    day than a Friday 11:00 anchor's due, by design (the time of day is kept)."""
    zone = ZoneInfo(tz)
    first = compute_due(a, amount, unit, "after", tz, policy, HOLIDAYS)
    second = compute_due(a + delta, amount, unit, "after", tz, policy, HOLIDAYS)
    if policy == "keep":
        assert first <= second
    assert first.astimezone(zone).date() <= second.astimezone(zone).date()
