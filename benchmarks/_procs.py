"""Process, port and Redis helpers shared by the benchmarks (real processes, loopback only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENV = "SMARTFLOW_BENCH_SECRET"
SECRET = "bench-secret-0123456789abcdef"
SECRET_HEADER = "X-Smartflow-Secret"
SUBSCRIPTION_ID = "bench-patient"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of our own on a free loopback port, its files in ``directory``.

    ``durable``: AOF with fsync on every write, so SIGKILL + restart on the same directory keeps every
    acknowledged write (the chaos runs); otherwise nothing is persisted (the test suite, benchmarks).
    Tests and benchmarks only ever talk to a Redis they started.
    """

    def __init__(self, directory: Path, port: int | None = None, *, durable: bool = False, databases: int = 16) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.durable = durable
        self.databases = databases
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self, timeout: float = 15.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            *persistence,
            "--databases", str(self.databases),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.starts += 1
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        conn = self.client(socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.log()}")
                try:
                    if conn.ping():  # raises BusyLoadingError while the AOF is replayed
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.05)
            raise RuntimeError(f"redis-server on {self.port} not ready in {timeout}s: {self.log()}")
        finally:
            conn.close()

    def kill9(self) -> None:
        """SIGKILL: no shutdown save, no AOF rewrite; what is on disk is what survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.kill9()
        if down_seconds:
            time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """The URL of a fresh ``redis-server`` started for this benchmark run, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="smartflow-redis-") as directory:
        server = RedisServer(Path(directory)).start()
        try:
            yield server.url
        finally:
            server.stop()


def smartflow_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("fhir-smartflow")
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-c", "from fhir_smartflow.cli import main; main()", *args]


def cli_commands() -> set[str]:
    """Names of the registered ``fhir-smartflow`` commands ({} when the CLI does not import)."""
    try:
        from fhir_smartflow.cli import main
    except Exception:
        return set()
    return set(getattr(main, "commands", {}))


def command_options(name: str) -> set[str]:
    """Long option names of one CLI command (e.g. {"--port", "--threads"})."""
    try:
        from fhir_smartflow.cli import main
    except Exception:
        return set()
    cmd = getattr(main, "commands", {}).get(name)
    if cmd is None:
        return set()
    return {opt for param in cmd.params for opt in getattr(param, "opts", []) if opt.startswith("--")}


class Proc:
    """A child process with its output in a log file (shown when it fails)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            try:
                requests.get(url, timeout=0.5)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"{url} did not answer within {timeout}s:\n{self.output()[-4000:]}")

    def stop(self, kill: bool = False) -> int | None:
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_config(
    path: Path,
    sections: dict[str, dict[str, Any]],
    subscriptions: list[dict[str, Any]] | None = None,
) -> Path:
    """A fhir-smartflow TOML config (sections + [[subscriptions]])."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    for sub in subscriptions or []:
        lines.append("[[subscriptions]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in sub.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def bench_subscription() -> dict[str, Any]:
    return {"id": SUBSCRIPTION_ID, "auth": "header", "header": SECRET_HEADER, "secret_env": SECRET_ENV}


def machine() -> str:
    import platform

    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
