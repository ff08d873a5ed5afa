"""Writing TOML (config, flow and template files) from Python values in tests and benchmarks."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level keys, then ``[tables]`` (dict values), then ``[[arrays of tables]]``."""
    plain = {k: v for k, v in doc.items() if not (isinstance(v, dict) or _is_table_array(v))}
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in plain.items()]
    for key, value in doc.items():
        if isinstance(value, dict):
            lines += ["", f"[{toml_key(key)}]"]
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()]
    for key, value in doc.items():
        if _is_table_array(value):
            for table in value:
                lines += ["", f"[[{toml_key(key)}]]"]
                lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write_config(
    path: Path, sections: dict[str, dict[str, Any]], subscriptions: list[dict[str, Any]] | None = None
) -> Path:
    """A fhir-smartflow config file: ``[section]`` tables and ``[[subscriptions]]``."""
    doc: dict[str, Any] = {**sections, "subscriptions": subscriptions} if subscriptions else dict(sections)
    path.write_text(to_toml(doc), encoding="utf-8")
    return path
