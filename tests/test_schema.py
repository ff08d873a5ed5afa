"""The JSON Schemas of flow, template and mapping files: generated from the loader's definitions, committed
under docs/schema/, accepting every shipped file and rejecting what the loader rejects for unknown keys
and wrong types."""

from __future__ import annotations

import copy
import datetime
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from fhir_smartflow import shipped
from fhir_smartflow.cli import main
from fhir_smartflow.config import Settings
from fhir_smartflow.engine.loader import parse_sources
from fhir_smartflow.engine.schema import KINDS, schema
from fhir_smartflow.engine.tomlfiles import SourceFile, kind_of
from fhir_smartflow.flowfiles import discover, read_toml, registry_channels
from fhir_smartflow.tooling.site import schema_text
from tests.support.procs import ROOT

SETTINGS = Settings()
CHANNELS, _ = registry_channels(SETTINGS)
PLUGIN_FIXTURES = [ROOT / "tests" / "fixtures" / "fax", ROOT / "tests" / "fixtures" / "flows"]


def sources(*paths: str | Path) -> list[SourceFile]:
    files, missing = discover([str(p) for p in paths])
    assert not missing
    return [s for s in (read_toml(p)[0] for p in files) if s is not None]


SHIPPED = sources(shipped.ref(shipped.MAPPINGS), shipped.ref(shipped.FLOWS), shipped.ref(shipped.TEMPLATES))
BY_KIND = {kind: [s for s in SHIPPED if kind_of(s) == kind] for kind in KINDS}


def as_json(value: Any) -> Any:
    """TOML data as an editor's schema validator sees it (dates and times as ISO strings, as taplo does)."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


def validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(schema(kind), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_the_committed_schemas_are_the_generated_ones() -> None:
    for kind in KINDS:
        committed = (ROOT / "docs" / "schema" / f"{kind}.schema.json").read_text()
        stale = f"docs/schema/{kind}.schema.json is stale: run fhir-smartflow schema --out docs/schema"
        assert committed == schema_text(kind), stale
        jsonschema.Draft7Validator.check_schema(json.loads(committed))
    printed = CliRunner().invoke(main, ["schema", "flow"])
    assert printed.exit_code == 0 and printed.output == schema_text("flow")
    site = (ROOT / ".taplo.toml").read_text()
    for kind in KINDS:
        assert f'path = "docs/schema/{kind}.schema.json"' in site


@pytest.mark.parametrize("source", [*SHIPPED, *sources(*PLUGIN_FIXTURES)], ids=lambda s: Path(s.path).name)
def test_every_shipped_file_validates(source: SourceFile) -> None:
    kind = kind_of(source)
    assert kind is not None
    found = validator(kind).iter_errors(as_json(source.data))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in found]
    assert not errors, errors  # a plugin channel (the fax fixture's "fax") is a valid method too


def tables(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every closed table (every table but the open `parameters` map of a mapping)."""
    if isinstance(data, dict):
        if path[-1:] != ("parameters",):
            yield path
        for key, value in data.items():
            yield from tables(value, (*path, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from tables(item, (*path, i))


def leaves(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value in a table, and of every item of a list of strings."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*path, key)
            yield from leaves(value, (*path, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if isinstance(item, str):
                yield (*path, i)
            yield from leaves(item, (*path, i))


def wrong_type(value: Any) -> Any:
    return 12345 if isinstance(value, str) else "not-the-right-type"


def mutated(data: dict[str, Any], path: tuple[Any, ...], change: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node: Any = data
    for step in path[:-1] if change == "type" else path:
        node = node[step]
    if change == "type":
        node[path[-1]] = wrong_type(node[path[-1]])
    else:
        node["no_such_key"] = "x"
    return data


def loader_rejects(kind: str, source: SourceFile, data: dict[str, Any]) -> bool:
    changed = SourceFile(source.path, source.text, data)
    files = {
        "mapping": ([changed], [], []),  # checked alone, as `validate` checks given mappings
        "template": ([], [], [changed]),
        "flow": (BY_KIND["mapping"], [changed], BY_KIND["template"]),  # with what the flows use
    }[kind]
    parsed = parse_sources(*files, SETTINGS, channels=CHANNELS)
    return any(e.file == source.path for e in parsed.errors)


def signature(kind: str, path: tuple[Any, ...], change: str) -> tuple[Any, ...]:
    return (kind, change, *("[]" if isinstance(p, int) else p for p in path))


def mutations() -> Iterator[tuple[str, SourceFile, tuple[Any, ...], str]]:
    """One unknown-key mutation per kind of table and one wrong-type mutation per kind of value, over
    every shipped file (the first file that has it)."""
    seen: set[tuple[Any, ...]] = set()
    for source in SHIPPED:
        kind = kind_of(source)
        assert kind is not None
        for change, paths in (("unknown-key", tables(source.data)), ("type", leaves(source.data))):
            for path in paths:
                sig = signature(kind, path, change)
                if sig not in seen:
                    seen.add(sig)
                    yield kind, source, path, change


CASES = list(mutations())


def test_the_schema_rejects_what_the_loader_rejects_for_unknown_keys_and_types() -> None:
    disagree = []
    rejected = 0
    for kind, source, path, change in CASES:
        data = mutated(source.data, path, change)
        by_loader = loader_rejects(kind, source, data)
        by_schema = not validator(kind).is_valid(as_json(data))
        rejected += by_loader
        if by_loader != by_schema:
            verdict = {True: "rejects", False: "accepts"}
            where = f"{Path(source.path).name} {change} {'.'.join(map(str, path))}"
            disagree.append(f"{where}: loader {verdict[by_loader]}, schema {verdict[by_schema]}")
    assert not disagree, "\n".join(disagree)
    # Every kind of table and value was tried, and almost every mutation is an error (a flow's version
    # may be text or a number: 12345 for "2" stays valid for both).
    assert {c[0] for c in CASES} == set(KINDS) and len(CASES) > 60
    assert rejected >= len(CASES) - 2, rejected


def test_plugin_channels_are_not_a_closed_list() -> None:
    flow = copy.deepcopy(BY_KIND["template"][0].data)
    flow["methods"] = ["fax", "carrier-pigeon_2"]  # a plugin's name: the registry decides, not the schema
    assert validator("template").is_valid(as_json(flow))
    flow["methods"] = ["Not A Channel"]
    assert not validator("template").is_valid(as_json(flow))
    assert tomllib.loads((ROOT / ".taplo.toml").read_text())["rule"]
