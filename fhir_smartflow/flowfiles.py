"""Reading flow, template and mapping files from disk into the pure engine loader.

The engine (``engine/``) does no I/O: it takes parsed ``SourceFile``s and the channel specs as data. This
module finds the files (files or directories, ``*.toml``; ``shipped:<path>`` is data inside the package,
read with ``importlib.resources``), reads them, gets the specs from the channel registry
(``fhir_smartflow.channels``) unless given, and hands everything to ``engine.loader.build_engine``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path

from fhir_smartflow import shipped
from fhir_smartflow.channels import ChannelSpec, channel_specs
from fhir_smartflow.config import ConfigError, Settings
from fhir_smartflow.engine.loader import build_engine
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.engine.tomlfiles import EngineLoadError, LoadError, SourceFile, kind_of, parse_source

__all__ = [
    "EngineLoadError",
    "LoadError",
    "discover",
    "load_engine",
    "load_paths",
    "read_toml",
    "registry_channels",
    "require_configured_paths",
]


def discover(paths: Iterable[str]) -> tuple[list[Traversable], list[LoadError]]:
    """Every ``*.toml`` under the given files / directories (sorted, deduplicated)."""
    found: list[Traversable] = []
    errors: list[LoadError] = []
    for raw in paths:
        path: Traversable = shipped.locate(raw) if shipped.is_shipped(raw) else Path(raw)
        if isinstance(path, Path) and path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.toml") if p.is_file()))
        elif path.is_dir():  # shipped data not on the file system (a zipped install)
            found.extend(item for _, item in shipped.walk(path, ".toml"))
        elif path.is_file():
            found.append(path)
        else:
            errors.append(LoadError(raw if shipped.is_shipped(raw) else str(path), "path", "no such file or directory"))
    unique = list(dict.fromkeys(found))
    return unique, errors


def require_configured_paths(settings: Settings, kinds: Iterable[str] = ("mappings", "flows", "templates")) -> None:
    """ConfigError naming the ``[engine]`` key of the first configured path (of ``kinds``) that does not exist:
    a configuration error (exit 2), not a problem in the files."""
    configured = settings.engine.paths()
    for kind in kinds:
        for raw in configured[kind]:
            _, missing = discover([raw])
            if missing:
                raise ConfigError(f"[engine] {kind}", f"no such file or directory: {raw}")


def read_toml(path: Traversable) -> tuple[SourceFile | None, LoadError | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, LoadError(str(path), "file", f"cannot read: {exc}")
    return parse_source(str(path), text)


def registry_channels(settings: Settings) -> tuple[dict[str, ChannelSpec], list[LoadError]]:
    """The channel registry's specs for ``settings``, or a load error naming the config key at fault (a
    plugin that cannot be imported, a ``[channels.<name>]`` table no channel takes or with a bad key)."""
    try:
        return channel_specs(settings), []
    except ConfigError as exc:
        return {}, [LoadError(settings.source, exc.key, exc.reason)]


def load_engine(settings: Settings) -> Engine:
    engine, errors = load_paths(settings.engine.mappings, settings.engine.flows, settings.engine.templates, settings)
    if errors or engine is None:
        raise EngineLoadError(errors)
    return engine


def load_paths(
    mappings: Sequence[str],
    flows: Sequence[str],
    templates: Sequence[str],
    settings: Settings,
    channels: Mapping[str, ChannelSpec] | None = None,
) -> tuple[Engine | None, list[LoadError]]:
    """Load everything under the given paths; (engine, []) or (None, errors). ``channels``: the channel
    registry's specs for ``settings`` unless given (a channel plugin or table problem is a load error)."""
    errors: list[LoadError] = []
    if channels is None:
        channels, problems = registry_channels(settings)
        if problems:
            return None, problems
    sources: dict[str, list[SourceFile]] = {"mapping": [], "flow": [], "template": []}
    for expected, paths in (("mapping", mappings), ("flow", flows), ("template", templates)):
        files, missing = discover(paths)
        errors += missing
        for path in files:
            source, error = read_toml(path)
            if error:
                errors.append(error)
                continue
            assert source is not None
            kind = kind_of(source) or expected
            sources[kind].append(source)
    return build_engine(sources["mapping"], sources["flow"], sources["template"], settings, errors, channels=channels)
