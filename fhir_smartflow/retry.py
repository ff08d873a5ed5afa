"""Backoff and retry policy, one small piece shared by the FHIR client, channels and jobs.

Exponential backoff with full jitter, capped; a server's Retry-After wins when it is given.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_seconds: float = 0.5
    max_seconds: float = 30.0
    jitter: bool = True

    def delay(self, attempt: int, retry_after: str | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        hinted = parse_retry_after(retry_after)
        if hinted is not None:
            return min(hinted, self.max_seconds)
        ceiling = min(self.max_seconds, self.base_seconds * (2 ** (attempt - 1)))
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(ceiling / 2, ceiling)

    def should_retry(self, attempt: int) -> bool:
        return attempt <= self.max_retries


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
