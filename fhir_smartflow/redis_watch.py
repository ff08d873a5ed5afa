"""A WATCH transaction in two round trips: WATCH with its reads in one, MULTI…EXEC in the other.

redis-py's ``Redis.transaction`` sends WATCH, then every read, then MULTI…EXEC, each a round trip of its
own (three or more per transaction). Every event pays two such transactions (its event-number
bookkeeping and its final done-mark), and round trips, not commands, are what a busy Redis and its
clients spend most on; so here WATCH and the reads go out in one packed write and the writes in another.

Semantics are redis-py's: ``decide(values, pipe, read)`` gets the reads' answers (after redis-py's
response callbacks) and queues its writes on ``pipe`` (a transaction pipeline, never executed itself);
``read(*command)`` is one more read under the same WATCH when a decision needs it (a round trip: for the
rare branches). When a watched key changed before EXEC the whole attempt runs again, reads first, so
``decide`` must decide from what it reads. A dropped connection is retried the same way, under the
client's retry policy: whether or not the EXEC that was in flight took effect, the next reads see it.
``then(connection)`` runs after a successful EXEC on the connection that sent it (``WAIT`` for replicas
counts that connection's writes).

`run_script` is the one-round-trip form for a decision that is itself simple enough to write in Lua: a
script runs atomically, so there is nothing to WATCH. Same connection handling, retry and ``then``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError, WatchError
from redis.retry import Retry

T = TypeVar("T")
Command = tuple[Any, ...]  # ("HGETALL", key)
Decide = Callable[[list[Any], Pipeline, Callable[..., Any]], T]
AfterExec = Callable[[AbstractConnection], None]

# A client without a retry policy of its own (redis-py's default): one immediate retry, so a stale pooled
# connection (Redis restarted, a failover) costs no event. Retry keeps no state between calls.
_ONE_QUICK_RETRY = Retry(NoBackoff(), 1)


def watch_read_write(
    conn: redis.Redis,
    watch: Sequence[str],
    reads: Sequence[Command],
    decide: Decide[T],
    then: AfterExec | None = None,
) -> tuple[T, list[Any]]:
    """Run one optimistic transaction; returns what ``decide`` returned and the EXEC results. A dropped
    connection is retried under the client's own retry policy (as redis-py retries a command)."""
    retry = conn.get_retry() or _ONE_QUICK_RETRY
    while True:
        try:
            return retry.call_with_retry(
                lambda: _on_a_connection(conn, lambda c: _attempt(conn, c, watch, reads, decide), then), _ignore
            )
        except WatchError:
            continue


def _ignore(error: Exception) -> None:
    """The failed connection was already dropped where it failed."""


def run_script(
    conn: redis.Redis, script: ServerScript, keys: Sequence[Any], args: Sequence[Any], then: AfterExec | None = None
) -> Any:
    """``script`` on one connection (EVALSHA; EVAL when the server does not have it yet), then ``then`` there;
    its reply. A dropped connection is retried under the client's retry policy, as `watch_read_write` does."""
    retry = conn.get_retry() or _ONE_QUICK_RETRY

    def attempt(connection: AbstractConnection) -> Any:
        return script.call(conn, connection, keys, args)

    return retry.call_with_retry(lambda: _on_a_connection(conn, attempt, then), _ignore)


class ServerScript:
    """A Lua script sent by its SHA1 once the server has it (the first call, and after a restart, send its body)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, conn: redis.Redis, connection: AbstractConnection, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return conn.parse_response(connection, "EVALSHA")
        except NoScriptError:  # nothing ran: send the body (the server keeps it for the next EVALSHA)
            connection.send_command("EVAL", self.source, len(keys), *keys, *args)
            return conn.parse_response(connection, "EVAL")


def _on_a_connection(conn: redis.Redis, attempt: Callable[[AbstractConnection], T], then: AfterExec | None) -> T:
    connection = conn.connection_pool.get_connection()
    try:
        result = attempt(connection)
        if then is not None:
            then(connection)
        return result
    except WatchError:
        raise  # EXEC answered: the connection is in step, and watches nothing any more
    except BaseException:
        connection.disconnect()  # its WATCH and any unread answers go with it
        raise
    finally:
        conn.connection_pool.release(connection)


def _attempt(
    conn: redis.Redis, connection: AbstractConnection, watch: Sequence[str], reads: Sequence[Command], decide: Decide[T]
) -> tuple[T, list[Any]]:
    commands: list[Command] = ([("WATCH", *watch)] if watch else []) + list(reads)
    if commands:
        connection.send_packed_command(connection.pack_commands(commands))
    answers = [conn.parse_response(connection, str(command[0])) for command in commands]
    values = answers[1:] if watch else answers

    def read(*command: Any) -> Any:
        connection.send_command(*command)
        return conn.parse_response(connection, str(command[0]))

    pipe = conn.pipeline(transaction=True)
    decided = decide(values, pipe, read)
    return decided, _exec(conn, connection, pipe.command_stack)


def _exec(conn: redis.Redis, connection: AbstractConnection, stack: list[tuple[Command, dict[str, Any]]]) -> list[Any]:
    """MULTI, the queued commands and EXEC in one write; the results after the response callbacks."""
    commands = [("MULTI",), *(args for args, _ in stack), ("EXEC",)]
    connection.send_packed_command(connection.pack_commands(commands))
    errors: list[ResponseError] = []
    for _ in commands[:-1]:  # MULTI's OK and each QUEUED: all read, so the connection stays in step
        try:
            conn.parse_response(connection, "_")
        except ResponseError as exc:
            errors.append(exc)
    try:
        response = conn.parse_response(connection, "_")
    except ResponseError:  # EXECABORT: a command was refused when queued; say which
        raise errors[0] if errors else ResponseError("transaction aborted") from None
    if response is None:
        raise WatchError("a watched key changed")
    results = []
    for result, (args, options) in zip(response, stack, strict=True):
        if isinstance(result, ResponseError):
            raise result
        callback = conn.response_callbacks.get(args[0])
        options = {k: v for k, v in options.items() if k != "keys"}
        results.append(callback(result, **options) if callback is not None else result)
    return results
