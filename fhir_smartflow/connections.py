"""Redis connections and key names. Connections are always passed explicitly, never global."""

from __future__ import annotations

import logging
import threading

import redis

from fhir_smartflow.config import Settings

log = logging.getLogger(__name__)

_embedded_lock = threading.Lock()
_embedded_server: object | None = None


def connect_host(host: str) -> str:
    """Where this machine reaches a listener bound to ``host`` (loopback for the all-interfaces addresses)."""
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host


def connect(settings: Settings) -> redis.Redis:
    """A Redis client for the configured URL, or the process-wide embedded fakeredis server."""
    if settings.redis.url:
        return redis.Redis.from_url(settings.redis.url, socket_connect_timeout=2, socket_timeout=10)
    return embedded_redis()


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
