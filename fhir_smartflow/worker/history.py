"""Flow-run history in Redis: one compact JSON record per trigger event handled, bounded and expiring.

A record holds references and counts only — never names, addresses or message bodies — so it is safe to
keep for the retention period and to print with ``fhir-smartflow history``. Layout:

- ``Keys.run(id)``: the record (JSON string) with a TTL;
- ``Keys.history()``: sorted set of run ids scored by time, trimmed to ``max_runs``;
- ``Keys.history() + ":patient:<ref>"`` / ``":flow:<id>"``: the same, per patient and per flow, so
  filtered queries read only matching runs.
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

_ACTION_NAMES: tuple[tuple[type, str], ...] = (
    (WriteResource, "write"),
    (Deliver, "deliver"),
    (Schedule, "schedule"),
    (CancelGroup, "cancel"),
    (PatchTask, "patch"),
)
_MAX_ERROR_CHARS = 300
_READ_BATCH = 200


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _get(item: Any, name: str, default: Any = None) -> Any:
    """A field of a dict or an attribute of an object (executor results come in both shapes)."""
    if isinstance(item, dict):
        return item.get(name, default)
    return getattr(item, name, default)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return format_instant(value, "auto")
    return str(value)


def normalize_patient(patient: str) -> str:
    """``123`` and ``Patient/123`` name the same patient."""
    return patient if "/" in patient else f"Patient/{patient}"


def parse_since(value: str) -> datetime:
    """An ISO date or instant (naive means UTC); raises ValueError naming the value."""
    parsed = parse_instant(value)
    if parsed is None:
        raise ValueError(f"not an ISO date or instant: {value!r}")
    return parsed


def _written(item: Any) -> dict[str, Any]:
    """type/id/identifier/created of one written resource: a FHIR dict or an object describing one."""
    resource = _get(item, "resource") if not (isinstance(item, dict) and "resourceType" in item) else item
    if isinstance(resource, dict):
        identifier = next((i.get("value") for i in resource.get("identifier") or [] if isinstance(i, dict)), None)
        return {
            "type": resource.get("resourceType"),
            "id": resource.get("id"),
            "identifier": _get(item, "identifier") or identifier,
            "created": _get(item, "created"),
        }
    return {
        "type": _get(item, "resource_type") or _get(item, "type"),
        "id": _get(item, "id"),
        "identifier": _get(item, "identifier"),
        "created": _get(item, "created"),
    }


def _delivery(item: Any, planned: dict[str, Deliver]) -> dict[str, Any]:
    """channel/status of one delivery: the executor's ``(identifier, status)`` pair (the channel comes
    from the plan), an ``(action, outcome)`` pair, or an object with those fields."""
    if isinstance(item, tuple) and len(item) == 2:
        first, second = item
        if isinstance(first, str):
            action = planned.get(first)
            return {"channel": action.channel if action else None, "status": second, "identifier": first}
        return {
            "channel": _get(first, "channel"),
            "status": _get(second, "status"),
            "identifier": _get(first, "identifier"),
        }
    action = _get(item, "action")
    outcome = _get(item, "outcome")
    return {
        "channel": _get(item, "channel") or _get(action, "channel"),
        "status": _get(item, "status") or _get(outcome, "status"),
        "identifier": _get(item, "identifier") or _get(action, "identifier"),
    }


def _scheduled(item: Any, planned: dict[str, Schedule]) -> dict[str, Any]:
    """kind/at of a follow-up: the executor reports Schedule identifiers; kind and instant come from the plan."""
    if isinstance(item, str):
        action = planned.get(item)
        return {"kind": action.kind if action else None, "at": _iso(action.at) if action else None, "identifier": item}
    return {"kind": _get(item, "kind"), "at": _iso(_get(item, "at")), "identifier": _get(item, "identifier")}


def _error(item: Any) -> str:
    if isinstance(item, str):
        text = item
    elif isinstance(item, Exception):
        text = f"{type(item).__name__}: {item}"
    elif _get(item, "message") is not None:  # the executor's ActionError(action, message, status)
        status = _get(item, "status")
        text = f"{_get(item, 'action')}: {_get(item, 'message')}" + (f" (HTTP {status})" if status else "")
    else:
        text = str(item)
    return text[:_MAX_ERROR_CHARS]


def _cancelled(value: Any) -> list[str] | int:
    """Task references when the executor lists them, else a count."""
    if value is None:
        return []
    if isinstance(value, int):
        return value
    return [str(v) for v in value]


def plan_summary(plan: Plan) -> dict[str, int]:
    """Counts of plan actions by type (write / deliver / schedule / cancel / patch)."""
    counts = {name: 0 for _, name in _ACTION_NAMES}
    for action in plan.actions:
        for cls, name in _ACTION_NAMES:
            if isinstance(action, cls):
                counts[name] += 1
    return counts


def build_record(run_id: str, at: datetime, plan: Plan, result: Any) -> dict[str, Any]:
    """The compact, PHI-free run record (references, ids, counts, statuses)."""
    trigger = plan.trigger
    event = trigger.event
    deliveries = {a.identifier: a for a in plan.actions if isinstance(a, Deliver)}
    schedules = {a.identifier: a for a in plan.actions if isinstance(a, Schedule)}
    return {
        "id": run_id,
        "at": _iso(at),
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
            }
            for r in plan.runs
        ],
        "plan": plan_summary(plan),
        "written": [_written(w) for w in _get(result, "written") or []],
        "deliveries": [_delivery(d, deliveries) for d in _get(result, "deliveries") or []],
        "scheduled": [_scheduled(s, schedules) for s in _get(result, "scheduled") or []],
        "cancelled": _cancelled(_get(result, "cancelled")),
        "errors": [_error(e) for e in _get(result, "errors") or []],
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

    def record(self, plan: Plan, result: Any = None) -> str:
        """Store one run; returns its id (time-ordered: ``<epoch ms>-<random>``)."""
        at = self.clock()
        score = at.timestamp()
        run_id = f"{int(score * 1000):013d}-{secrets.token_hex(4)}"
        record = build_record(run_id, at, plan, result)
        indexes = [self.keys.history()]
        if plan.trigger.patient:
            indexes.append(self.patient_index(plan.trigger.patient))
        indexes += [self.flow_index(fid) for fid in sorted({r.flow_id for r in plan.runs})]
        pipe = self.conn.pipeline(transaction=False)
        pipe.set(self.keys.run(run_id), json.dumps(record, separators=(",", ":")), ex=self.ttl)
        for index in indexes:
            pipe.zadd(index, {run_id: score})
            # Bounded: older than the TTL or beyond max_runs is dropped from every index.
            pipe.zremrangebyscore(index, "-inf", f"({score - self.ttl}")
            pipe.zremrangebyrank(index, 0, -(self.max_runs + 1))
            pipe.expire(index, self.ttl)
        pipe.execute()
        return run_id

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
