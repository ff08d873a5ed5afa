"""Prior state in Redis: the few fields mappings compare, from the last version of each resource seen.

Stored as JSON under ``Keys.prior(type, id)`` with a TTL. Only the fields in ``fields`` are kept
(status, active, period, meta.versionId / lastUpdated, plus whatever the mappings' ``previous``
expressions read) — never names, telecoms or other PHI the mappings do not need.

Out-of-order safety: notifications can arrive out of order (retries, gap recovery). A write whose
version is older than the stored one is ignored, so a late v3 never overwrites v4 and cannot make
v4's transition fire a second time. Versions compare numerically when both versionIds are numbers,
else by meta.lastUpdated; with neither, the newer write wins. The compare-and-set runs under
WATCH/MULTI (works on Redis and on the embedded fakeredis, no Lua needed); inside an event job it runs in
the job's final transaction (worker/jobwrites.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

import redis

from fhir_smartflow.connections import Keys
from fhir_smartflow.instants import parse_instant
from fhir_smartflow.worker import jobwrites

DEFAULT_FIELDS = frozenset({"resourceType", "id", "meta", "status", "active", "period"})
DEFAULT_TTL_SECONDS = 90 * 24 * 3600


def slim(resource: dict[str, Any], fields: Iterable[str] = DEFAULT_FIELDS) -> dict[str, Any]:
    """The kept subset; meta reduced to versionId and lastUpdated."""
    kept = {k: resource[k] for k in fields if k in resource and k != "meta"}
    meta = resource.get("meta") or {}
    small_meta = {k: meta[k] for k in ("versionId", "lastUpdated") if k in meta}
    if small_meta:
        kept["meta"] = small_meta
    return kept


def is_older(new: dict[str, Any], stored: dict[str, Any]) -> bool:
    """True when ``new`` is an older version than ``stored`` (equal is not older)."""
    new_meta, old_meta = new.get("meta") or {}, stored.get("meta") or {}
    new_v, old_v = str(new_meta.get("versionId", "")), str(old_meta.get("versionId", ""))
    if new_v.isdigit() and old_v.isdigit():
        return int(new_v) < int(old_v)
    # meta.lastUpdated is an instant: without its offset it is not comparable, so it does not count.
    new_t = parse_instant(new_meta.get("lastUpdated"), zone=None)
    old_t = parse_instant(old_meta.get("lastUpdated"), zone=None)
    if new_t is not None and old_t is not None:
        return new_t < old_t
    return False


class PriorState(Protocol):
    """The fields mappings care about from the last version of a resource we saw."""

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None: ...

    def put(self, resource_type: str, resource_id: str, resource: dict[str, Any]) -> None: ...


class RedisPriorState:
    """PriorState on Redis."""

    def __init__(
        self, conn: redis.Redis, keys: Keys, ttl: int = DEFAULT_TTL_SECONDS, fields: Iterable[str] = DEFAULT_FIELDS
    ) -> None:
        self.conn = conn
        self.keys = keys
        self.ttl = ttl
        self.fields = frozenset(fields) | DEFAULT_FIELDS

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        key = self.keys.prior(resource_type, resource_id)
        collected = jobwrites.current()
        if collected is not None and key in collected.read_ahead:  # read with the job's claim
            raw = collected.read_ahead.pop(key)
        else:
            raw = self.conn.get(key)
        return json.loads(raw) if raw else None

    def put(self, resource_type: str, resource_id: str, resource: dict[str, Any]) -> None:
        key = self.keys.prior(resource_type, resource_id)
        state = slim(resource, self.fields)
        payload = json.dumps(state, sort_keys=True, separators=(",", ":"))
        collected = jobwrites.current()
        if collected is not None:  # goes with the job's done mark, compared there under WATCH
            newer_stored = lambda raw: is_older(state, json.loads(raw))  # noqa: E731
            collected.guarded[key] = jobwrites.GuardedSet(key, payload, self.ttl, newer_stored)
            return

        def compare_and_set(pipe: Any) -> None:
            raw = pipe.get(key)
            if raw and is_older(state, json.loads(raw)):
                pipe.multi()  # nothing to write: an older version arrived late
                return
            pipe.multi()
            pipe.set(key, payload, ex=self.ttl)

        self.conn.transaction(compare_and_set, key)
