"""Load and validate mappings, templates and flows into an Engine — strictly, in stages.

Stage 1 parses each file (TOML errors; ``fhir_smartflow.flowfiles`` reads them). Stage 2 checks
each file on its own (unknown keys, types, required fields, durations, units, FHIRPath syntax).
Stage 3 checks references across files (triggers, templates, roles), test-renders templates against
the sample catalog and looks for duplicate automation. Every problem is a LoadError
``file[:line]: field: reason``; nothing partial is returned: an engine with errors is None
(``parse_sources`` keeps the parts that did parse, for ``lint``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from fhir_smartflow.channels import ChannelSpec
from fhir_smartflow.config import Settings
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.duplicates import duplicate_automation
from fhir_smartflow.engine.model import Engine, Flow, MappingRule, Template
from fhir_smartflow.engine.parse_flows import parse_flow
from fhir_smartflow.engine.parse_mappings import parse_mappings
from fhir_smartflow.engine.parse_templates import parse_template
from fhir_smartflow.engine.tomlfiles import EngineLoadError, LoadError, SourceFile

__all__ = ["EngineLoadError", "LoadError", "Parsed", "build_engine", "parse_sources"]

_Named = TypeVar("_Named", Template, Flow)


@dataclass(frozen=True)
class Parsed:
    """Everything that parsed, and every problem found (an Engine needs ``errors`` empty)."""

    mappings: tuple[MappingRule, ...]
    flows: dict[str, Flow]
    templates: dict[str, Template]
    paths: dict[str, m.Compiled]
    renderers: dict[tuple[str, str], object]
    errors: list[LoadError]


def build_engine(
    mapping_files: list[SourceFile],
    flow_files: list[SourceFile],
    template_files: list[SourceFile],
    settings: Settings,
    errors: list[LoadError] | None = None,
    *,
    channels: Mapping[str, ChannelSpec],
) -> tuple[Engine | None, list[LoadError]]:
    """The Engine, or None and every problem. ``channels`` (name -> spec, from the channel registry) are
    what the templates' and actions' methods are checked against."""
    parsed = parse_sources(mapping_files, flow_files, template_files, settings, errors, channels=channels)
    if parsed.errors:
        return None, parsed.errors
    engine = Engine(parsed.mappings, parsed.flows, parsed.templates, parsed.paths, parsed.renderers, channels)
    return engine, []


def parse_sources(
    mapping_files: list[SourceFile],
    flow_files: list[SourceFile],
    template_files: list[SourceFile],
    settings: Settings,
    errors: list[LoadError] | None = None,
    *,
    channels: Mapping[str, ChannelSpec],
) -> Parsed:
    """All three stages; what parsed is kept even when something else did not (lint reads it)."""
    errors = list(errors or [])
    paths: dict[str, m.Compiled] = {}
    mappings: list[MappingRule] = []
    for source in mapping_files:
        rules, errs = parse_mappings(source, paths)
        mappings += rules
        errors += errs
    templates: dict[str, Template] = {}
    renderers: dict[tuple[str, str], object] = {}
    for source in template_files:
        template, errs = parse_template(source, settings, renderers, channels)
        errors += errs
        if template is not None:
            errors += _keep_unique(templates, template, "template", source)
    known_triggers = {r.trigger for r in mappings}
    flows: dict[str, Flow] = {}
    for source in flow_files:
        flow, errs = parse_flow(source, settings, paths, templates, known_triggers, channels)
        errors += errs
        if flow is not None:
            errors += _keep_unique(flows, flow, "flow", source)
    errors += duplicate_automation(flows.values(), flow_files)
    return Parsed(tuple(mappings), flows, templates, paths, renderers, errors)


def _keep_unique(found: dict[str, _Named], item: _Named, kind: str, source: SourceFile) -> list[LoadError]:
    """Add ``item`` under its id, or the error naming the file that has the id already."""
    if item.id not in found:
        found[item.id] = item
        return []
    reason = f"duplicate {kind} id {item.id!r} (also in {found[item.id].file})"
    return [LoadError(source.path, "id", reason, source.line_of("id"))]
