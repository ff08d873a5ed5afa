"""Event-number bookkeeping per subscription: gaps (missed notifications) and server restarts.

Redis layout (``s`` = subscription id):
- ``Keys.subscription(s)`` hash. Written by the webhook: ``last_seen``, ``count:<type>``,
  ``last_event_number``, and for handshakes / heartbeats ``status_at`` + ``status_events_since_start``.
  Written here: ``highest`` (highest event number seen), ``highest_at``, ``highest_timestamp``,
  ``restarts``, ``last_restart`` (JSON).
- ``Keys.gaps(s)`` list: recorded gaps, JSON ``{subscription, first, last, detected_at, after_timestamp}``.
- ``Keys.gaps(s) + ":pending"`` sorted set: missing numbers, scored by when their grace period ends;
  ``... + ":pending-after"`` hash: missing number → timestamp of the last event seen before it.

A jump beyond ``highest + 1`` makes the numbers in between *pending*; a late delivery removes its
number; numbers still pending when the grace period ends are recorded as gaps (metric ``gaps``) and
handed to `GapRecovery`. A number that falls back below ``highest`` after a handshake or heartbeat
that reported fewer events is a server restart (HAPI keeps its counters in memory): it is logged,
counted (``server_restarts``) and recorded, and the count starts again from that number.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis
from redis.client import Pipeline

from fhir_smartflow.connections import Keys
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.redis_watch import watch_read_write
from fhir_smartflow.worker.seams import GapRecovery

log = logging.getLogger(__name__)

MAX_PENDING_PER_JUMP = 10_000  # beyond this a jump is recorded as one gap at once
MAX_RECORDED_GAPS = 1_000


@dataclass(frozen=True)
class Gap:
    subscription: str
    first: int  # first missing event number
    last: int  # last missing event number
    detected_at: str  # ISO UTC
    after_timestamp: str | None  # server timestamp of the last event seen before the gap

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _s(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in sorted(set(numbers)):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def record_status(
    pipe: Any, keys: Keys, subscription: str, kind: str, events_since_start: int | None, now: datetime
) -> None:
    """Webhook side: a handshake / heartbeat / status was received (queued on ``pipe``)."""
    key = keys.subscription(subscription)
    pipe.hset(key, mapping={"status_at": now.timestamp(), "last_status_type": kind})
    if events_since_start is not None:
        pipe.hset(key, "status_events_since_start", events_since_start)
    else:
        pipe.hdel(key, "status_events_since_start")


class GapTracker:
    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        metrics: Metrics,
        grace_seconds: float,
        recovery: GapRecovery,
        clock: Callable[[], datetime],
    ) -> None:
        self.conn = conn
        self.keys = keys
        self.metrics = metrics
        self.grace = grace_seconds
        self.recovery = recovery
        self.clock = clock

    def _pending(self, sub: str) -> tuple[str, str]:
        base = self.keys.gaps(sub)
        return f"{base}:pending", f"{base}:pending-after"

    def observe(self, sub: str, number: int, timestamp: str | None) -> str:
        """Account for event ``number``; returns first | next | jump | late | restart | repeat | stale."""
        now = self.clock()
        sub_key = self.keys.subscription(sub)
        pending, pending_after = self._pending(sub)

        def decide(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> str:
            state = {k.decode(): v.decode() for k, v in values[0].items()}
            highest = int(state["highest"]) if "highest" in state else None
            advance = {"highest": number, "highest_at": now.timestamp(), "highest_timestamp": timestamp or ""}
            if highest is None or number == highest + 1:
                outcome = "first" if highest is None else "next"
                pipe.hset(sub_key, mapping=advance)
            elif number > highest:
                outcome = "jump"
                missing = range(highest + 1, min(number, highest + 1 + MAX_PENDING_PER_JUMP))
                before = state.get("highest_timestamp") or ""
                pipe.zadd(pending, {str(m): now.timestamp() + self.grace for m in missing})
                pipe.hset(pending_after, mapping={str(m): before for m in missing})
                pipe.hset(sub_key, mapping=advance)
            elif number == highest:
                outcome = "repeat"
            elif values[1] is not None:  # the number is pending: it arrived late
                outcome = "late"
                pipe.zrem(pending, str(number))
                pipe.hdel(pending_after, str(number))
            elif self._restarted(state, highest):
                outcome = "restart"
                record = {"at": now.isoformat(), "from": highest, "to": number}
                old_run = [m.decode() for m in read("ZRANGE", pending, 0, -1)]
                pipe.hset(sub_key, mapping={**advance, "last_restart": json.dumps(record)})
                pipe.hincrby(sub_key, "restarts", 1)
                if old_run:  # the old run's missing numbers can no longer arrive: due now
                    pipe.zadd(pending, dict.fromkeys(old_run, 0))
            else:
                outcome = "stale"
            # What the sweep would ask next, in the same round trip (most events find nothing due).
            pipe.zrangebyscore(pending, "-inf", now.timestamp())
            return outcome

        # WATCH with the state and the number's pending score in one round trip, the writes in another.
        reads = [("HGETALL", sub_key), ("ZSCORE", pending, str(number))]
        outcome, results = watch_read_write(self.conn, [sub_key, pending], reads, decide)
        due = results[-1]
        if outcome == "restart":
            self.metrics.inc("server_restarts", subscription=sub)
            log.warning("subscription %s: event numbers fell back to %s: the server restarted", sub, number)
        elif outcome == "stale":
            log.info("subscription %s: event #%s arrived after a higher number; processed anyway", sub, number)
        if due:
            self._record(sub, [m.decode() for m in due], now)
        return outcome

    @staticmethod
    def _restarted(state: dict[str, str], highest: int) -> bool:
        """A handshake / heartbeat came after our highest number and reported fewer events."""
        status_at = float(state.get("status_at") or 0)
        if status_at <= float(state.get("highest_at") or 0):
            return False
        reported = state.get("status_events_since_start")
        return reported is None or int(reported) < highest

    def sweep(self, sub: str) -> list[Gap]:
        """Record the pending numbers whose grace period is over; returns the gaps recorded."""
        now = self.clock()
        due = [m.decode() for m in self.conn.zrangebyscore(self._pending(sub)[0], "-inf", now.timestamp())]
        return self._record(sub, due, now) if due else []

    def _record(self, sub: str, due: list[str], now: datetime) -> list[Gap]:
        """Claim the ``due`` pending numbers (each once across workers) and record them as gaps."""
        pending, pending_after = self._pending(sub)
        taken: list[int] = []
        after: dict[int, str | None] = {}
        for member in due:
            # zrem is the claim: with several workers sweeping, each number is recorded once.
            if self.conn.zrem(pending, member):
                taken.append(int(member))
                after[int(member)] = _s(self.conn.hget(pending_after, member)) or None
                self.conn.hdel(pending_after, member)
        gaps = [Gap(sub, first, last, now.isoformat(), after.get(first)) for first, last in _ranges(taken)]
        for gap in gaps:
            pipe = self.conn.pipeline()
            pipe.rpush(self.keys.gaps(sub), json.dumps(gap.to_dict()))
            pipe.ltrim(self.keys.gaps(sub), -MAX_RECORDED_GAPS, -1)
            self.metrics.inc("gaps", pipe=pipe, subscription=sub)
            pipe.execute()
            log.warning("subscription %s: events %s..%s never arrived: gap recorded", sub, gap.first, gap.last)
            try:
                self.recovery.recover(sub, gap)
            except Exception:  # recovery is best effort; the gap stays recorded for an operator
                log.exception("gap recovery failed for subscription %s events %s..%s", sub, gap.first, gap.last)
        return gaps

    def gaps(self, sub: str) -> list[Gap]:
        return [Gap(**json.loads(raw)) for raw in self.conn.lrange(self.keys.gaps(sub), 0, -1)]

    def pending(self, sub: str) -> list[int]:
        return sorted(int(m) for m in self.conn.zrange(self._pending(sub)[0], 0, -1))
