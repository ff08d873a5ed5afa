from datetime import UTC, datetime

from fhir_smartflow.retry import RetryPolicy, parse_retry_after


def test_backoff_grows_and_is_capped() -> None:
    p = RetryPolicy(base_seconds=1, max_seconds=10, jitter=False)
    assert [p.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]


def test_retry_after_wins_and_is_capped() -> None:
    p = RetryPolicy(base_seconds=1, max_seconds=10)
    assert p.delay(1, "3") == 3
    assert p.delay(1, "3600") == 10


def test_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:07 GMT", now) == 7
    assert parse_retry_after("soon") is None
