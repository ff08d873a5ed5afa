"""The two-round-trip WATCH transaction, on the suite's real redis-server (round trips counted by the
benchmarks' proxy) and on the embedded fakeredis: conflicts and dropped connections run it again from
the reads, and what it wrote is written once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from redis.client import Pipeline

from benchmarks._redis_proxy import ProxyControl, RedisProxy, delta
from fhir_smartflow.redis_watch import watch_read_write
from tests.support.procs import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisProxy]:
    proxy = RedisProxy(("127.0.0.1", redis_server.port), {"a": 0}, control_port=0).start()
    yield proxy
    proxy.stop()


def add_to_total(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> int:
    """Read ``total``, write total + 1 and a log entry; returns what it read."""
    total = int(values[0] or 0)
    pipe.set("total", total + 1)
    pipe.rpush("log", total)
    return total


def test_reads_and_writes_take_two_round_trips(proxy: RedisProxy, redis_db: int) -> None:
    conn = redis.Redis.from_url(proxy.url("a", redis_db))
    conn.set("total", 41)
    control = ProxyControl(proxy.control_port or 0)
    before = control.stats()

    read, results = watch_read_write(conn, ["total"], [("GET", "total")], add_to_total)

    counts = delta(control.stats(), before)["a"]
    control.close()
    assert (read, results) == (41, [True, 1])
    assert counts["round_trips"] == 2
    assert counts["by_command"] == {"WATCH": 1, "GET": 1, "MULTI": 1, "SET": 1, "RPUSH": 1, "EXEC": 1}
    assert conn.get("total") == b"42"
    conn.close()


def test_a_conflicting_write_runs_the_transaction_again_from_the_reads(redis_conn: redis.Redis) -> None:
    other = redis.Redis(connection_pool=redis.ConnectionPool(**redis_conn.connection_pool.connection_kwargs))
    redis_conn.set("total", 1)
    seen: list[int] = []

    def decide(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> int:
        seen.append(int(values[0]))
        if len(seen) == 1:
            other.set("total", 10)  # after our WATCH: our EXEC must not apply
        return add_to_total(values, pipe, read)

    read, _ = watch_read_write(redis_conn, ["total"], [("GET", "total")], decide)

    assert seen == [1, 10] and read == 10
    assert redis_conn.get("total") == b"11"
    assert redis_conn.lrange("log", 0, -1) == [b"10"]  # the first attempt's writes never landed
    other.close()


def test_a_connection_dropped_before_exec_is_retried_once_on_a_fresh_one(redis_conn: redis.Redis) -> None:
    killer = redis.Redis(connection_pool=redis.ConnectionPool(**redis_conn.connection_pool.connection_kwargs))
    attempts: list[int] = []

    def decide(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> int:
        client_id = read("CLIENT", "ID")  # one more read under the same WATCH, on the same connection
        attempts.append(client_id)
        if len(attempts) == 1:
            killer.client_kill_filter(_id=client_id)
        return add_to_total(values, pipe, read)

    watch_read_write(redis_conn, ["total"], [("GET", "total")], decide)

    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert redis_conn.get("total") == b"1" and redis_conn.lrange("log", 0, -1) == [b"0"]
    killer.close()


def test_an_error_in_decide_leaves_no_watch_on_the_pooled_connection(redis_conn: redis.Redis) -> None:
    kwargs = redis_conn.connection_pool.connection_kwargs
    conn = redis.Redis(connection_pool=redis.BlockingConnectionPool(max_connections=1, **kwargs))
    other = redis.Redis(connection_pool=redis.ConnectionPool(**kwargs))

    def fail(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> None:
        raise ValueError("bad state")

    with pytest.raises(ValueError, match="bad state"):
        watch_read_write(conn, ["total"], [("GET", "total")], fail)
    other.set("total", 5)  # had the one pooled connection kept its WATCH, the next EXEC would be refused
    calls: list[None] = []

    def write(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> None:
        calls.append(None)
        pipe.set("other", 1)

    watch_read_write(conn, [], [], write)
    assert len(calls) == 1 and conn.get("other") == b"1"
    conn.close()
    other.close()


def test_a_command_refused_when_queued_raises_and_writes_nothing(redis_conn: redis.Redis) -> None:
    def bad_write(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> None:
        pipe.set("total", 1)
        pipe.execute_command("NOSUCHCOMMAND")

    with pytest.raises(redis.ResponseError, match=r"(?i)unknown command"):
        watch_read_write(redis_conn, [], [], bad_write)
    assert redis_conn.get("total") is None
    assert redis_conn.ping()


def test_the_embedded_fakeredis_runs_it_the_same_way() -> None:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    conn.hset("state", mapping={"highest": 3})
    reads = [("HGETALL", "state"), ("ZSCORE", "pending", "2")]

    def decide(values: list[Any], pipe: Pipeline, read: Callable[..., Any]) -> tuple[dict[bytes, bytes], Any]:
        pipe.hset("state", "highest", 4)
        pipe.zrangebyscore("pending", "-inf", "+inf")
        return values[0], values[1]

    (state, score), results = watch_read_write(conn, ["state"], reads, decide)

    assert state == {b"highest": b"3"} and score is None
    assert results == [0, []]
    assert conn.hget("state", "highest") == b"4"
