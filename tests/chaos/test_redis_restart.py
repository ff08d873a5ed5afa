"""The chaos harness itself: kill -9 Redis and restart it on the same AOF; nothing acknowledged is lost.

These run without the service: they prove the fixture the full chaos run relies on, and that an rq
job queued before the crash is still there (and runs) afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker

from tests.support.net import wait_for

if TYPE_CHECKING:
    from chaos_harness import RedisServer

# Fixtures (chaos_redis, chaos_n, repeaters) come from chaos_harness: see its docstring.
pytest_plugins = ["chaos_harness"]

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def test_keys_survive_kill9_and_restart(chaos_redis: RedisServer) -> None:
    conn = chaos_redis.client()
    conn.set("plain", "value")
    conn.hset("hash", mapping={"a": "1", "b": "2"})
    conn.rpush("list", *[str(i) for i in range(1000)])
    conn.incrby("counter", 41)
    conn.incr("counter")
    conn.close()
    old_pid = chaos_redis.proc.pid if chaos_redis.proc else None

    chaos_redis.restart()

    assert chaos_redis.proc is not None and chaos_redis.proc.pid != old_pid
    assert chaos_redis.starts == 2
    conn = chaos_redis.client()
    assert conn.get("plain") == b"value"
    assert conn.hgetall("hash") == {b"a": b"1", b"b": b"2"}
    assert conn.llen("list") == 1000
    assert conn.lrange("list", -1, -1) == [b"999"]
    assert conn.get("counter") == b"42"
    conn.close()


def test_clients_see_the_outage_then_reconnect(chaos_redis: RedisServer) -> None:
    conn = chaos_redis.client(socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))  # fail fast
    conn.set("k", "1")
    chaos_redis.kill9()
    with pytest.raises(redis.ConnectionError):
        conn.get("k")
    chaos_redis.start()
    assert conn.get("k") == b"1"  # the same client object reconnects on its next command
    conn.close()


def test_rq_job_queued_before_the_crash_runs_after_restart(chaos_redis: RedisServer) -> None:
    conn = chaos_redis.client()
    queue = Queue("smartflow", connection=conn)
    job = queue.enqueue("operator.add", 2, 3)
    conn.close()

    chaos_redis.restart()

    conn = chaos_redis.client()
    queue = Queue("smartflow", connection=conn)
    assert queue.count == 1
    assert queue.job_ids == [job.id]
    worker = SimpleWorker([queue], connection=conn)
    assert worker.work(burst=True)
    assert queue.fetch_job(job.id).return_value() == 5
    assert queue.count == 0
    conn.close()


def test_repeater_kills_and_restarts_a_process_bounded(tmp_path) -> None:
    """The Repeater the full run uses to SIGKILL workers: bounded, and each kill really lands."""
    from chaos_harness import Repeater, sigkill

    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
    exit_codes: list[int] = []

    def kill_and_restart(_i: int) -> None:
        sigkill(procs[-1].pid)
        exit_codes.append(procs[-1].wait(timeout=5))
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))

    rep = Repeater(kill_and_restart, interval=0.05, max_times=3).start()
    wait_for(lambda: rep.done >= 3, "three kills", timeout=10)
    assert rep.stop() == 3
    assert not rep.errors
    assert exit_codes == [-9, -9, -9]
    assert len({p.pid for p in procs}) == 4
    assert procs[-1].poll() is None
    procs[-1].kill()
    procs[-1].wait(timeout=5)
