"""Liveness records of the service's long-running processes, for health checks.

A scheduler (also a standby one) and a poller beat ``<prefix>alive:<role>:<host>:<pid>`` with a short TTL
from a daemon thread (``Heartbeat``); ``fhir-smartflow health ROLE`` asks whether a process of that role
on this host beat recently (``alive_on_host``). A worker's record is the key its supervisor already beats
(worker/supervise.py ``Liveness``); the active scheduler also holds the scheduler lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

import redis

from fhir_smartflow.connections import Keys

log = logging.getLogger(__name__)

BEAT_SECONDS = 2.0
TTL_SECONDS = 10

SCHEDULER, POLLER = "scheduler", "poller"


def this_host() -> str:
    return socket.gethostname()


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis SCAN MATCH pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


class Heartbeat:
    """Beats ``role``'s record for this process every ``BEAT_SECONDS`` from a daemon thread; ``end()`` (or
    leaving its ``with`` block) stops and removes it, so a stopped process is not reported alive."""

    def __init__(self, conn: redis.Redis, keys: Keys, role: str) -> None:
        self.conn = conn
        self.key = keys.alive(role, f"{this_host()}:{os.getpid()}")
        self._stop = threading.Event()

    def beat(self) -> None:
        self.conn.set(self.key, 1, ex=TTL_SECONDS)

    def start(self) -> Heartbeat:
        threading.Thread(target=self._run, name="smartflow-heartbeat", daemon=True).start()
        return self

    def end(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.conn.delete(self.key)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.end()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis restarting: the record expires, the health check says so
                log.debug("heartbeat failed: %s", exc)
            self._stop.wait(BEAT_SECONDS)


def alive_on_host(conn: redis.Redis, keys: Keys, role: str, host: str) -> list[str]:
    """The ``host:pid`` of every process of ``role`` on ``host`` whose record has not expired."""
    prefix = keys.alive(role, "")
    pattern = f"{glob_escape(prefix)}{glob_escape(host)}:*"
    found = []
    for raw in conn.scan_iter(match=pattern, count=500):
        ident = (raw.decode() if isinstance(raw, bytes) else str(raw))[len(prefix) :]
        name, _, pid = ident.rpartition(":")
        if name == host and pid.isdigit():
            found.append(ident)
    return sorted(found)
