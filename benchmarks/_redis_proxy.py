"""A counting TCP proxy in front of one Redis: commands and round trips per client role.

Each role (``serve``, ``worker``, ...) gets its own loopback listening port; every connection accepted
there is relayed byte for byte to the upstream Redis (one upstream connection per client connection,
so Redis sees the same connections it would without the proxy). On the way the proxy counts, per role:

- ``commands``: RESP arrays the client sent (``*<n>`` … each one command, MULTI and EXEC included),
  by command name, parsed incrementally from the client's byte stream;
- ``round_trips``: request bursts answered by the server: on one connection, client bytes that arrive
  after the server last spoke (or as the first bytes) open a new round trip. A pipeline sent in one
  go is one round trip; a command per reply is one each. A blocking pop waiting for a job is one;
  pub/sub pushes the server sends unasked open none;
- ``connections`` opened, and bytes each way.

Run as a process of its own (``python -m benchmarks._redis_proxy``) so its CPU is neither ours nor
Redis's; ``stats`` on the control port answers one JSON line with the counters and the proxy's own CPU
(``time.process_time``). In-process use (the unit test): ``RedisProxy(...).start()`` in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class RespCommandCounter:
    """Incremental parser of a client's RESP byte stream: yields the name of each complete command.

    Clients send arrays of bulk strings (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``); an inline command
    (a bare line, as ``redis-cli`` or telnet send) counts as one command named by its first word.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        names: list[str] = []
        while True:
            name = self._one()
            if name is None:
                break
            names.append(name)
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        return names

    def _line(self, at: int) -> tuple[bytes, int] | None:
        end = self._buf.find(b"\r\n", at)
        if end < 0:
            return None
        return bytes(self._buf[at:end]), end + 2

    def _one(self) -> str | None:
        """The next complete command's name (consumed), or None when the buffer holds only part of one."""
        if self._pos >= len(self._buf):
            return None
        head = self._line(self._pos)
        if head is None:
            return None
        line, at = head
        if not line.startswith(b"*"):  # inline command
            self._pos = at
            words = line.split()
            return words[0].decode("ascii", "replace").upper() if words else self._one()
        count = int(line[1:])
        name = ""
        for i in range(count):
            bulk = self._line(at)
            if bulk is None:
                return None
            size_line, at = bulk
            size = int(size_line[1:])
            if len(self._buf) < at + size + 2:
                return None
            if i == 0:
                name = bytes(self._buf[at : at + size]).decode("ascii", "replace").upper()
            at += size + 2
        self._pos = at
        return name


@dataclass
class RoleCounts:
    connections: int = 0
    commands: int = 0
    round_trips: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0
    by_command: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "commands": self.commands,
            "round_trips": self.round_trips,
            "bytes_to_server": self.bytes_to_server,
            "bytes_to_client": self.bytes_to_client,
            "by_command": dict(self.by_command),
        }


class _Connection:
    """One relayed client connection: who spoke last decides whether client bytes open a round trip."""

    def __init__(self, counts: RoleCounts) -> None:
        self.counts = counts
        self.parser = RespCommandCounter()
        self.server_spoke_last = True  # the first client bytes open the first round trip

    def from_client(self, data: bytes) -> None:
        if self.server_spoke_last:
            self.counts.round_trips += 1
            self.server_spoke_last = False
        self.counts.bytes_to_server += len(data)
        names = self.parser.feed(data)
        self.counts.commands += len(names)
        self.counts.by_command.update(names)

    def from_server(self, data: bytes) -> None:
        self.server_spoke_last = True
        self.counts.bytes_to_client += len(data)


class RedisProxy:
    """Listen on ``127.0.0.1:<port>`` per role, relay to ``upstream``; counters per role."""

    def __init__(self, upstream: tuple[str, int], roles: dict[str, int], control_port: int | None = None) -> None:
        self.upstream = upstream
        self.roles = dict(roles)  # role -> port (0: any free port, see .ports after start)
        self.control_port = control_port
        self.counts: dict[str, RoleCounts] = {role: RoleCounts() for role in roles}
        self.ports: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- counters ------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "roles": {role: c.as_dict() for role, c in self.counts.items()},
            "proxy_cpu_s": time.process_time(),
        }

    def reset(self) -> None:
        for role in self.counts:
            self.counts[role] = RoleCounts()

    # -- relay ---------------------------------------------------------------------------------------
    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_data: Any, peer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                on_data(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side closed: close both, as a direct connection would end.
            for w in (writer, peer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _handle(self, role: str, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        counts = self.counts[role]
        try:
            ureader, uwriter = await asyncio.open_connection(*self.upstream)
        except OSError:
            cwriter.close()
            return
        counts.connections += 1
        conn = _Connection(counts)
        # counts may be replaced by reset(): a connection keeps counting into its role's current counts.
        conn_role = role

        def from_client(data: bytes) -> None:
            conn.counts = self.counts[conn_role]
            conn.from_client(data)

        def from_server(data: bytes) -> None:
            conn.counts = self.counts[conn_role]
            conn.from_server(data)

        await asyncio.gather(
            self._pipe(creader, uwriter, from_client, cwriter),
            self._pipe(ureader, cwriter, from_server, uwriter),
        )

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := (await reader.readline()).strip():
                if line == b"reset":
                    self.reset()
                    writer.write(b'{"ok": true}\n')
                else:
                    writer.write(json.dumps(self.stats()).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    async def _start(self) -> None:
        for role, port in self.roles.items():
            server = await asyncio.start_server(
                lambda r, w, role=role: self._handle(role, r, w), "127.0.0.1", port, reuse_address=True
            )
            self._servers.append(server)
            self.ports[role] = server.sockets[0].getsockname()[1]
        if self.control_port is not None:
            server = await asyncio.start_server(self._control, "127.0.0.1", self.control_port, reuse_address=True)
            self._servers.append(server)
            self.control_port = server.sockets[0].getsockname()[1]

    def run_forever(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.run_until_complete(self._start())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for server in self._servers:
                server.close()
            loop.close()

    def start(self) -> RedisProxy:
        """Run in a daemon thread (tests); returns once every port listens."""
        self._thread = threading.Thread(target=self.run_forever, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def url(self, role: str, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.ports[role]}/{db}"


class ProxyControl:
    """The driver's side of a proxy process: ``stats()`` / ``reset()`` over its control port."""

    def __init__(self, port: int) -> None:
        import socket

        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._file = self._sock.makefile("rb")

    def _ask(self, what: bytes) -> dict[str, Any]:
        self._sock.sendall(what + b"\n")
        return json.loads(self._file.readline())

    def stats(self) -> dict[str, Any]:
        return self._ask(b"stats")

    def reset(self) -> None:
        self._ask(b"reset")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Per-role counters ``after - before`` (two ``stats()`` answers)."""
    out: dict[str, Any] = {}
    for role, a in after["roles"].items():
        b = before["roles"].get(role, {})
        row = {k: a[k] - b.get(k, 0) for k in ("connections", "commands", "round_trips")}
        by = Counter(a["by_command"])
        by.subtract(b.get("by_command", {}))
        row["by_command"] = {k: v for k, v in by.items() if v}
        out[role] = row
    out["proxy_cpu_s"] = after["proxy_cpu_s"] - before["proxy_cpu_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Counting TCP proxy in front of one Redis (loopback only)")
    parser.add_argument("--upstream-port", type=int, required=True, help="Redis on 127.0.0.1")
    parser.add_argument("--role", action="append", default=[], help="NAME=PORT, one listening port per role")
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args(argv)
    roles = {name: int(port) for name, port in (r.split("=", 1) for r in args.role)}
    proxy = RedisProxy(("127.0.0.1", args.upstream_port), roles, args.control_port)
    print(json.dumps({"ports": roles, "control_port": args.control_port}), flush=True)
    proxy.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
