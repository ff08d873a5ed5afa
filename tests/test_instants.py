"""The one instant parser and formatter (fhir_smartflow/instants.py) and its date-only policy."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from fhir_smartflow.instants import format_instant, parse_instant

NEW_YORK = ZoneInfo("America/New_York")


def test_date_only_values_follow_the_callers_policy() -> None:
    assert parse_instant("2026-03-02") == datetime(2026, 3, 2, tzinfo=UTC)
    assert parse_instant("2026-03-02", zone=NEW_YORK) == datetime(2026, 3, 2, 5, tzinfo=UTC)
    assert parse_instant("2026-03-02", date_only="end-of-day") == datetime(2026, 3, 2, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_instant("2026-02", date_only="end-of-day") == datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_instant("2026-12", date_only="end-of-day") == datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_instant("2026", date_only="end-of-day") == datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_instant("2026-03-02", date_only="reject") is None
    assert parse_instant("2026-03-02T10:00:00Z", date_only="reject") == datetime(2026, 3, 2, 10, tzinfo=UTC)


def test_values_without_an_offset_are_read_in_the_zone_or_refused() -> None:
    assert parse_instant("2026-03-02T10:00:00") == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert parse_instant("2026-03-02T10:00:00", zone=NEW_YORK) == datetime(2026, 3, 2, 15, tzinfo=UTC)
    assert parse_instant("2026-03-02T10:00:00", zone=None) is None
    assert parse_instant("2026-03-02", zone=None) is None
    assert parse_instant("2026-03-02T10:00:00+01:00", zone=None) == datetime(2026, 3, 2, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    ["", " ", "not a date", "2026-13-01", "2026-02-30", "2026-03-02T25:00Z", "2026-03-02T10:00+24:00", "20260302"],
)
def test_anything_else_is_none_never_an_exception(text: str) -> None:
    assert parse_instant(text) is None


def test_non_strings_are_none() -> None:
    assert parse_instant(None) is None
    assert parse_instant(20260302) is None


def test_format_is_utc_with_z_at_the_asked_precision() -> None:
    moment = datetime(2026, 3, 2, 10, 0, 7, 123456, tzinfo=NEW_YORK)
    assert format_instant(moment) == "2026-03-02T15:00:07Z"
    assert format_instant(moment, "milliseconds") == "2026-03-02T15:00:07.123Z"
    assert format_instant(moment, "auto") == "2026-03-02T15:00:07.123456Z"
    assert format_instant(None) is None
    assert parse_instant(format_instant(moment, "auto")) == moment
    with pytest.raises(ValueError, match="naive"):
        format_instant(datetime(2026, 3, 2, 10))
