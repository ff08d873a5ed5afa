"""Real child processes: the CLI, any command, and a ``redis-server`` of our own (loopback only)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import requests

from tests.support.net import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def smartflow_cmd(*args: str) -> list[str]:
    """The installed console script (falls back to the module when run from a bare checkout)."""
    exe = Path(sys.executable).with_name("fhir-smartflow")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-c", "from fhir_smartflow.cli import main; main()", *args]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without our SMARTFLOW_* settings, plus ``env``: a child sees only the
    configuration the test gives it."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    full.update(env or {})
    full.setdefault("PYTHONUNBUFFERED", "1")
    return full


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one ``fhir-smartflow`` command to completion in a child process."""
    return subprocess.run(
        smartflow_cmd(*args), env=child_env(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def terminate(proc: subprocess.Popen[Any], kill: bool = False) -> int:
    """SIGTERM (SIGKILL with ``kill``) unless it has exited, wait (SIGKILL after 10 s), the exit code."""
    if proc.poll() is None:
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


class Process:
    """A real child process (serve, worker, sandbox, ...) with its output in a log file, shown when it fails."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=child_env(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _exited(self) -> AssertionError:
        return AssertionError(f"{self.args} exited with {self.proc.returncode}:\n{self.output()[-6000:]}")

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Until ``url`` answers at all (any status); fails at once if the process exits."""

        def answers() -> bool:
            if not self.alive():
                raise self._exited()
            try:
                requests.get(url, timeout=0.5)
            except (requests.ConnectionError, requests.Timeout):  # still starting, or busy
                return False
            return True

        wait_for(answers, f"{url} to answer", timeout=timeout, log=self.output)

    def wait_output(self, text: str, timeout: float = 20.0) -> str:
        """Until ``text`` is in the output (returned); fails at once if the process exits first."""

        def logged() -> str | None:
            out = self.output()
            if text in out:
                return out
            if not self.alive():
                raise self._exited()
            return None

        return wait_for(logged, f"{text!r} in the output of {self.args[:3]}", timeout=timeout, log=self.output)

    def stop(self, kill: bool = False) -> int:
        """SIGTERM (SIGKILL with ``kill``), wait, and return the exit code."""
        code = terminate(self.proc, kill)
        if not self._log.closed:
            self._log.close()
        return code


class RedisServer:
    """A ``redis-server`` of our own on a free loopback port, its files in ``directory``.

    ``durable``: AOF with fsync on every write, so SIGKILL + restart on the same directory keeps every
    acknowledged write (the chaos runs); otherwise nothing is persisted (the test suite, benchmarks).
    Tests and benchmarks only ever talk to a Redis they started.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        durable: bool = False,
        databases: int = 16,
        extra: Sequence[str] = (),
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> None:
        """``extra``: more redis-server arguments (``--replicaof``, persistence); ``host``: the address it binds
        (a test host's, in a network namespace); ``prefix``: what runs it there (``ip netns exec <ns>``)."""
        self.directory = directory
        self.port = port or free_port()
        self.durable = durable
        self.databases = databases
        self.extra = list(extra)
        self.host = host
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = directory / "redis.log"

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def start(self, timeout: float = 15.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        args = [
            *self.prefix,
            binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--save", "",
            *persistence,
            "--databases", str(self.databases),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.starts += 1
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        conn = self.client(socket_connect_timeout=0.5)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.log()}")
            try:
                return bool(conn.ping())
            except (redis.ConnectionError, redis.BusyLoadingError):  # BusyLoading while the AOF is replayed
                return False

        try:
            wait_for(ready, f"redis-server on {self.port} to answer", timeout=timeout, log=self.log)
        finally:
            conn.close()

    def kill9(self) -> None:
        """SIGKILL: no shutdown save, no AOF rewrite; what is on disk is what survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, down_seconds: float = 0.0) -> None:
        """kill -9, stay down ``down_seconds`` (an outage the clients must ride out), start again."""
        self.kill9()
        if down_seconds:
            time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
