"""Server-side sessions: the browser holds an opaque random id (HttpOnly cookie); tokens and launch state
stay in Redis under a hash of that id, so a leaked key listing reveals no usable cookie."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import redis

COOKIE = "worklist_session"


class SessionStore:
    def __init__(self, conn: redis.Redis, prefix: str, ttl_seconds: int) -> None:
        self._conn = conn
        self._prefix = f"{prefix}worklist:session:"
        self.ttl = ttl_seconds

    def _key(self, sid: str) -> str:
        return self._prefix + hashlib.sha256(sid.encode()).hexdigest()

    def create(self, data: dict[str, Any]) -> str:
        sid = secrets.token_urlsafe(32)
        self.save(sid, {**data, "csrf": secrets.token_urlsafe(24)})
        return sid

    def load(self, sid: str | None) -> dict[str, Any] | None:
        if not sid:
            return None
        raw = self._conn.get(self._key(sid))
        return json.loads(raw) if raw else None

    def save(self, sid: str, data: dict[str, Any]) -> None:
        self._conn.set(self._key(sid), json.dumps(data), ex=self.ttl)

    def delete(self, sid: str) -> None:
        self._conn.delete(self._key(sid))
