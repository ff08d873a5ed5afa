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

    def observe_all(self, sub: str, numbers: list[tuple[int, str | None]]) -> list[str]:
        """Account for events of ``sub`` in their order (a batch job's events), as one after another
        would, in one transaction (one more after a server restart: the old run's missing numbers are
        recorded before the new run can name them again); each outcome is first | next | jump | late |
        restart | repeat | stale."""
        outcomes: list[str] = []
        while len(outcomes) < len(numbers):
            outcomes += self._observe_until_restart(sub, numbers[len(outcomes) :])
        return outcomes

    def _observe_until_restart(self, sub: str, numbers: list[tuple[int, str | None]]) -> list[str]:
        """The outcomes of the first of ``numbers``, up to a restart (only ever first in a transaction)."""
        now = self.clock()
        sub_key = self.keys.subscription(sub)
        pending = self._pending(sub)[0]
        members = [str(number) for number, _ in numbers]

        def decide(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> list[str]:
            state = {k.decode(): v.decode() for k, v in values[0].items()}
            pending_now = {m for m, score in zip(members, values[1], strict=True) if score is not None}
            outcomes: list[str] = []
            for number, timestamp in numbers:
                outcome = self._classify(state, pending_now, number)
                if outcome == "restart" and outcomes:
                    break  # in a transaction of its own, which reads what this one wrote
                self._account(pipe, read, sub, state, pending_now, outcome, number, timestamp, now)
                outcomes.append(outcome)
                if outcome == "restart":
                    break  # the old run's numbers are recorded before the new run can name them again
            # What the sweep would ask next, in the same round trip (most events find nothing due).
            pipe.zrangebyscore(pending, "-inf", now.timestamp())
            return outcomes

        # WATCH with the state and the numbers' pending scores in one round trip, the writes in another.
        reads = [("HGETALL", sub_key), ("ZMSCORE", pending, *members)]
        outcomes, results = watch_read_write(self.conn, [sub_key, pending], reads, decide)
        for number, outcome in zip(members, outcomes, strict=False):
            if outcome == "restart":
                self.metrics.inc("server_restarts", subscription=sub)
                log.warning("subscription %s: event numbers fell back to %s: the server restarted", sub, number)
            elif outcome == "stale":
                log.info("subscription %s: event #%s arrived after a higher number; processed anyway", sub, number)
        due = results[-1]
        if due:
            self._record(sub, [m.decode() for m in due], now)
        return outcomes

    def _classify(self, state: dict[str, str], pending_now: set[str], number: int) -> str:
        """What event ``number`` is, given the subscription's ``state`` and the pending numbers."""
        highest = int(state["highest"]) if "highest" in state else None
        if highest is None:
            return "first"
        if number == highest + 1:
            return "next"
        if number > highest:
            return "jump"
        if number == highest:
            return "repeat"
        if str(number) in pending_now:
            return "late"
        return "restart" if self._restarted(state, highest) else "stale"

    def _account(
        self,
        pipe: Pipeline,
        read: Callable[..., Any],
        sub: str,
        state: dict[str, str],
        pending_now: set[str],
        outcome: str,
        number: int,
        timestamp: str | None,
        now: datetime,
    ) -> None:
        """Queue on ``pipe`` the writes of event ``number`` (of ``outcome``); ``state`` and ``pending_now``
        (the pending numbers among those being accounted for) are kept up to date for the next number."""
        sub_key = self.keys.subscription(sub)
        pending, pending_after = self._pending(sub)
        advance = {"highest": str(number), "highest_at": str(now.timestamp()), "highest_timestamp": timestamp or ""}
        if outcome in ("first", "next"):
            pipe.hset(sub_key, mapping=advance)
        elif outcome == "jump":
            highest = int(state["highest"])
            missing = range(highest + 1, min(number, highest + 1 + MAX_PENDING_PER_JUMP))
            before = state.get("highest_timestamp") or ""
            pipe.zadd(pending, {str(m): now.timestamp() + self.grace for m in missing})
            pipe.hset(pending_after, mapping={str(m): before for m in missing})
            pipe.hset(sub_key, mapping=advance)
            pending_now.update(str(m) for m in missing)
        elif outcome == "late":
            pending_now.discard(str(number))
            pipe.zrem(pending, str(number))
            pipe.hdel(pending_after, str(number))
            return
        elif outcome == "restart":  # always first in its transaction: the read sees every earlier write
            record = {"at": now.isoformat(), "from": int(state["highest"]), "to": number}
            old_run = [m.decode() for m in read("ZRANGE", pending, 0, -1)]
            pipe.hset(sub_key, mapping={**advance, "last_restart": json.dumps(record)})
            pipe.hincrby(sub_key, "restarts", 1)
            if old_run:  # the old run's missing numbers can no longer arrive: due now
                pipe.zadd(pending, dict.fromkeys(old_run, 0))
        else:  # repeat, stale: nothing changes
            return
        state.update(advance)

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
