"""SQLite storage of the sandbox: current resources, every version (history), and the search index.

One connection guarded by a re-entrant lock serves every thread (waitress runs requests on threads);
``":memory:"`` therefore shares one database across threads, and a file database uses WAL so other
processes can read it while we write. Writes are validated with the R4B models before they are stored.
Listeners are told about every committed change (the subscription notifier is one).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir_smartflow.sandbox import search
from fhir_smartflow.sandbox.errors import BadRequest, Gone, NotFound, PreconditionFailed
from fhir_smartflow.sandbox.validation import check_type, validate_resource

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, last_updated TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0, body TEXT, PRIMARY KEY (type, id));
CREATE INDEX IF NOT EXISTS resources_updated ON resources (type, last_updated);
CREATE TABLE IF NOT EXISTS history (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, last_updated TEXT NOT NULL,
    interaction TEXT NOT NULL, body TEXT, PRIMARY KEY (type, id, version));
CREATE TABLE IF NOT EXISTS idx (
    type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL, system TEXT, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_lookup ON idx (type, param, value);
CREATE INDEX IF NOT EXISTS idx_owner ON idx (type, id);
CREATE TABLE IF NOT EXISTS subscription_events (id TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscription_log (
    id TEXT NOT NULL, number INTEGER NOT NULL, interaction TEXT NOT NULL, type TEXT NOT NULL,
    rid TEXT NOT NULL, version INTEGER NOT NULL, last_updated TEXT NOT NULL, PRIMARY KEY (id, number));
"""

Listener = Callable[["Change"], None]
EVENT_LOG_KEEP = 10_000  # events kept per subscription for $events


@dataclass(frozen=True)
class Change:
    """A committed create / update / delete. ``resource`` is the last stored body (also for deletes)."""

    interaction: str  # create | update | delete
    resource_type: str
    id: str
    version: int
    last_updated: str
    resource: dict[str, Any]


@dataclass(frozen=True)
class SearchPage:
    resources: list[dict[str, Any]]
    total: int | None
    query: search.Query


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only (0600); SQLite gives its -wal and -shm files
    the same mode. An existing file keeps its mode."""
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(self, database: str = ":memory:", *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.database = database
        self._clock = clock
        self._lock = threading.RLock()
        if database != ":memory:":
            _create_private(database)
        self._conn = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        if database != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._depth = 0
        self._pending: list[Change] = []
        self._listeners: list[Listener] = []
        row = self._conn.execute("SELECT MAX(last_updated) FROM history").fetchone()
        self._last_key: str = row[0] or ""

    # ---- plumbing ------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing: nested uses join the outer transaction; listeners run after the commit."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                    self._pending.clear()
                raise
            self._depth -= 1
            if outer:
                self._conn.execute("COMMIT")
                changes, self._pending = self._pending, []
                # Still under the lock: listeners see changes in commit order (event numbers follow it).
                for change in changes:
                    for listener in self._listeners:
                        try:
                            listener(change)
                        except Exception:  # a broken listener must not fail the write
                            log.exception("sandbox listener failed for %s/%s", change.resource_type, change.id)

    def _now_key(self) -> str:
        """A strictly increasing lastUpdated, so _lastUpdated order is write order."""
        moment = self._clock().astimezone(UTC)
        key = search.instant_key(moment)
        if key <= self._last_key:
            last = datetime.strptime(self._last_key, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            key = search.instant_key(last + timedelta(microseconds=1))
        self._last_key = key
        return key

    # ---- writes --------------------------------------------------------------------------------

    def create(
        self, resource: dict[str, Any], *, resource_id: str | None = None, validate: bool = True
    ) -> dict[str, Any]:
        """Store a new resource under a server-assigned id (any id in the body is replaced).

        ``resource_id`` lets a transaction pre-assign the id it already used to rewrite references;
        ``validate=False`` only for callers that have just validated it (the HTTP layer).
        """
        rtype = validate_resource(resource) if validate else resource["resourceType"]
        with self.transaction():
            return self._write(rtype, resource_id or new_id(), resource, "create", None)

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        *,
        if_match: int | None = None,
        validate: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """Update (or create with this id). Returns (stored resource, created)."""
        if validate:
            validate_resource(resource, resource_type)
        body_id = resource.get("id")
        if body_id is not None and body_id != resource_id:
            raise BadRequest(f"resource id {body_id!r} does not match the URL id {resource_id!r}", expression="id")
        with self.transaction():
            row = self._row(resource_type, resource_id)
            current = None if row is None else int(row["version"])
            if if_match is not None and current != if_match:
                raise PreconditionFailed(
                    f"{resource_type}/{resource_id} is at version {current}, not {if_match} (If-Match)"
                )
            live = row is not None and not row["deleted"]
            stored = self._write(resource_type, resource_id, resource, "update" if live else "create", current)
            return stored, not live

    def delete(self, resource_type: str, resource_id: str) -> bool:
        """Delete; True when a live resource was deleted (deleting twice is not an error)."""
        check_type(resource_type)
        with self.transaction():
            row = self._row(resource_type, resource_id)
            if row is None or row["deleted"]:
                return False
            version = int(row["version"]) + 1
            key = self._now_key()
            self._conn.execute(
                "UPDATE resources SET version=?, last_updated=?, deleted=1 WHERE type=? AND id=?",
                (version, key, resource_type, resource_id),
            )
            self._conn.execute(
                "INSERT INTO history VALUES (?,?,?,?,?,NULL)", (resource_type, resource_id, version, key, "delete")
            )
            self._conn.execute("DELETE FROM idx WHERE type=? AND id=?", (resource_type, resource_id))
            last_body = json.loads(row["body"])
            self._pending.append(Change("delete", resource_type, resource_id, version, key, last_body))
            return True

    def _write(
        self, rtype: str, rid: str, resource: dict[str, Any], interaction: str, current: int | None
    ) -> dict[str, Any]:
        version = (current or 0) + 1
        key = self._now_key()
        body = {**resource, "id": rid}  # shallow: the JSON text below is the copy that is stored
        meta = dict(body.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = key
        body["meta"] = meta
        text = json.dumps(body, separators=(",", ":"))
        # Independent copies for the notifier and the caller: json.loads of the text we just made is
        # several times cheaper than copy.deepcopy (which dominated a transaction's CPU time).
        body = json.loads(text)
        self._conn.execute("INSERT OR REPLACE INTO resources VALUES (?,?,?,?,0,?)", (rtype, rid, version, key, text))
        self._conn.execute("INSERT INTO history VALUES (?,?,?,?,?,?)", (rtype, rid, version, key, interaction, text))
        self._conn.execute("DELETE FROM idx WHERE type=? AND id=?", (rtype, rid))
        self._conn.executemany(
            "INSERT INTO idx VALUES (?,?,?,?,?)",
            [(rtype, rid, r.param, r.system, r.value) for r in search.index_rows(body)],
        )
        self._pending.append(Change(interaction, rtype, rid, version, key, body))
        return json.loads(text)

    # ---- reads ---------------------------------------------------------------------------------

    def _row(self, rtype: str, rid: str) -> sqlite3.Row | None:
        return self._conn.execute("SELECT * FROM resources WHERE type=? AND id=?", (rtype, rid)).fetchone()

    def exists(self, resource_type: str, resource_id: str) -> bool:
        """A live (not deleted) resource is stored under this type and id."""
        with self._lock:
            row = self._row(resource_type, resource_id)
        return row is not None and not row["deleted"]

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        check_type(resource_type)
        with self._lock:
            row = self._row(resource_type, resource_id)
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if row["deleted"]:
            raise Gone(f"{resource_type}/{resource_id} was deleted (version {row['version']})")
        return json.loads(row["body"])

    def vread(self, resource_type: str, resource_id: str, version: int) -> dict[str, Any]:
        check_type(resource_type)
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM history WHERE type=? AND id=? AND version=?", (resource_type, resource_id, version)
            ).fetchone()
        if row is None:
            raise NotFound(f"{resource_type}/{resource_id}/_history/{version} is not known")
        if row["body"] is None:
            raise Gone(f"{resource_type}/{resource_id} version {version} is a deletion")
        return json.loads(row["body"])

    def history(self, resource_type: str, resource_id: str) -> list[tuple[int, str, str, dict[str, Any] | None]]:
        """(version, lastUpdated, interaction, body or None) newest first."""
        check_type(resource_type)
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM history WHERE type=? AND id=? ORDER BY version DESC", (resource_type, resource_id)
            ).fetchall()
        if not rows:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        return [(r["version"], r["last_updated"], r["interaction"], r["body"] and json.loads(r["body"])) for r in rows]

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> SearchPage:
        check_type(resource_type)
        query = search.parse_query(resource_type, params)
        source, args = search.sql_source(resource_type, query)
        base = f"FROM {source}"
        with self._lock:
            total = None
            if query.total != "none" or query.summary_count:
                total = int(self._conn.execute(f"SELECT COUNT(*) {base}", args).fetchone()[0])
            rows: list[sqlite3.Row] = []
            if not query.summary_count and query.count > 0:
                rows = self._conn.execute(
                    f"SELECT r.body {base} ORDER BY r.last_updated {query.sort}, r.id LIMIT ? OFFSET ?",
                    [*args, query.count, query.offset],
                ).fetchall()
        return SearchPage([json.loads(r["body"]) for r in rows], total, query)

    def all_of_type(self, resource_type: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM resources WHERE type=? AND deleted=0 ORDER BY last_updated", (resource_type,)
            ).fetchall()
        return [json.loads(r["body"]) for r in rows]

    # ---- subscription event numbers and log (persist across restarts in file mode) ------------------

    def record_event(self, subscription_id: str, change: Change) -> int:
        """Give ``change`` the next event number of the subscription and log it (for ``$events``)."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO subscription_events VALUES (?, 1) ON CONFLICT(id) DO UPDATE SET count = count + 1",
                (subscription_id,),
            )
            number = int(
                self._conn.execute("SELECT count FROM subscription_events WHERE id=?", (subscription_id,)).fetchone()[0]
            )
            self._conn.execute(
                "INSERT OR REPLACE INTO subscription_log VALUES (?,?,?,?,?,?,?)",
                (subscription_id, number, change.interaction, change.resource_type, change.id, change.version,
                 change.last_updated),
            )  # fmt: skip
            self._conn.execute(
                "DELETE FROM subscription_log WHERE id=? AND number <= ?", (subscription_id, number - EVENT_LOG_KEEP)
            )
        return number

    def logged_events(self, subscription_id: str, since: int, until: int) -> list[tuple[int, Change]]:
        """Logged events with since <= number <= until, with the body of each event's version."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT l.*, h.body FROM subscription_log l LEFT JOIN history h ON h.type = l.type AND h.id = l.rid "
                "AND h.version = l.version WHERE l.id=? AND l.number BETWEEN ? AND ? ORDER BY l.number",
                (subscription_id, since, until),
            ).fetchall()
        return [
            (
                int(r["number"]),
                Change(
                    r["interaction"],
                    r["type"],
                    r["rid"],
                    int(r["version"]),
                    r["last_updated"],
                    json.loads(r["body"]) if r["body"] else {},
                ),
            )
            for r in rows
        ]

    def forget_event_numbers(self) -> None:
        """Every subscription's event count and log back to nothing (its next event is number 1)."""
        with self.transaction():
            self._conn.execute("DELETE FROM subscription_events")
            self._conn.execute("DELETE FROM subscription_log")

    def events_count(self, subscription_id: str) -> int:
        with self._lock:
            row = self._conn.execute("SELECT count FROM subscription_events WHERE id=?", (subscription_id,)).fetchone()
        return int(row[0]) if row else 0
