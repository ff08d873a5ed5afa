"""A batch job accounts for its events' numbers in one transaction: the outcomes and what is left in
Redis are exactly those of accounting for them one after another (hypothesis, on the embedded
fakeredis).

Within the grace period, that is: a number whose grace ran out before its batch is recorded a gap by
the first event's sweep when accounted one by one, while the batch, which sweeps after all its numbers,
sees it arrive late (right: it did arrive).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_smartflow.connections import Keys
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.worker.gaps import GapTracker, record_status
from tests.support.fakes import RecordingRecovery

START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
SUB = "s1"
GRACE_SECONDS = 3600.0  # longer than the scenario: nothing is due by the clock


class SteppedClock:
    """Each phase of the scenario at its own minute, the same for both ways of accounting."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def scenario(prefix: list[int], status: int | None, numbers: list[int], batched: bool) -> dict[str, Any]:
    """Account for ``prefix`` one by one, then optionally a handshake reporting ``status`` events, then
    ``numbers`` batched or one by one; the outcomes and the state left, without the clock's values."""
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    keys = Keys("t:")
    clock = SteppedClock()
    recovery = RecordingRecovery()
    tracker = GapTracker(conn, keys, Metrics(conn, "t:"), GRACE_SECONDS, recovery, clock)
    for n in prefix:
        tracker.observe_all(SUB, [(n, None)])
    clock.now = START + timedelta(minutes=1)
    if status is not None:
        pipe = conn.pipeline()
        record_status(pipe, keys, SUB, "heartbeat", status, clock.now)
        pipe.execute()
    clock.now = START + timedelta(minutes=2)
    pairs = [(n, f"ts{n}") for n in numbers]
    one_by_one = [[pair] for pair in pairs]
    outcomes = tracker.observe_all(SUB, pairs) if batched else [tracker.observe_all(SUB, p)[0] for p in one_by_one]
    state = {k.decode(): v.decode() for k, v in conn.hgetall(keys.subscription(SUB)).items()}
    state.pop("last_restart", None)  # JSON with the clock's time: same clock, compared below by restarts
    return {
        "outcomes": outcomes,
        "state": state,
        "pending": tracker.pending(SUB),
        "pending_after": conn.hgetall(f"{keys.gaps(SUB)}:pending-after"),
        "gaps": [(g.first, g.last) for g in tracker.gaps(SUB)],
        "recovered": [(g.first, g.last) for g in recovery.gaps],
    }


numbers = st.lists(st.integers(min_value=1, max_value=25), max_size=12)


@settings(max_examples=60, deadline=None)
@given(prefix=numbers, status=st.none() | st.integers(min_value=0, max_value=30), batch=numbers)
def test_a_batch_accounts_for_its_numbers_as_one_by_one_would(
    prefix: list[int], status: int | None, batch: list[int]
) -> None:
    assert scenario(prefix, status, batch, batched=True) == scenario(prefix, status, batch, batched=False)


def test_out_of_order_numbers_in_one_batch_leave_nothing_pending() -> None:
    result = scenario([1, 2], None, [5, 3, 4, 6], batched=True)
    assert result["outcomes"] == ["jump", "late", "late", "next"]
    assert result["pending"] == [] and result["gaps"] == []
    assert result["state"]["highest"] == "6" and result["state"]["highest_timestamp"] == "ts6"


def test_a_restart_within_a_batch_makes_the_old_runs_missing_numbers_gaps_at_once() -> None:
    result = scenario([1, 2, 5], 0, [1, 2], batched=True)  # 3 and 4 were pending; the server restarted
    assert result["outcomes"] == ["restart", "next"]
    assert result["gaps"] == [(3, 4)] and result["recovered"] == [(3, 4)]
    assert result["state"]["restarts"] == "1"
