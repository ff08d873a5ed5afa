"""Redis connections and key names. Connections are always passed explicitly, never global."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import ConstantBackoff
from redis.client import Pipeline
from redis.retry import Retry
from redis.sentinel import Sentinel

from fhir_smartflow.config import RedisConfig, Settings, secret

log = logging.getLogger(__name__)

_embedded_lock = threading.Lock()
_embedded_server: object | None = None


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """How a client of one kind of process talks to Redis (the same through a url or sentinels)."""

    socket_timeout: float = 10.0
    connect_timeout: float = 2.0
    # Quick retries (50 ms apart) on a dropped connection; None keeps redis-py's default retry.
    quick_retries: int | None = None


SERVICE = ClientOptions()
# The webhook fails fast (the sender retries after our 503), with one quick retry so a pooled connection
# left stale by a Redis restart or a failover does not cost a delivery.
WEBHOOK = ClientOptions(socket_timeout=5.0, quick_retries=1)


def connect_host(host: str) -> str:
    """Where this machine reaches a listener bound to ``host`` (loopback for the all-interfaces addresses)."""
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host


def connect(settings: Settings, options: ClientOptions = SERVICE) -> redis.Redis:
    """The one Redis client factory of every process: through the sentinels (the current primary, followed
    across a failover), else the configured URL, else the process-wide embedded fakeredis server."""
    config = settings.redis
    if config.sentinels:
        return sentinel_redis(config, options)
    if config.url:
        return url_redis(config.url, options)
    return embedded_redis()


def url_redis(url: str, options: ClientOptions = SERVICE) -> redis.Redis:
    return redis.Redis.from_url(url, **_client_kwargs(options))


def sentinel_redis(config: RedisConfig, options: ClientOptions = SERVICE) -> redis.Redis:
    """A client of the primary of ``[redis] sentinel_service``: each new connection asks the sentinels where
    it is, and a connection to a demoted primary (READONLY) is dropped and made again to the new one."""
    sentinel = Sentinel(
        [sentinel_address(a) for a in config.sentinels],
        sentinel_kwargs={
            "password": secret(config.sentinel_password_env),
            "socket_timeout": options.connect_timeout,
            "socket_connect_timeout": options.connect_timeout,
        },
        password=secret(config.password_env),
        db=config.sentinel_db,
        **_client_kwargs(options),
    )
    return sentinel.master_for(config.sentinel_service)


def sentinel_address(address: str) -> tuple[str, int]:
    """``host:port`` (config.py validated it) as a pair; ``[::1]:26379`` style hosts lose their brackets."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _client_kwargs(options: ClientOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": options.connect_timeout,
        "socket_timeout": options.socket_timeout,
    }
    if options.quick_retries is not None:
        kwargs["retry"] = Retry(ConstantBackoff(0.05), options.quick_retries)
    return kwargs


class NotReplicated(redis.RedisError):
    """Fewer replicas than ``[redis] wait_replicas`` confirmed a write in time: it is not acknowledged."""


class ReplicatedPipeline(Pipeline):
    """A MULTI/EXEC transaction followed by ``WAIT <replicas> <timeout>`` on the same connection.

    WAIT counts the writes of the connection it is sent on, so it has to follow EXEC there: a pooled
    connection picked afterwards could confirm an older write. Done inside the transaction step, a
    dropped connection retries MULTI/EXEC and WAIT together (on the new primary after a failover).
    """

    def __init__(self, conn: redis.Redis, replicas: int, timeout_ms: int) -> None:
        super().__init__(conn.connection_pool, conn.response_callbacks, True, None)
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        result = super()._execute_transaction(connection, commands, raise_on_error)
        wait_for_replicas(connection, self.replicas, self.timeout_ms)
        return result


def wait_for_replicas(connection: Any, replicas: int, timeout_ms: int) -> None:
    """``WAIT`` on the connection that just wrote; `NotReplicated` when fewer replicas confirmed in time."""
    connection.send_command("WAIT", replicas, timeout_ms)
    acked = int(connection.read_response())
    if acked < replicas:
        raise NotReplicated(f"{acked} of {replicas} replica(s) confirmed within {timeout_ms} ms")


def replicated_after_exec(config: RedisConfig) -> Callable[[Any], None] | None:
    """For a transaction sent by hand (`redis_watch`): the configured WAIT after its EXEC, or None."""
    replicas, timeout_ms = config.replicas_to_wait, config.wait_timeout_ms
    if replicas <= 0:
        return None
    return lambda connection: wait_for_replicas(connection, replicas, timeout_ms)


def durable_pipeline(conn: redis.Redis, config: RedisConfig) -> Pipeline:
    """A transactional pipeline whose ``execute`` returns only once the write is on the configured number
    of replicas (``[redis] wait_replicas``; none: a plain transaction)."""
    replicas = config.replicas_to_wait
    if replicas <= 0:
        return conn.pipeline()
    return ReplicatedPipeline(conn, replicas, config.wait_timeout_ms)


def embedded_redis() -> redis.Redis:
    import fakeredis

    global _embedded_server
    with _embedded_lock:
        if _embedded_server is None:
            log.warning(
                "no [redis] url configured: using the EMBEDDED in-process queue. "
                "Work is lost when the process stops. NOT FOR PRODUCTION."
            )
            _embedded_server = fakeredis.FakeServer()
        return fakeredis.FakeRedis(server=_embedded_server)


class Keys:
    """Every Redis key the service writes, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def dedupe(self, key: str) -> str:
        return f"{self.prefix}dedupe:{key}"

    def subscription(self, sub_id: str) -> str:
        return f"{self.prefix}sub:{sub_id}"

    def gaps(self, sub_id: str) -> str:
        return f"{self.prefix}gaps:{sub_id}"

    def prior(self, resource_type: str, resource_id: str) -> str:
        return f"{self.prefix}prior:{resource_type}/{resource_id}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def history(self) -> str:
        return f"{self.prefix}history"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def delivery(self, identifier: str) -> str:
        return f"{self.prefix}delivery:{identifier}"

    def watermark(self, name: str) -> str:
        return f"{self.prefix}watermark:{name}"

    def counter(self, name: str) -> str:
        return f"{self.prefix}count:{name}"

    def once(self, key: str) -> str:
        """Claim of a fire-once trigger (appointment.first_kept per patient)."""
        return f"{self.prefix}once:{key}"

    def alive(self, role: str, ident: str) -> str:
        """Liveness record of one process of ``role`` (``host:pid``), for health checks (liveness.py)."""
        return f"{self.prefix}alive:{role}:{ident}"

    def webhook(self) -> str:
        """Hash: what the webhook saw that no one subscription owns (the last refused credentials)."""
        return f"{self.prefix}webhook"

    def discharged(self, patient: str) -> str:
        """Marker: this patient was discharged (flows with not_after do not start)."""
        return f"{self.prefix}discharged:{patient}"
