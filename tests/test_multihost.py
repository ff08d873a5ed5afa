"""The service spread over several hosts on one Redis: network namespaces made by the test.

Hosts (tests/support/netns.py, one bridge, all traffic on it): ``web`` runs two ``serve`` processes,
``workers-a`` two workers, ``workers-b`` one, ``redis`` the redis-server; the test process (the
load-balancing client, posting round-robin to the two serves) and the sandbox FHIR store have the
bridge's address. N patients' notifications are delivered 3 times each, shuffled. A third of the way
in, ``workers-a`` is cut off (its link down) until the other host's worker has seen its workers dead,
then restored: its workers pick up again where they were. Then every patient has exactly one Task and
one Communication, nothing lost, no job left or failed, and every worker is still running.

Short form N = 300 (the default run); ``--chaos-long``: N = 5,000 (marked ``long``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks._stack import Stack, patient_ref
from fhir_smartflow.config import load_settings
from fhir_smartflow.worker.supervise import WORKER_NAME_PREFIX
from tests.chaos.test_exactly_once import Sender, duplicates, failed_reasons, ours, settle
from tests.support import netns
from tests.support.net import free_port, wait_for
from tests.support.procs import Process, RedisServer, smartflow_cmd

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SHORT_N = 300
LONG_N = 5_000
SERVE_PORTS = (8081, 8082)  # inside the web host's own namespace: nothing else listens there
SENDER_THREADS = 6
SERVICE_CONFIG = {
    # Abandoned jobs are noticed by the liveness keys (6 s); the job timeout only bounds a stuck one.
    # A short gap grace: the sweep a shuffled run schedules fires soon after the run.
    "redis": {"job_timeout_seconds": 15, "gap_grace_seconds": 2},
    # A cut-off worker's FHIR requests time out and are retried once its host is back.
    "fhir": {"max_retries": 10, "backoff_base_seconds": 0.05, "backoff_max_seconds": 0.5, "timeout_seconds": 5.0},
}


@pytest.fixture
def hosts() -> Iterator[netns.HostNetwork]:
    """The bridge and its hosts; every namespace and link removed at the end, also when the test fails."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with netns.network_of_hosts() as network:
        yield network


def test_multihost_short(tmp_path: Path, hosts: netns.HostNetwork) -> None:
    run_multihost(tmp_path, hosts, SHORT_N)


@pytest.mark.long
def test_multihost_long(tmp_path: Path, hosts: netns.HostNetwork, request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--chaos-long"):
        pytest.skip("the long form (N = 5,000) runs with --chaos-long")
    run_multihost(tmp_path, hosts, LONG_N)


def alive_workers(conn, prefix: str, pids: list[int]) -> list[str]:
    """Liveness keys (worker/supervise.py) still held by the workers with these process ids."""
    keys = [k.decode() for k in conn.scan_iter(f"{prefix}worker-alive:{WORKER_NAME_PREFIX}*")]
    return [k for k in keys if any(f"-{pid}-" in k for pid in pids)]


def run_multihost(tmp_path: Path, network: netns.HostNetwork, n: int) -> None:
    started = time.monotonic()
    web, workers_a, workers_b, redis_host = (network.add_host(h) for h in ("web", "workers-a", "workers-b", "redis"))
    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(
        tmp_path / "redis",
        host=redis_host.address,
        prefix=redis_host.prefix(),
        extra=["--protected-mode", "no"],  # clients on other hosts, without a password, on the test's own bridge
    )
    redis_server.start()
    stack = Stack(tmp_path, redis_server.url, extra_config=SERVICE_CONFIG)
    serves: list[Process] = []
    try:
        fhir_port = free_port()  # on the bridge address, in this (root) namespace where others listen too
        stack.sandbox = Process(
            smartflow_cmd("sandbox", "--host", network.gateway, "--port", str(fhir_port)), tmp_path / "sandbox.log"
        )
        stack.fhir_base = f"http://{network.gateway}:{fhir_port}"
        stack.sandbox.wait_http(f"{stack.fhir_base}/metadata")
        stack.write_config()
        settings = load_settings(stack.config_path, env={})
        for port in SERVE_PORTS:
            args = [*web.prefix(), *smartflow_cmd("serve", "--host", web.address, "--port", str(port))]
            serves.append(Process(args, tmp_path / f"serve-{port}.log", stack.env()))
        placement = {"a1": workers_a, "a2": workers_a, "b1": workers_b}
        for name, host in placement.items():
            args = [*host.prefix(), *smartflow_cmd("worker", "--worker-class", "simple")]
            stack.workers[name] = Process(args, tmp_path / f"worker-{name}.log", stack.env())
        urls = [f"http://{web.address}:{port}" for port in SERVE_PORTS]
        for serve, url in zip(serves, urls, strict=True):
            serve.wait_http(f"{url}/healthz")
        patients = stack.create_patients(n)
        print(f"{n} patients at {time.monotonic() - started:.1f}s")

        bodies = {i: stack.notify_body(p, i + 1) for i, p in enumerate(patients)}
        deliveries = [i for i in range(n) for _ in range(3)]
        random.Random(20261202).shuffle(deliveries)
        senders = [Sender(f"{url}/fhir/notify", stack.headers(), give_up_after=120) for url in urls]

        def accepted() -> int:
            return sum(s.statuses[200] for s in senders)

        conn = redis_server.client()
        prefix = settings.redis.key_prefix
        a_pids = [stack.workers[name].pid for name in ("a1", "a2")]
        cut: dict[str, float] = {}

        def cut_off_and_restore() -> None:
            wait_for(lambda: accepted() >= len(deliveries) // 3, "a third of the deliveries", timeout=300)
            wait_for(lambda: len(alive_workers(conn, prefix, a_pids)) == 2, "workers-a's workers beating", timeout=60)
            cut["at"] = time.monotonic()
            network.cut(workers_a)
            try:  # until its workers' liveness keys expired: the other host takes their jobs over now
                wait_for(lambda: not alive_workers(conn, prefix, a_pids), "workers-a seen dead", timeout=60)
            finally:
                network.restore(workers_a)
            cut["for"] = time.monotonic() - cut["at"]
            wait_for(lambda: len(alive_workers(conn, prefix, a_pids)) == 2, "workers-a back", timeout=60)

        chaos = threading.Thread(target=cut_off_and_restore, name="cut-off")
        chaos.start()
        with ThreadPoolExecutor(SENDER_THREADS) as pool:
            list(pool.map(lambda k: senders[k % 2].deliver(bodies[deliveries[k]]), range(len(deliveries))))
        chaos.join(120)
        assert not chaos.is_alive() and "for" in cut, "workers-a was not cut off and restored during the run"
        statuses = sum((s.statuses for s in senders), Counter())
        print(f"delivered at {time.monotonic() - started:.1f}s: {dict(statuses)}; workers-a cut for {cut['for']:.1f}s")

        state = settle(stack, conn, cap=300 if n <= SHORT_N else 3600)
        system = settings.fhir.identifier_system
        tasks = ours(stack.search_all("Task"), system)
        comms = ours(stack.search_all("Communication"), system)
        assert not duplicates(tasks), f"Tasks written more than once: {duplicates(tasks)}"
        assert not duplicates(comms), f"Communications written more than once: {duplicates(comms)}"
        sent = {f"Patient/{p['id']}" for p in patients}
        task_patients = Counter(patient_ref(t[0]["for"]["reference"]) for t in tasks.values())
        comm_patients = Counter(patient_ref(c[0]["subject"]["reference"]) for c in comms.values())
        assert set(task_patients) == sent, f"patients without a Task: {sorted(sent - set(task_patients))[:20]}"
        assert set(comm_patients) == sent and set(task_patients.values()) | set(comm_patients.values()) == {1}
        left = [*state.get("queued", []), *state.get("started", []), *state.get("scheduled", [])]
        assert not state.get("failed"), f"failed jobs: {failed_reasons(conn, state['failed'])}"
        assert not left, f"jobs left: { {k: len(v) for k, v in state.items()} }"
        assert statuses[200] == len(deliveries) and 500 not in statuses, statuses
        exited = [name for name, proc in stack.workers.items() if not proc.alive()]
        assert not exited, f"workers exited (they must ride out the cut): {exited}"
        print(f"multi-host run N={n}: {time.monotonic() - started:.1f}s, webhook statuses {dict(statuses)}")
    except BaseException:
        print(stack.service_logs()[-6000:])
        raise
    finally:
        for proc in [*stack.workers.values(), *serves]:
            proc.stop(kill=True)  # nothing left for them to finish; the namespaces go next
        stack.stop()
        redis_server.kill9()
