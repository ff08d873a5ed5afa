"""A Redis primary, its replica and three sentinels of our own (real ``redis-server`` processes, loopback).

The primary and the replica keep an AOF with ``appendfsync everysec`` (the setting docs/scaling.md
recommends with sentinels: the acknowledgement rests on ``WAIT`` to the replica, not on fsync). The
sentinels notice a dead primary after ``DOWN_AFTER_MS`` and promote the replica.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import redis

from tests.support.net import free_port, wait_for
from tests.support.procs import RedisServer, terminate

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
AOF_EVERYSEC = ("--appendonly", "yes", "--appendfsync", "everysec")


class SentinelServer:
    """``redis-server <conf> --sentinel`` on a free loopback port, monitoring ``service`` at ``primary``."""

    def __init__(self, directory: Path, service: str, primary: RedisServer, quorum: int = 2) -> None:
        self.directory = directory
        self.port = free_port()
        self.conf = directory / "sentinel.conf"
        self.log_path = directory / "sentinel.log"
        # Sentinels rewrite their config file (what they learn), so it is theirs, one per sentinel.
        self.conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {directory}",
                    f"logfile {self.log_path}",
                    f"sentinel monitor {service} 127.0.0.1 {primary.port} {quorum}",
                    f"sentinel down-after-milliseconds {service} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {service} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {service} 1",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def start(self) -> SentinelServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
        self.proc = subprocess.Popen(
            [binary, str(self.conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@dataclasses.dataclass
class SentinelGroup:
    """A primary, one replica and three sentinels; ``current_primary`` is what the sentinels say now."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[SentinelServer]
    service: str = SERVICE

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    def current_primary_port(self) -> int:
        _host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the replica is in sync and every sentinel knows the replica and the two other sentinels
        (before that a failover cannot be agreed on)."""

        def synced() -> bool:
            info = self.replica.client().info("replication")
            return info.get("master_link_status") == "up"

        wait_for(synced, "the replica in sync with the primary", timeout=timeout, log=self.replica.log)

        def agreed() -> bool:
            for sentinel in self.sentinels:
                try:
                    state = sentinel.client().sentinel_master(self.service)
                except redis.RedisError:
                    return False
                if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                    return False
            return True

        wait_for(agreed, "three sentinels agreeing on the primary and its replica", timeout=timeout)

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: the replica is promoted, the old primary becomes its replica."""
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", self.service)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.kill9()  # their data is the test's alone: no shutdown save to wait for
        self.primary.kill9()

    def logs(self) -> str:
        parts = [f"--- {s.address}\n{s.log()}" for s in self.sentinels]
        return "\n".join([f"--- primary\n{self.primary.log()}", f"--- replica\n{self.replica.log()}", *parts])


def start_sentinel_group(directory: Path) -> SentinelGroup:
    """Start everything under ``directory`` (stop it with ``stop()``, also when this raises)."""
    dirs = {name: directory / name for name in ("primary", "replica", "s1", "s2", "s3")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    primary = RedisServer(dirs["primary"], extra=AOF_EVERYSEC)
    replica = RedisServer(dirs["replica"], extra=AOF_EVERYSEC)
    replica.extra += ["--replicaof", "127.0.0.1", str(primary.port)]
    sentinels = [SentinelServer(dirs[name], SERVICE, primary) for name in ("s1", "s2", "s3")]
    group = SentinelGroup(primary, replica, sentinels)
    try:
        primary.start()
        replica.start()
        for sentinel in sentinels:
            sentinel.start()
        group.wait_ready()
    except BaseException:
        group.stop()
        raise
    return group
