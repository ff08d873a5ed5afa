"""The benchmarks' counting Redis proxy, over real sockets to the suite's redis-server: what it counts as
commands and round trips is what redis-py sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from benchmarks._redis_proxy import ProxyControl, RedisProxy, RespCommandCounter, delta
from tests.support.procs import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[RedisProxy]:
    proxy = RedisProxy(("127.0.0.1", redis_server.port), {"a": 0, "b": 0}, control_port=0).start()
    yield proxy
    proxy.stop()


def test_parser_counts_commands_split_anywhere() -> None:
    stream = b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nget k\r\n"
    for cut in range(1, len(stream)):
        counter = RespCommandCounter()
        assert counter.feed(stream[:cut]) + counter.feed(stream[cut:]) == ["PING", "SET", "GET"], cut


def test_commands_and_round_trips_per_role(proxy: RedisProxy, redis_db: int) -> None:
    a = redis.Redis.from_url(proxy.url("a", redis_db))
    b = redis.Redis.from_url(proxy.url("b", redis_db))
    a.ping()  # the connection's handshake (CLIENT SETINFO) is counted too: start from here
    b.ping()
    control = ProxyControl(proxy.control_port or 0)
    before = control.stats()

    a.set("k", "v")
    assert a.get("k") == b"v"
    with a.pipeline(transaction=True) as pipe:  # MULTI, 3 commands, EXEC: one burst, one reply burst
        pipe.incr("n").incr("n").expire("n", 60)  # redis-py sends INCR as INCRBY
        pipe.execute()
    with b.pipeline(transaction=False) as pipe:
        for i in range(50):
            pipe.set(f"b{i}", i)
        pipe.execute()

    counts = delta(control.stats(), before)
    control.close()
    assert counts["a"]["commands"] == 2 + 5
    assert counts["a"]["round_trips"] == 3
    assert counts["a"]["by_command"] == {"SET": 1, "GET": 1, "MULTI": 1, "INCRBY": 2, "EXPIRE": 1, "EXEC": 1}
    assert counts["b"]["commands"] == 50
    assert counts["b"]["round_trips"] == 1
    assert counts["a"]["connections"] == counts["b"]["connections"] == 0  # opened before `before`
    a.close()
    b.close()
