"""Test "hosts" on this machine: Linux network namespaces on one bridge, made and removed by the test.

Each host is a namespace with one veth pair: ``eth0`` inside, the other end on a bridge in the root
namespace, where the test process itself (the load-balancing client, the sandbox FHIR store) has the
bridge's address. All traffic stays on these interfaces. ``cut(host)`` takes the host's link down (its
processes keep running but reach nothing, and nothing reaches them); ``restore(host)`` brings it back.

Needs root and iproute2 (``ip``); `unavailable()` says why a test has to skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Iterator

# The subnet of one HostNetwork: 10.<A>.<B>.0/24 picked from the pid, so runs side by side do not clash.
_NET_A = 213


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip``, no permission), else None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"sfprobe{os.getpid() % 100_000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str
    link: str  # the veth end on the bridge (root namespace): down = cut off

    def prefix(self) -> list[str]:
        """What runs a command on this host."""
        return ["ip", "netns", "exec", self.netns]


class HostNetwork:
    """A bridge and hosts on it; `close()` removes every namespace and link made (also after a failure)."""

    def __init__(self) -> None:
        tag = os.getpid() % 10_000
        self.tag = f"sf{tag}"
        self.subnet = f"10.{_NET_A}.{tag % 250}"
        self.bridge = f"{self.tag}br"
        self.gateway = f"{self.subnet}.1"  # the root namespace's address: the test and the FHIR store
        self.hosts: dict[str, Host] = {}
        self._netns: list[str] = []
        self._links: list[str] = []

    def up(self) -> HostNetwork:
        self.close()  # leftovers of an earlier run with the same pid (a killed test) would clash
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 10
        host = Host(name, f"{self.tag}-{name}", f"{self.subnet}.{number}", f"{self.tag}v{number}")
        _ip("netns", "add", host.netns)
        self._netns.append(host.netns)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        self._links.append(host.link)
        _ip("link", "set", host.link, "master", self.bridge, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        _ip("link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        _ip("link", "set", host.link, "up")

    def close(self) -> None:
        """Remove the namespaces, veths and bridge of this tag, known or left over; never raises."""
        leftovers = _ip("netns", "list", check=False).stdout.split()
        for netns in {*self._netns, *(n for n in leftovers if n.startswith(f"{self.tag}-"))}:
            _ip("netns", "del", netns, check=False)
        links = _ip("-o", "link", "show", check=False).stdout.splitlines()
        names = {line.split(":")[1].strip().split("@")[0] for line in links if ":" in line}
        for link in {*self._links, *(n for n in names if n.startswith(self.tag))}:
            if link in names:
                _ip("link", "del", link, check=False)
        self._netns.clear()
        self._links.clear()
        self.hosts.clear()


@contextlib.contextmanager
def network_of_hosts() -> Iterator[HostNetwork]:
    network = HostNetwork()
    try:
        yield network.up()
    finally:
        network.close()
