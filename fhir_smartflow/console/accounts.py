"""Local console accounts: argon2id password hashes and a role, in Redis or in a 0600 JSON file."""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fhir_smartflow.console.keys import ConsoleKeys

# Each role may do what the ones before it may.
ROLES = ("viewer", "admin")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12

_hasher = PasswordHasher()  # argon2id, the library's memory-hard defaults (64 MiB per hash)
# At most this many hashes at once per process: a flood of logins queues instead of exhausting memory.
_hashing = threading.BoundedSemaphore(2)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the account does not exist, so a wrong name costs as long as a wrong password.
    Made once per process when its first `Accounts` is built, not at import: every command and process
    imports this module, and one argon2 hash is ≈ 0.2 s of CPU and 64 MiB."""
    return _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A name, role or password the console refuses (the message says which and why)."""


@dataclass(frozen=True)
class ConsoleUser:
    name: str
    role: str

    def can(self, role: str) -> bool:
        """True when this user's role includes ``role`` (admin includes viewer)."""
        return ROLES.index(self.role) >= ROLES.index(role)


class _Backend(Protocol):
    def load(self) -> dict[str, dict[str, str]]: ...
    def put(self, name: str, record: dict[str, str]) -> None: ...
    def delete(self, name: str) -> bool: ...


class RedisBackend:
    def __init__(self, conn: redis.Redis, keys: ConsoleKeys) -> None:
        self.conn, self.key = conn, keys.accounts()

    def load(self) -> dict[str, dict[str, str]]:
        raw = self.conn.hgetall(self.key)
        return {_text(k): json.loads(v) for k, v in raw.items()}  # type: ignore[union-attr]

    def put(self, name: str, record: dict[str, str]) -> None:
        self.conn.hset(self.key, name, json.dumps(record))

    def delete(self, name: str) -> bool:
        return bool(self.conn.hdel(self.key, name))


class FileBackend:
    """One JSON file, mode 0600, replaced atomically (tmp + rename) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def put(self, name: str, record: dict[str, str]) -> None:
        with self._lock:
            data = self.load()
            data[name] = record
            self._write(data)

    def delete(self, name: str) -> bool:
        with self._lock:
            data = self.load()
            found = data.pop(name, None) is not None
            self._write(data)
            return found

    def _write(self, data: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class MemoryBackend:
    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}

    def load(self) -> dict[str, dict[str, str]]:
        return dict(self.data)

    def put(self, name: str, record: dict[str, str]) -> None:
        self.data[name] = record

    def delete(self, name: str) -> bool:
        return self.data.pop(name, None) is not None


class Accounts:
    """Add, verify, list and remove accounts; ``verify`` rehashes when argon2's parameters changed."""

    def __init__(self, backend: _Backend) -> None:
        self.backend = backend
        self._dummy = _dummy_hash()  # now, so the first login with an unknown name costs what the others do

    @classmethod
    def build(cls, users_file: str, conn: redis.Redis | None, keys: ConsoleKeys) -> Accounts:
        if users_file:
            return cls(FileBackend(Path(users_file)))
        if conn is not None:
            return cls(RedisBackend(conn, keys))
        return cls(MemoryBackend())

    def add(self, name: str, password: str, role: str) -> ConsoleUser:
        """Create or replace the account ``name`` (AccountError for a bad name, role or short password)."""
        if not NAME.match(name):
            raise AccountError("name: letters, digits and . _ @ - only (at most 64)")
        if role not in ROLES:
            raise AccountError(f"role: one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"password: at least {MIN_PASSWORD} characters")
        with _hashing:
            hashed = _hasher.hash(password)
        self.backend.put(name, {"hash": hashed, "role": role})
        return ConsoleUser(name, role)

    def get(self, name: str) -> ConsoleUser | None:
        record = self.backend.load().get(name)
        if record is None or record.get("role") not in ROLES:
            return None
        return ConsoleUser(name, record["role"])

    def list(self) -> list[ConsoleUser]:
        records = self.backend.load()
        return [ConsoleUser(n, r["role"]) for n, r in sorted(records.items()) if r.get("role") in ROLES]

    def remove(self, name: str) -> bool:
        return self.backend.delete(name)

    def verify(self, name: str, password: str) -> ConsoleUser | None:
        """The user when ``password`` is theirs, else None (same cost for an unknown name)."""
        record = self.backend.load().get(name)
        stored = record["hash"] if record else self._dummy
        try:
            with _hashing:
                _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if record is None or record.get("role") not in ROLES:
            return None
        if _hasher.check_needs_rehash(stored):
            self.backend.put(name, {**record, "hash": _hasher.hash(password)})
        return ConsoleUser(name, record["role"])


def generated_password() -> str:
    return secrets.token_urlsafe(18)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
