"""Every change made in the console: who, what, when — kept in Redis (newest first) and logged.

Entries name accounts, flows and templates only; never patient data.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

import redis

from fhir_smartflow.console.keys import ConsoleKeys

log = logging.getLogger("fhir_smartflow.console.audit")

KEEP = 10_000  # entries kept in Redis


@dataclass(frozen=True)
class AuditEntry:
    at: str  # ISO UTC
    user: str
    action: str  # e.g. "flow.save", "template.save", "login", "login.refused", "account.add"
    target: str  # the flow / template / account name, or ""
    detail: str = ""


class Audit:
    """``record`` one change; ``recent`` lists the latest first. Redis when given, else this process's memory."""

    def __init__(self, conn: redis.Redis | None, keys: ConsoleKeys, clock: Callable[[], datetime]) -> None:
        self.conn = conn
        self.keys = keys
        self.clock = clock
        self._memory: list[AuditEntry] = []
        self._lock = threading.Lock()

    def record(self, user: str, action: str, target: str = "", detail: str = "") -> AuditEntry:
        entry = AuditEntry(self.clock().isoformat(timespec="seconds"), user, action, target, detail)
        log.info("console: %s %s %s %s", entry.user, entry.action, entry.target, entry.detail)
        if self.conn is None:
            with self._lock:
                self._memory.insert(0, entry)
                del self._memory[KEEP:]
            return entry
        pipe = self.conn.pipeline()
        pipe.lpush(self.keys.audit(), json.dumps(asdict(entry)))
        pipe.ltrim(self.keys.audit(), 0, KEEP - 1)
        pipe.execute()
        return entry

    def recent(self, limit: int = 100, *, target: str | None = None) -> list[AuditEntry]:
        """The latest ``limit`` entries (only those about ``target`` when given), newest first."""
        if self.conn is None:
            with self._lock:
                entries = list(self._memory)
        else:
            raw = self.conn.lrange(self.keys.audit(), 0, KEEP - 1)
            entries = [AuditEntry(**json.loads(item)) for item in raw]  # type: ignore[union-attr]
        if target is not None:
            entries = [e for e in entries if e.target == target]
        return entries[:limit]
