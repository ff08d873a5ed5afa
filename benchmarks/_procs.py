"""What the benchmarks add to the shared test helpers (tests/support): the webhook secret they configure,
a private redis-server per run, the machine line of each report, and CPU readings.

Processes, ports and the redis-server wrapper are tests/support/procs.py (one implementation for the
test suite, the chaos runs and the benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.support.procs import RedisServer

SECRET_ENV = "SMARTFLOW_BENCH_SECRET"
SECRET = "bench-secret-0123456789abcdef"
SECRET_HEADER = "X-Smartflow-Secret"
SUBSCRIPTION_ID = "bench-patient"


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """The URL of a fresh ``redis-server`` started for this benchmark run, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="smartflow-redis-") as directory:
        server = RedisServer(Path(directory)).start()
        try:
            yield server.url
        finally:
            server.stop()


def bench_subscription() -> dict[str, Any]:
    return {
        "id": SUBSCRIPTION_ID,
        "auth": "header",
        "header": SECRET_HEADER,
        "secret_env": SECRET_ENV,
        "resource_types": ["Patient"],
    }


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process and its reaped children, from ``/proc/<pid>/stat`` (no profiler)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of stat); utime, stime, cutime, cstime are fields 14-17.
    return sum(int(x) for x in fields[11:15]) / _CLK_TCK


def process_ms_each(call: Callable[[Any], object], items: Iterable[Any]) -> float:
    """This process's CPU (``time.process_time``, no profiler) per ``call(item)``, in ms, over ``items``."""
    items = list(items)
    start = time.process_time()
    for item in items:
        call(item)
    return (time.process_time() - start) * 1000 / len(items)


def config_values(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``["fhir.events_per_transaction=5", ...]`` as config tables (``--set``); a whole number is an int."""
    tables: dict[str, dict[str, Any]] = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        table, _, key = name.partition(".")
        if not table or not key or not value:
            raise SystemExit(f"--set {setting!r}: expected TABLE.KEY=VALUE")
        tables.setdefault(table, {})[key] = int(value) if value.lstrip("-").isdigit() else value
    return tables
