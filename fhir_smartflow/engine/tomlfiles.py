"""The TOML sources of mappings, flows and templates: parsing, line lookup, errors (files are read elsewhere)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoadError:
    """One problem in one file, worded for a clinic administrator."""

    file: str
    field: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.reason}"


class EngineLoadError(Exception):
    def __init__(self, errors: list[LoadError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str
    data: dict[str, Any]

    def line_of(self, key: str, table: str | None = None, index: int | None = None) -> int | None:
        """Line (1-based) where ``key`` is set, optionally inside the ``index``-th ``[[table]]``."""
        lines = self.text.splitlines()
        start, end = 0, len(lines)
        if table is not None:
            header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
            starts = [i for i, line in enumerate(lines) if header.match(line)]
            if index is None or index >= len(starts):
                return starts[0] + 1 if starts else None
            start = starts[index]
            later = [i for i, line in enumerate(lines) if i > start and re.match(r"^\s*\[\[", line)]
            end = later[0] if later else len(lines)
        head = key.split(".")[0]
        assignment = re.compile(rf"^\s*\"?{re.escape(head)}\"?\s*=")
        subtable = re.compile(rf"^\s*\[\s*(?:{re.escape(table or '')}\.)?{re.escape(head)}\s*\]")
        for i in range(start, end):
            if assignment.match(lines[i]) or subtable.match(lines[i]):
                return i + 1
        return start + 1 if table is not None else None


def parse_source(path: str, text: str) -> tuple[SourceFile | None, LoadError | None]:
    """The TOML text of ``path`` parsed (``path`` only names the file in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        return None, LoadError(path, "file", f"not valid TOML: {exc}", int(match.group(1)) if match else None)
    return SourceFile(path, text, data), None


def kind_of(source: SourceFile) -> str | None:
    """mapping | flow | template, from the file's keys (so `validate` takes any mix of paths)."""
    data = source.data
    if "mapping" in data:
        return "mapping"
    if "actions" in data or "trigger" in data:
        return "flow"
    if "body" in data or "subject" in data or "prompt" in data or "note_type" in data:
        return "template"
    return None


class Checker:
    """Collects errors for one file; typed getters report wrong types / missing keys with the line."""

    def __init__(self, source: SourceFile) -> None:
        self.source = source
        self.errors: list[LoadError] = []

    def error(
        self,
        field: str,
        reason: str,
        key: str | None = None,
        table: str | None = None,
        index: int | None = None,
        missing: bool = False,
    ) -> None:
        """Record a problem; the line is where ``key`` is set (for a missing key: its table's header)."""
        if missing:
            line = self.source.line_of("\0", table, index) if table is not None else None
        else:
            line = self.source.line_of(key or field.split(".")[-1].split("[")[0], table, index)
        self.errors.append(LoadError(self.source.path, field, reason, line))

    def error_at(self, field: str, reason: str, line: int | None) -> None:
        """Record a problem at a known line (inside a multi-line text)."""
        self.errors.append(LoadError(self.source.path, field, reason, line))

    def unknown_keys(
        self,
        data: dict[str, Any],
        allowed: Iterable[str],
        prefix: str = "",
        table: str | None = None,
        index: int | None = None,
    ) -> None:
        allowed = set(allowed)
        for key in data:
            if key not in allowed:
                self.error(
                    f"{prefix}{key}",
                    f"unknown key (allowed: {', '.join(sorted(allowed))})",
                    key=key,
                    table=table,
                    index=index,
                )

    def get(
        self,
        data: dict[str, Any],
        key: str,
        types: type | tuple[type, ...],
        *,
        field: str | None = None,
        required: bool = False,
        default: Any = None,
        table: str | None = None,
        index: int | None = None,
        line_key: str | None = None,
    ) -> Any:
        name = field or key
        if key not in data:
            if required:
                self.error(name, "required", key=line_key, table=table, index=index, missing=line_key is None)
            return default
        value = data[key]
        expected = types if isinstance(types, tuple) else (types,)
        ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)
        if not ok:
            self.error(
                name, f"expected {_type_names(expected)}, got {value!r}", key=line_key or key, table=table, index=index
            )
            return default
        if required and isinstance(value, str) and not value.strip():
            self.error(name, "must not be empty", key=line_key or key, table=table, index=index)
            return default
        return value

    def string_list(
        self,
        data: dict[str, Any],
        key: str,
        *,
        field: str | None = None,
        table: str | None = None,
        index: int | None = None,
    ) -> tuple[str, ...]:
        value = self.get(data, key, list, field=field, default=[], table=table, index=index)
        if not all(isinstance(v, str) for v in value):
            self.error(field or key, "expected a list of strings", key=key, table=table, index=index)
            return ()
        return tuple(value)


def _type_names(types: tuple[type, ...]) -> str:
    names = {
        str: "text",
        int: "a whole number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
        float: "a number",
    }
    return " or ".join(names.get(t, t.__name__) for t in types)


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
