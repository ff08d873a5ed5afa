"""Parse and check `mappings/*.toml` (docs/flows.md#mappings)."""

from __future__ import annotations

import re

from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.checks import compile_into
from fhir_smartflow.engine.model import MappingRule
from fhir_smartflow.engine.tomlfiles import Checker, LoadError, SourceFile
from fhir_smartflow.refs import RESOURCE_TYPE_RE

# The keys of a [[mapping]] table (the JSON Schema, engine/schema.py, is generated from these too).
MAPPING_KEYS = {
    "trigger",
    "resource",
    "interactions",
    "when",
    "previous",
    "previous_missing",
    "patient",
    "once_per",
    "search",
    "parameters",
}
TRIGGER = re.compile(r"^[a-z][a-z_]*\.[a-z][a-z_]*$")
INTERACTIONS = ("create", "update")


def parse_mappings(source: SourceFile, paths: dict[str, m.Compiled]) -> tuple[list[MappingRule], list[LoadError]]:
    check = Checker(source)
    check.unknown_keys(source.data, {"mapping"})
    raw = check.get(source.data, "mapping", list, required=True, default=[])
    rules: list[MappingRule] = []
    for i, item in enumerate(raw):
        t = {"table": "mapping", "index": i}
        prefix = f"mapping[{i + 1}]."
        if not isinstance(item, dict):
            check.error(f"mapping[{i + 1}]", "expected a table", **t)
            continue
        check.unknown_keys(item, MAPPING_KEYS, prefix, **t)
        trigger = check.get(item, "trigger", str, field=prefix + "trigger", required=True, **t)
        if trigger and not TRIGGER.match(trigger):
            check.error(
                prefix + "trigger", f"must look like 'area.event' (lower case), got {trigger!r}", key="trigger", **t
            )
        resource = check.get(item, "resource", str, field=prefix + "resource", required=True, **t)
        if resource and not RESOURCE_TYPE_RE.match(resource):
            check.error(
                prefix + "resource",
                f"must be a FHIR resource type like 'Appointment', got {resource!r}",
                key="resource",
                **t,
            )
        interactions = check.string_list(item, "interactions", field=prefix + "interactions", **t) or (
            "create",
            "update",
        )
        bad = [x for x in interactions if x not in INTERACTIONS]
        if bad:
            check.error(prefix + "interactions", f"must be create and/or update, got {bad}", key="interactions", **t)
        expressions: dict[str, str] = {}
        for key in ("when", "previous", "patient"):
            value = check.get(item, key, str, field=prefix + key, **t)
            if value:
                expressions[key] = value
                compile_into(check, paths, value, prefix + key, key, **t)
        previous_missing = check.get(
            item, "previous_missing", bool, field=prefix + "previous_missing", default=True, **t
        )
        once_per = check.get(item, "once_per", str, field=prefix + "once_per", **t)
        if once_per is not None and once_per != "patient":
            check.error(prefix + "once_per", f"only 'patient' is supported, got {once_per!r}", key="once_per", **t)
        if once_per and "patient" not in expressions:
            check.error(
                prefix + "once_per", "needs a `patient` expression to know whose first time it is", key="once_per", **t
            )
        search = check.get(item, "search", str, field=prefix + "search", **t)
        parameters = check.get(item, "parameters", dict, field=prefix + "parameters", default={}, **t)
        for name, expression in parameters.items():
            if not isinstance(expression, str):
                check.error(f"{prefix}parameters.{name}", "expected a FHIRPath expression (text)", key=name, **t)
            else:
                compile_into(check, paths, expression, f"{prefix}parameters.{name}", name, **t)
        if trigger and resource:
            rules.append(
                MappingRule(
                    trigger=trigger,
                    resource=resource,
                    interactions=tuple(interactions),
                    when=expressions.get("when"),
                    previous=expressions.get("previous"),
                    previous_missing=previous_missing,
                    patient=expressions.get("patient"),
                    parameters={k: v for k, v in parameters.items() if isinstance(v, str)},
                    once_per=once_per,
                    search=search,
                    file=source.path,
                )
            )
    return rules, check.errors
