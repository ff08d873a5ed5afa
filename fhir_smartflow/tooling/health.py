"""``health``: is the process of a role on this host alive? For container and unit health checks.

- ``serve``: its ``/healthz`` answers 200 on ``[server] port`` (``SMARTFLOW_SERVER_PORT``) of this host;
- ``worker``: a worker of ours on this host beat its liveness key (worker/supervise.py ``Liveness``, 6 s TTL);
- ``scheduler``: a scheduler on this host holds the scheduler lock (active), or beats its record (standby);
- ``poller``: a poller on this host beats its record (liveness.py).

``auto`` (the image's HEALTHCHECK, which runs every role): healthy when any of them is, on this host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import redis
import requests

from fhir_smartflow.config import Settings
from fhir_smartflow.connections import Keys, connect, connect_host
from fhir_smartflow.liveness import POLLER, SCHEDULER, alive_on_host, glob_escape, this_host
from fhir_smartflow.scheduling.scheduler import ScheduleKeys, SchedulerLock
from fhir_smartflow.worker.supervise import ALIVE_TTL_SECONDS, WORKER_NAME_PREFIX, worker_alive_key


@dataclass(frozen=True)
class Health:
    healthy: bool
    detail: str

    def __str__(self) -> str:
        return f"{'healthy' if self.healthy else 'unhealthy'}: {self.detail}"


def check_serve(settings: Settings, _conn: Callable[[], redis.Redis]) -> Health:
    url = f"http://{connect_host(settings.server.host)}:{settings.server.port}/healthz"
    try:
        status = requests.get(url, timeout=2).status_code
    except requests.RequestException as exc:
        return Health(False, f"serve: {url}: {type(exc).__name__}")
    return Health(status == 200, f"serve: {url} answered {status}")


def check_worker(settings: Settings, conn: Callable[[], redis.Redis]) -> Health:
    keys, host = Keys(settings.redis.key_prefix), this_host()
    prefix = worker_alive_key(keys, "")
    ours = re.compile(rf"{re.escape(WORKER_NAME_PREFIX)}{re.escape(host)}-\d+-[0-9a-f]{{8}}")
    names = []
    for raw in conn().scan_iter(match=f"{glob_escape(prefix)}{glob_escape(WORKER_NAME_PREFIX + host)}-*", count=500):
        name = (raw.decode() if isinstance(raw, bytes) else str(raw))[len(prefix) :]
        if ours.fullmatch(name):
            names.append(name)
    if not names:
        return Health(False, f"worker: none on {host} beat its liveness key in the last {ALIVE_TTL_SECONDS} s")
    return Health(True, f"worker: {len(names)} alive on {host} ({', '.join(sorted(names))})")


def check_scheduler(settings: Settings, conn: Callable[[], redis.Redis]) -> Health:
    host = this_host()
    holder = SchedulerLock(conn(), ScheduleKeys(Keys(settings.redis.key_prefix)).lock).holder()
    if holder is not None and holder.split(":")[0] == host:
        return Health(True, f"scheduler: {holder} is active")
    standby = alive_on_host(conn(), Keys(settings.redis.key_prefix), SCHEDULER, host)
    if standby:
        return Health(True, f"scheduler: {', '.join(standby)} alive (active: {holder or 'none'})")
    return Health(False, f"scheduler: none alive on {host} (active: {holder or 'none'})")


def check_poller(settings: Settings, conn: Callable[[], redis.Redis]) -> Health:
    host = this_host()
    alive = alive_on_host(conn(), Keys(settings.redis.key_prefix), POLLER, host)
    if alive:
        return Health(True, f"poller: {', '.join(alive)} alive")
    return Health(False, f"poller: none alive on {host}")


CHECKS: dict[str, Callable[[Settings, Callable[[], redis.Redis]], Health]] = {
    "serve": check_serve,
    "worker": check_worker,
    "scheduler": check_scheduler,
    "poller": check_poller,
}
AUTO = "auto"


def check(role: str, settings: Settings) -> Health:
    """The health of ``role`` (a CHECKS name or ``auto``) on this host; never raises for Redis errors."""
    made: list[redis.Redis] = []

    def conn() -> redis.Redis:  # only the roles with records in Redis need it
        if settings.embedded_queue:
            raise _NoRedis
        if not made:
            made.append(connect(settings))
        return made[0]

    roles = list(CHECKS) if role == AUTO else [role]
    results: list[Health] = []
    for name in roles:
        try:
            result = CHECKS[name](settings, conn)
        except _NoRedis:
            result = Health(False, f"{name}: no [redis] url configured")
        except redis.RedisError as exc:
            result = Health(False, f"{name}: Redis unreachable ({type(exc).__name__})")
        if result.healthy:
            return result
        results.append(result)
    return results[0] if len(results) == 1 else Health(False, "; ".join(r.detail for r in results))


class _NoRedis(Exception):
    pass
