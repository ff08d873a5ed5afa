"""Saved changes reach every running process within seconds, without SIGHUP.

A save bumps a generation counter in Redis (``ReloadBus.announce``). Every `serve` (embedded too) and
`worker` process runs a ``watch_saved_changes`` thread that reads the counter every ``[console]
reload_poll_seconds``; when it moved, the thread reloads the flow files exactly as SIGHUP does
(``reload_engine``: on any error the running flows stay) and reports how it went in one Redis hash
(``ReloadBus.status()`` lists every live process, so the console can show where a change failed to load).
Polling a key, not pub/sub: a process that missed a message (Redis restarted, it was busy) still catches up.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime

import redis

from fhir_smartflow.config import Settings
from fhir_smartflow.console.keys import ConsoleKeys
from fhir_smartflow.worker.runtime import ServiceRuntime, reload_engine, utc_now

log = logging.getLogger(__name__)

STATUS_TTL = 60  # a process's status disappears this long after it stopped reporting
REFRESH_SECONDS = 15


@dataclass(frozen=True)
class ProcessStatus:
    process: str  # "<role>:<host>:<pid>"
    role: str  # serve | worker
    generation: int  # the last change it tried to load
    ok: bool  # False: that change did not load here; the flows loaded before run on
    at: str  # ISO UTC of the report
    flows: int  # flows running now
    errors: list[str] = field(default_factory=list)  # the loader's `file:line: field: reason` lines
    expires: float = 0.0  # epoch seconds: a process that stopped reporting is dropped after this


@dataclass(frozen=True)
class Change:
    generation: int
    kind: str  # flow | template
    name: str
    user: str
    at: str


class ReloadBus:
    def __init__(self, conn: redis.Redis, keys: ConsoleKeys, clock: Callable[[], datetime]) -> None:
        self.conn, self.keys, self.clock = conn, keys, clock

    def announce(self, kind: str, name: str, user: str) -> int:
        """Tell every process that ``kind`` ``name`` was saved; the new generation."""
        generation = int(self.conn.incr(self.keys.generation()))  # type: ignore[arg-type]
        change = Change(generation, kind, name, user, self.clock().isoformat(timespec="seconds"))
        self.conn.set(self.keys.last_change(), json.dumps(asdict(change)))
        return generation

    def generation(self) -> int:
        return int(self.conn.get(self.keys.generation()) or 0)  # type: ignore[arg-type]

    def last_change(self) -> Change | None:
        raw = self.conn.get(self.keys.last_change())
        return Change(**json.loads(raw)) if raw else None  # type: ignore[arg-type]

    def report(self, status: ProcessStatus) -> None:
        fresh = replace(status, expires=time.time() + STATUS_TTL)
        self.conn.hset(self.keys.status(), status.process, json.dumps(asdict(fresh)))

    def status(self) -> list[ProcessStatus]:
        """Every live process's last report, by process name (those that stopped reporting are removed)."""
        raw = self.conn.hgetall(self.keys.status())
        found = [ProcessStatus(**json.loads(value)) for value in raw.values()]  # type: ignore[union-attr]
        now = time.time()
        gone = [s.process for s in found if s.expires < now]
        if gone:
            self.conn.hdel(self.keys.status(), *gone)
        return sorted((s for s in found if s.expires >= now), key=lambda s: s.process)

    def failures(self) -> list[ProcessStatus]:
        """The live processes where the latest change did not load."""
        return [s for s in self.status() if not s.ok]


def process_name(role: str) -> str:
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


class SavedChangeWatcher:
    """Reloads ``rt``'s flows when the bus's generation moves (``run`` is the thread's body)."""

    def __init__(self, rt: ServiceRuntime, bus: ReloadBus, role: str, interval: float, seen: int | None = None) -> None:
        """``seen``: the generation read before the runtime loaded its files (a save in between is then
        caught up at the first check); None takes the first check's as loaded."""
        self.rt, self.bus, self.role, self.interval = rt, bus, role, interval
        self.process = process_name(role)
        self.seen = seen
        self.last: ProcessStatus | None = None

    def step(self) -> None:
        """One check: reload if a change was announced since the last one (or report to stay listed)."""
        generation = self.bus.generation()
        if self.seen is None:
            self.seen = generation  # the files were loaded at start: nothing to catch up on
            self._report(generation, [])
            return
        if generation == self.seen:
            if self.last is None:
                self._report(generation, [])
            return
        self.seen = generation
        errors = [str(e) for e in reload_engine(self.rt)]
        if errors:
            log.error("saved change %d not loaded (%d problem(s)); the running flows stay", generation, len(errors))
            for error in errors:
                log.error("reload: %s", error)
        else:
            log.info("saved change %d loaded: %d flow(s)", generation, len(self.rt.engine.flows))
        self._report(generation, errors)

    def _report(self, generation: int, errors: list[str]) -> None:
        self.last = ProcessStatus(
            self.process,
            self.role,
            generation,
            not errors,
            self.rt.clock().isoformat(timespec="seconds"),
            len(self.rt.engine.flows),
            errors,
        )
        self.bus.report(self.last)

    def run(self, stop: threading.Event) -> None:
        refresh = max(1, int(REFRESH_SECONDS / max(self.interval, 0.1)))
        ticks = 0
        failing = False
        delay = 0.0  # the first check at once: it records where things stand
        while not stop.wait(delay):
            delay = self.interval
            try:
                self.step()
                ticks += 1
                if ticks % refresh == 0 and self.last is not None:
                    self.bus.report(self.last)  # keep this process listed
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("saved-change watch: Redis unavailable (%s); retrying", type(exc).__name__)
                failing = True


def saved_generation(settings: Settings, conn: redis.Redis) -> int | None:
    """The current generation, read before a process loads its files (None when Redis does not answer)."""
    try:
        return ReloadBus(conn, ConsoleKeys(settings.redis.key_prefix), utc_now).generation()
    except redis.RedisError:
        return None


def watch_saved_changes(
    rt: ServiceRuntime,
    conn: redis.Redis,
    role: str,
    stop: threading.Event | None = None,
    *,
    seen: int | None = None,
) -> SavedChangeWatcher:
    """Start the watching thread for this process (daemon: it ends with the process); ``seen``: see
    `SavedChangeWatcher`."""
    bus = ReloadBus(conn, ConsoleKeys(rt.settings.redis.key_prefix), rt.clock)
    watcher = SavedChangeWatcher(rt, bus, role, rt.settings.console.reload_poll_seconds, seen)
    threading.Thread(target=watcher.run, args=(stop or threading.Event(),), name="console-reload", daemon=True).start()
    return watcher
