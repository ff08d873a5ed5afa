"""The flow and template files the console edits: read with an etag, saved atomically after the same loader
`validate` uses accepts them, every version kept (who, when) and diffable.

A save is refused (nothing written) when the file changed since it was read (``StaleEdit``, carrying the
newer version) or when the loader finds a problem (``InvalidFile``, the loader's ``LoadError``s: file, line,
field, reason). Saving a flow whose behaviour changed bumps its ``version`` (comments and layout kept).
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import tomlkit

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.loader import build_engine
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.engine.tomlfiles import LoadError, SourceFile, kind_of, parse_source
from fhir_smartflow.flowfiles import discover, read_toml, registry_channels

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from fhir_smartflow.console.accounts import ConsoleUser
    from fhir_smartflow.console.audit import Audit
    from fhir_smartflow.console.reload import ReloadBus

__all__ = [
    "FileStore",
    "FlowStore",
    "InvalidFile",
    "LoadError",
    "NotEditable",
    "StaleEdit",
    "Stored",
    "TemplateStore",
    "UnknownFile",
    "Version",
]

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
# Top-level flow keys that describe a flow without changing what it does (no version bump for them).
DESCRIPTIVE = frozenset({"name", "description", "version"})


@dataclass(frozen=True)
class Stored:
    name: str
    text: str
    etag: str  # changes whenever the file's bytes change; give it back to ``save``
    # False: written, but Redis did not take the audit entry or the reload notice (the processes load it at
    # the next saved change or SIGHUP); the page should say so.
    announced: bool = True


@dataclass(frozen=True)
class Version:
    number: int  # 1 = the oldest kept
    user: str  # "" for the file as found on disk before the console first saved it
    at: str  # ISO UTC
    etag: str
    action: str  # "found" | "create" | "save" | "delete" (its text: the file as it was)


class StoreError(Exception):
    """A save or read the store refuses; ``str()`` says why, for the page."""


class NotEditable(StoreError):
    """No directory on disk to write to (only shipped files configured), or a name that is not a file name."""


class UnknownFile(StoreError, KeyError):
    pass


class StaleEdit(StoreError):
    """The file changed since it was read: ``current`` is what is there now."""

    def __init__(self, current: Stored | None) -> None:
        self.current = current
        super().__init__("changed by someone else since you opened it; the newer version is shown")


class InvalidFile(StoreError):
    """The loader refused the content: one ``LoadError`` per problem (file, line, field, reason)."""

    def __init__(self, errors: list[LoadError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def etag_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class FileStore:
    """The ``*.toml`` files of one kind in one directory (``kind``: ``flow`` or ``template``)."""

    kind = "file"
    engine_key = ""  # the [engine] setting listing this kind's paths

    def __init__(
        self,
        settings: Settings,
        directory: Path | None,
        history_dir: Path,
        *,
        audit: Audit | None = None,
        bus: ReloadBus | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.history_dir = history_dir
        self.audit = audit
        self.bus = bus
        self.clock = clock
        self._lock = threading.Lock()

    @property
    def writable(self) -> bool:
        return self.directory is not None

    def path(self, name: str) -> Path:
        if self.directory is None:
            raise NotEditable(
                f"no {self.kind} directory to save to: [engine] {self.engine_key} names only shipped data or "
                "single files (give it a directory, e.g. the one `fhir-smartflow init` makes)"
            )
        if not NAME.match(name):
            raise NotEditable(f"{self.kind} name: lower-case letters, digits, '.', '_' and '-' only")
        return self.directory / f"{name}.toml"

    def list(self) -> list[str]:
        if self.directory is None:
            return []
        return sorted(p.stem for p in self.directory.glob("*.toml") if p.is_file() and NAME.match(p.stem))

    def read(self, name: str) -> Stored:
        try:
            text = self.path(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UnknownFile(name) from None
        return Stored(name, text, etag_of(text))

    def _current(self, name: str) -> Stored | None:
        try:
            return self.read(name)
        except UnknownFile:
            return None

    def candidate_engine(self, name: str, text: str | None) -> tuple[Engine | None, list[LoadError]]:
        """Every configured file loaded as the running processes will, with ``text`` as ``name``'s file
        (None: without that file)."""
        target = self.path(name)
        channels, problems = registry_channels(self.settings)
        if problems:
            return None, problems
        paths = self.settings.engine.paths()
        sources: dict[str, list[SourceFile]] = {"mapping": [], "flow": [], "template": []}
        errors: list[LoadError] = []
        for expected, key in (("mapping", "mappings"), ("flow", "flows"), ("template", "templates")):
            files, missing = discover(paths[key])
            errors += missing
            for found in files:
                if isinstance(found, Path) and found.resolve() == target.resolve():
                    continue  # the candidate stands in for it
                source, error = read_toml(found)
                if error:
                    errors.append(error)
                    continue
                assert source is not None
                sources[kind_of(source) or expected].append(source)
        if text is not None:
            source, error = parse_source(str(target), text)
            if error:
                return None, [error, *errors]
            assert source is not None
            sources[kind_of(source) or self.kind].append(source)
        return build_engine(
            sources["mapping"], sources["flow"], sources["template"], self.settings, errors, channels=channels
        )

    def check(self, name: str, text: str) -> list[LoadError]:
        """The loader's problems with ``text`` saved as ``name`` (empty: it would load)."""
        return self.candidate_engine(name, text)[1]

    def prepare(self, current: Stored | None, text: str) -> str:
        """The text to write; subclasses adjust it (flows bump their version)."""
        return text

    def save(self, name: str, text: str, etag: str | None, user: ConsoleUser) -> Stored:
        """Write ``text`` as ``name`` if the file is still at ``etag`` (None: a new file) and it loads."""
        path = self.path(name)
        with self._exclusive():
            current = self._current(name)
            if (current.etag if current else None) != etag:
                raise StaleEdit(current)
            text = self.prepare(current, text)
            errors = self.check(name, text)
            if errors:
                raise InvalidFile(errors)
            if current is not None and current.text == text:
                return current  # nothing changed: no new version, no reload
            if current is not None and not self.history(name):
                self._keep(name, current.text, "", "found")
            _atomic_write(path, text)
            self._keep(name, text, user.name, "save" if current else "create")
        stored = Stored(name, text, etag_of(text))
        try:
            if self.audit is not None:
                self.audit.record(user.name, f"{self.kind}.{'save' if current else 'create'}", name, stored.etag)
            if self.bus is not None:
                self.bus.announce(self.kind, name, user.name)
        except redis.RedisError as exc:
            log.error("%s %s saved, but Redis did not take the notice (%s)", self.kind, name, type(exc).__name__)
            return Stored(name, text, stored.etag, announced=False)
        return stored

    def delete(self, name: str, etag: str, user: ConsoleUser) -> None:
        """Remove ``name`` if it is still at ``etag`` and everything loads without it (a template a flow
        uses cannot go); its versions stay in the history (the last one marked ``delete``)."""
        path = self.path(name)
        with self._exclusive():
            current = self._current(name)
            if current is None or current.etag != etag:
                raise StaleEdit(current)
            errors = self.candidate_engine(name, None)[1]
            if errors:
                raise InvalidFile(errors)
            if not self.history(name):
                self._keep(name, current.text, "", "found")
            self._keep(name, current.text, user.name, "delete")
            path.unlink()
        try:
            if self.audit is not None:
                self.audit.record(user.name, f"{self.kind}.delete", name, etag)
            if self.bus is not None:
                self.bus.announce(self.kind, name, user.name)
        except redis.RedisError as exc:
            log.error("%s %s deleted, but Redis did not take the notice (%s)", self.kind, name, type(exc).__name__)

    # history

    def _versions_dir(self, name: str) -> Path:
        self.path(name)  # the name check
        return self.history_dir / name

    def history(self, name: str) -> list[Version]:
        """Every kept version of ``name``, oldest first."""
        folder = self._versions_dir(name)
        if not folder.is_dir():
            return []
        versions = [Version(**json.loads(p.read_text(encoding="utf-8"))) for p in folder.glob("*.json")]
        return sorted(versions, key=lambda v: v.number)

    def version_text(self, name: str, number: int) -> str:
        try:
            return (self._versions_dir(name) / f"{number:06d}.toml.txt").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UnknownFile(f"{name} version {number}") from None

    def diff(self, name: str, a: int, b: int) -> str:
        """Unified diff from version ``a`` to version ``b``."""
        old, new = self.version_text(name, a), self.version_text(name, b)
        return "".join(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                fromfile=f"{name}.toml version {a}",
                tofile=f"{name}.toml version {b}",
            )
        )

    def _keep(self, name: str, text: str, user: str, action: str) -> Version:
        folder = self._versions_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        number = max((v.number for v in self.history(name)), default=0) + 1
        version = Version(number, user, self.clock().isoformat(timespec="seconds"), etag_of(text), action)
        # Not *.toml: a history directory inside a flows directory must never be loaded as flows.
        _atomic_write(folder / f"{number:06d}.toml.txt", text)
        _atomic_write(folder / f"{number:06d}.json", json.dumps(asdict(version)))
        return version

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One save at a time, across threads and processes (and hosts sharing the directory over NFS)."""
        self.history_dir.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.history_dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class FlowStore(FileStore):
    kind = "flow"
    engine_key = "flows"

    def prepare(self, current: Stored | None, text: str) -> str:
        """Bump ``version`` when what the flow does changed and the editor did not change it already."""
        if current is None:
            return text
        try:
            old, new = tomllib.loads(current.text), tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return text  # the loader reports it
        if _behaviour(old) == _behaviour(new) or old.get("version", "1") != new.get("version", "1"):
            return text
        doc = tomlkit.parse(text)
        doc["version"] = next_version(old.get("version", "1"))
        return tomlkit.dumps(doc)


class TemplateStore(FileStore):
    kind = "template"
    engine_key = "templates"


def _behaviour(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in DESCRIPTIVE}


def next_version(version: object) -> str | int:
    """1 → 2, "3" → "4", "1.9" → "1.10", "beta" → "beta.1" (an int stays an int)."""
    if isinstance(version, int):
        return version + 1
    text = str(version)
    match = re.search(r"(\d+)$", text)
    if match is None:
        return f"{text}.1"
    return f"{text[: match.start()]}{int(match.group(1)) + 1}"


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it: readers see old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp's 0600 would stick
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
