"""Flow-run history in Redis: one compact JSON record per trigger event handled, bounded and expiring.

A record holds references and counts only — never names, addresses or message bodies — so it is safe to
keep for the retention period and to print with ``fhir-smartflow history``. Layout:

- ``Keys.run(id)``: the record (JSON string) with a TTL;
- ``Keys.history()``: sorted set of run ids scored by time, trimmed to ``max_runs``;
- ``Keys.history() + ":patient:<ref>"`` / ``":flow:<id>"``: the same, per patient and per flow, so
  filtered queries read only matching runs.

Each process trims an index (runs older than the TTL, and beyond ``max_runs``) at most once every
`TRIM_INTERVAL_SECONDS` of run time: the global and per-flow indexes get a run per event, and trimming
them on every one was two commands per index per event for nothing. Between trims an index holds at most
that interval's runs over ``max_runs``. Its TTL is renewed with the trim, so an index lives the TTL after
its last run, less under that interval.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import redis

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys
from fhir_smartflow.engine.plan import CancelGroup, Deliver, PatchTask, Plan, Schedule, WriteResource
from fhir_smartflow.instants import format_instant, parse_instant
from fhir_smartflow.worker import jobwrites
from fhir_smartflow.worker.execute import ActionError, ExecutionResult, WrittenResource

_ACTION_NAMES: tuple[tuple[type, str], ...] = (
    (WriteResource, "write"),
    (Deliver, "deliver"),
    (Schedule, "schedule"),
    (CancelGroup, "cancel"),
    (PatchTask, "patch"),
)
_MAX_ERROR_CHARS = 300
_READ_BATCH = 200
TRIM_INTERVAL_SECONDS = 1.0
_TRIMS_REMEMBERED = 4096  # indexes whose last trim a process keeps (then it forgets them all: more trims)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def normalize_patient(patient: str) -> str:
    """``123`` and ``Patient/123`` name the same patient."""
    return patient if "/" in patient else f"Patient/{patient}"


def parse_since(value: str) -> datetime:
    """An ISO date or instant (naive means UTC); raises ValueError naming the value."""
    parsed = parse_instant(value)
    if parsed is None:
        raise ValueError(f"not an ISO date or instant: {value!r}")
    return parsed


def _written(item: WrittenResource) -> dict[str, Any]:
    return {"type": item.resource_type, "id": item.id, "identifier": item.identifier, "created": item.created}


def _delivery(identifier: str, status: str, planned: dict[str, Deliver]) -> dict[str, Any]:
    """channel/status of one delivery: the executor reports (identifier, status); the channel is the plan's."""
    action = planned.get(identifier)
    return {"channel": action.channel if action else None, "status": status, "identifier": identifier}


def _scheduled(identifier: str, planned: dict[str, Schedule]) -> dict[str, Any]:
    """kind/at of a follow-up: the executor reports Schedule identifiers; kind and instant are the plan's
    (a deferred delivery's retry is scheduled by the executor itself: not in the plan)."""
    action = planned.get(identifier)
    if action is None:
        return {"kind": None, "at": None, "identifier": identifier}
    return {"kind": action.kind, "at": format_instant(action.at, "auto"), "identifier": identifier}


def _error(error: ActionError) -> str:
    status = f" (HTTP {error.status})" if error.status else ""
    return f"{error.action}: {error.message}{status}"[:_MAX_ERROR_CHARS]


def plan_summary(plan: Plan) -> dict[str, int]:
    """Counts of plan actions by type (write / deliver / schedule / cancel / patch)."""
    counts = {name: 0 for _, name in _ACTION_NAMES}
    for action in plan.actions:
        for cls, name in _ACTION_NAMES:
            if isinstance(action, cls):
                counts[name] += 1
    return counts


def build_record(run_id: str, at: datetime, plan: Plan, result: ExecutionResult | None) -> dict[str, Any]:
    """The compact, PHI-free run record (references, ids, counts, statuses)."""
    result = result or ExecutionResult()
    trigger = plan.trigger
    event = trigger.event
    deliveries = {a.identifier: a for a in plan.actions if isinstance(a, Deliver)}
    schedules = {a.identifier: a for a in plan.actions if isinstance(a, Schedule)}
    return {
        "id": run_id,
        "at": format_instant(at, "auto"),
        "trigger": {
            "name": trigger.trigger,
            "id": trigger.id,
            "focus": event.reference,
            "patient": trigger.patient,
            "interaction": event.interaction,
            "source": event.source,
            "subscription": event.subscription,
            "event_number": event.event_number,
            "received_at": event.received_at,
        },
        "flows": [
            {
                "id": r.flow_id,
                "version": r.flow_version,
                "group": r.group,
                "ran": r.ran,
                "reason": r.reason,
                "actions": len(r.actions),
                # what the run left out and why (action and role names, instants: no PHI)
                **({"notes": list(r.notes)} if r.notes else {}),
            }
            for r in plan.runs
        ],
        "plan": plan_summary(plan),
        "written": [_written(w) for w in result.written],
        "deliveries": [_delivery(identifier, status, deliveries) for identifier, status in result.deliveries],
        "scheduled": [_scheduled(s, schedules) for s in result.scheduled],
        "cancelled": list(result.cancelled),
        "errors": [_error(e) for e in result.errors],
    }


class RunHistory:
    """Stores and queries flow runs. ``clock`` is injectable so tests control time."""

    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        max_runs: int,
        ttl: int,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if max_runs <= 0 or ttl <= 0:
            raise ValueError("history max_runs and ttl must be positive")
        self.conn = conn
        self.keys = keys
        self.max_runs = max_runs
        self.ttl = ttl
        self.clock = clock
        self._trimmed: dict[str, float] = {}  # index → score (run time) of this process's last trim of it

    @classmethod
    def from_settings(cls, settings: Settings, conn: redis.Redis) -> RunHistory:
        """Bounded by ``[redis] history_max_runs`` and ``history_ttl_seconds``."""
        return cls(
            conn, Keys(settings.redis.key_prefix), settings.redis.history_max_runs, settings.redis.history_ttl_seconds
        )

    def patient_index(self, patient: str) -> str:
        return f"{self.keys.history()}:patient:{normalize_patient(patient)}"

    def flow_index(self, flow_id: str) -> str:
        return f"{self.keys.history()}:flow:{flow_id}"

    def record(self, plan: Plan, result: ExecutionResult | None = None) -> str:
        """Store one run; returns its id (time-ordered: ``<epoch ms>-<random>``)."""
        flows = {r.flow_id for r in plan.runs}
        return self.add(lambda run_id, at: build_record(run_id, at, plan, result), plan.trigger.patient, flows)

    def add(
        self, build: Callable[[str, datetime], dict[str, Any]], patient: str | None, flow_ids: Iterable[str]
    ) -> str:
        """Store the record ``build(id, at)`` makes, indexed by patient and flows like a run (a flow run, or
        what a user did with a CDS Hooks card: cds/feedback.py); returns its id."""
        at = self.clock()
        score = at.timestamp()
        run_id = f"{int(score * 1000):013d}-{secrets.token_hex(4)}"
        record = build(run_id, at)
        indexes = [self.keys.history()]
        if patient:
            indexes.append(self.patient_index(patient))
        indexes += [self.flow_index(fid) for fid in sorted(set(flow_ids))]
        payload = json.dumps(record, separators=(",", ":"))
        due = [index for index in indexes if self._trim_due(index, score)]

        def queue(pipe: Any) -> None:
            pipe.set(self.keys.run(run_id), payload, ex=self.ttl)
            for index in indexes:
                pipe.zadd(index, {run_id: score})
            for index in due:  # bounded: older than the TTL or beyond max_runs is dropped
                pipe.expire(index, self.ttl)  # an index lives a TTL after its last run (less under a second)
                pipe.zremrangebyscore(index, "-inf", f"({score - self.ttl}")
                pipe.zremrangebyrank(index, 0, -(self.max_runs + 1))

        collected = jobwrites.current()
        if collected is not None:  # recorded with the job's done mark (worker/jobwrites.py)
            collected.queued.append(queue)
            return run_id
        pipe = self.conn.pipeline(transaction=False)
        queue(pipe)
        pipe.execute()
        return run_id

    def _trim_due(self, index: str, score: float) -> bool:
        """Whether this run trims ``index`` (its first here, or `TRIM_INTERVAL_SECONDS` since the last);
        noted as trimmed now. A clock set back counts as due."""
        last = self._trimmed.get(index)
        if last is not None and 0 <= score - last < TRIM_INTERVAL_SECONDS:
            return False
        if len(self._trimmed) >= _TRIMS_REMEMBERED and index not in self._trimmed:
            self._trimmed.clear()
        self._trimmed[index] = score
        return True

    def get(self, run_id: str) -> dict[str, Any] | None:
        raw = self.conn.get(self.keys.run(run_id))
        return json.loads(raw) if raw else None

    def _ids(self, index: str, since: datetime | None) -> Iterator[str]:
        low = since.timestamp() if since else "-inf"
        offset = 0
        while True:
            batch = self.conn.zrevrangebyscore(index, "+inf", low, start=offset, num=_READ_BATCH)
            if not batch:
                return
            yield from (b.decode() if isinstance(b, bytes) else b for b in batch)
            offset += len(batch)

    def _records(self, ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        chunk: list[str] = []
        for run_id in ids:
            chunk.append(run_id)
            if len(chunk) == _READ_BATCH:
                yield from self._load(chunk)
                chunk = []
        if chunk:
            yield from self._load(chunk)

    def _load(self, ids: list[str]) -> Iterator[dict[str, Any]]:
        for raw in self.conn.mget([self.keys.run(i) for i in ids]):
            if raw:  # expired records leave a dangling id until the next trim
                yield json.loads(raw)

    def query(
        self,
        patient: str | None = None,
        flow: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Newest first. ``patient`` is ``123`` or ``Patient/123``; ``since`` is inclusive."""
        if patient:
            index = self.patient_index(patient)
        elif flow:
            index = self.flow_index(flow)
        else:
            index = self.keys.history()
        found: list[dict[str, Any]] = []
        for rec in self._records(self._ids(index, since)):
            if flow and flow not in {f["id"] for f in rec.get("flows", [])}:
                continue
            found.append(rec)
            if len(found) >= limit:
                break
        return found
