"""``lint``: problems that load fine but make a flow useless or dangerous.

Lint reads the files itself (so it reports on flows that do not load, too) and adds every ``validate``
error. Checks:

- ``unmapped-trigger`` (error): no mapping produces the flow's trigger (or its ``not_after``): it can never fire;
- ``unknown-path`` (error): the condition reads a field the trigger's resource type does not have (checked
  against the FHIR R4B model): the condition is always false;
- ``duplicate-automation`` (error) / ``overlapping-flows`` (warning): two enabled flows on the same trigger
  with the same (or an absent, so overlapping) condition sending the same template or form;
- ``reminder-not-before-due`` (warning): the reminder falls at or before the event it is anchored on;
- ``unbounded-recurrence`` (warning): recurring without ``count`` / ``until`` and the flow has no ``not_after``;
- ``sparse-text`` (warning): rendered for a sparse record (no identifier, no phone, no display names), the
  template prints an empty merge field or leaves punctuation dangling ("(MRN )", "with  at .");
- ``unused-template`` (info): no flow uses the template (harmless, so it does not fail the lint); only for
  templates given as paths (the shipped templates include some no shipped flow uses).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.duplicates import overlapping_flows
from fhir_smartflow.engine.loader import parse_sources
from fhir_smartflow.engine.model import Flow, Template
from fhir_smartflow.engine.tomlfiles import LoadError, SourceFile, kind_of
from fhir_smartflow.engine.validation import model_class
from fhir_smartflow.flowfiles import discover, read_toml, registry_channels

SEVERITIES = ("error", "warning", "info")
_UNIT_MINUTES = {"minutes": 1, "hours": 60, "days": 1440, "weeks": 10080}
_KEYWORDS = {
    "and",
    "or",
    "xor",
    "implies",
    "not",
    "in",
    "contains",
    "is",
    "as",
    "div",
    "mod",
    "true",
    "false",
    "today",
    "now",
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
    "where",
    "exists",
    "empty",
}
# Identifiers that start a path: at the start, or after an operator / bracket / comma; not after "." "$" "%".
_PATH_START = re.compile(r"(?:^|(?<=[\s(\[,=!<>+\-*/|&]))([A-Za-z_][A-Za-z0-9_]*)(\s*\()?")
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|`[^`]*`")


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning | info
    code: str
    file: str
    line: int | None
    message: str
    flow: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sources:
    mappings: list[SourceFile]
    flows: list[SourceFile]
    templates: list[SourceFile]
    errors: list[LoadError]
    # Templates given as PATHs (not the configured ones, nor taken from the config because the paths held
    # none): only then is "unused template" asked for (docs/cli.md).
    templates_from_paths: bool = False


def read_sources(paths: Sequence[str], settings: Settings) -> Sources:
    """Every TOML file under ``paths`` (default: the configured engine paths), sorted by kind."""
    default = not paths
    found: dict[str, list[SourceFile]] = {"mapping": [], "flow": [], "template": []}
    errors: list[LoadError] = []
    groups = (
        [
            ("mapping", settings.engine.mappings),
            ("flow", settings.engine.flows),
            ("template", settings.engine.templates),
        ]
        if default
        else [("", list(paths))]
    )
    for expected, group in groups:
        files, missing = discover(group)
        errors += missing
        for path in files:
            source, error = read_toml(path)
            if error or source is None:
                errors.append(error or LoadError(str(path), "file", "unreadable"))
                continue
            kind = kind_of(source) or expected
            if kind in found:
                found[kind].append(source)
            else:
                errors.append(LoadError(str(path), "file", "neither a mapping, a flow nor a template"))
    if not default and not found["mapping"]:
        # Flows are checked against the configured mappings when the paths hold none.
        files, missing = discover(settings.engine.mappings)
        errors += missing
        for path in files:
            source, error = read_toml(path)
            if source is not None:
                found["mapping"].append(source)
            elif error:
                errors.append(error)
    from_paths = not default and bool(found["template"])
    if not default and not found["template"] and found["flow"]:
        files, _ = discover(settings.engine.templates)
        found["template"] += [s for s in (read_toml(p)[0] for p in files) if s is not None]
    return Sources(found["mapping"], found["flow"], found["template"], errors, from_paths)


@functools.cache
def model_fields(resource_type: str) -> frozenset[str] | None:
    """JSON element names of an R4B resource type (None when the type is unknown)."""
    model = model_class(resource_type)
    return None if model is None else frozenset(model.elements_sequence())


def _known_field(name: str, fields: frozenset[str]) -> bool:
    """A field, or the base name of a choice element (``value`` for valueQuantity, ``deceased``...)."""
    if name in fields:
        return True
    return any(f.startswith(name) and len(f) > len(name) and f[len(name)].isupper() for f in fields)


def path_roots(expression: str) -> list[tuple[str | None, str]]:
    """(variable, first field) of each path in a FHIRPath expression: ``(None, "status")``,
    ``("patient", "birthDate")`` for ``%patient.birthDate``; function names and keywords are skipped."""
    text = _STRING.sub("''", expression)
    roots: list[tuple[str | None, str]] = []
    for match in re.finditer(r"%([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)", text):
        roots.append((match.group(1), match.group(2)))
    for match in _PATH_START.finditer(text):
        name, call = match.group(1), match.group(2)
        start = match.start(1)
        if call or name in _KEYWORDS or (start > 0 and text[start - 1] in ".$%"):
            continue
        roots.append((None, name))
    return roots


def _resource_types(trigger: str, mappings: Iterable[dict[str, Any]]) -> set[str]:
    return {str(m.get("resource")) for m in mappings if m.get("trigger") == trigger and m.get("resource")}


def _condition_findings(source: SourceFile, flow: dict[str, Any], types: set[str], flow_id: str) -> list[Finding]:
    """A path root no resource type of the trigger has (checked against R4B) makes the condition always false.
    A trigger fed by several types (patient.discharged: Patient, Encounter, EpisodeOfCare) is flagged only
    when no type has the field."""
    condition = flow.get("condition")
    if not isinstance(condition, str) or not condition.strip():
        return []
    findings = []
    seen: set[tuple[str | None, str]] = set()
    for variable, name in path_roots(condition):
        if (variable, name) in seen or (variable is not None and variable != "patient"):
            continue
        seen.add((variable, name))
        check_types = {"Patient"} if variable else types
        known = {t: model_fields(t) for t in sorted(check_types)}
        known = {t: f for t, f in known.items() if f is not None}
        if not known or name in known or any(_known_field(name, f) for f in known.values()):
            continue  # unknown types are not ours to judge; "Appointment.status" starts with the type name
        where = "%patient (a Patient)" if variable else f"the {' / '.join(known)} that triggers it"
        findings.append(
            Finding(
                "error",
                "unknown-path",
                source.path,
                source.line_of("condition"),
                f"condition reads {name!r}, which {where} does not have in FHIR R4B: the condition is always false",
                flow_id,
            )
        )
    return findings


def _minutes(raw: Any) -> int | None:
    if not isinstance(raw, dict):
        return None
    amount, unit = raw.get("amount"), raw.get("unit")
    if not isinstance(amount, int) or unit not in _UNIT_MINUTES:
        return None
    return amount * _UNIT_MINUTES[unit]


def _action_findings(source: SourceFile, flow: dict[str, Any], flow_id: str) -> list[Finding]:
    findings = []
    for index, action in enumerate(flow.get("actions") or []):
        if not isinstance(action, dict):
            continue
        label = f"action {index + 1} ({action.get('name', '?')})"
        due, reminder = action.get("due"), action.get("reminder")
        reminder_minutes, due_minutes = _minutes(reminder), _minutes(due)
        if reminder_minutes is not None:
            line = source.line_of("reminder", "actions", index)
            if due_minutes is None:
                findings.append(
                    Finding(
                        "warning",
                        "reminder-not-before-due",
                        source.path,
                        line,
                        f"{label}: a reminder without a due date is never sent",
                        flow_id,
                    )
                )
            elif isinstance(due, dict) and due.get("anchor", "event") == "event":
                offset = due_minutes if due.get("direction", "after") == "after" else -due_minutes
                if reminder_minutes >= offset:
                    findings.append(
                        Finding(
                            "warning",
                            "reminder-not-before-due",
                            source.path,
                            line,
                            f"{label}: reminder {reminder_minutes} min before a due date {offset} min after the event "
                            "falls at or before the event itself",
                            flow_id,
                        )
                    )
        recurring = action.get("recurring")
        endless = isinstance(recurring, dict) and "count" not in recurring and "until" not in recurring
        if endless and not flow.get("not_after"):
            findings.append(
                Finding(
                    "warning",
                    "unbounded-recurrence",
                    source.path,
                    source.line_of("recurring", "actions", index),
                    f"{label}: recurs forever (no count, no until, and the flow has no not_after)",
                    flow_id,
                )
            )
    return findings


def _overlap_findings(flows: Iterable[Flow], sources: list[SourceFile]) -> list[Finding]:
    """From the rule ``validate`` applies (engine/duplicates.py): the same condition is the load error
    (reported on its line, so it folds into this finding); a one-sided condition is a warning."""
    by_path = {s.path: s for s in sources}
    findings = []
    for overlap in overlapping_flows(flows):
        a, b = overlap.earlier, overlap.later
        source = by_path[b.file]
        if overlap.same_condition:
            severity, code, how = "error", "duplicate-automation", "the same condition"
            line = source.line_of("item", "actions", overlap.action.index)
        else:
            severity, code, how = "warning", "overlapping-flows", "overlapping conditions (one has none)"
            line = source.line_of("trigger")
        findings.append(
            Finding(
                severity,
                code,
                b.file,
                line,
                f"flows {a.id!r} ({a.file}) and {b.id!r} both send {', '.join(overlap.shared)} on "
                f"{b.trigger!r} with {how}: a patient would get it twice",
                b.id,
            )
        )
    return findings


def _template_findings(templates: list[SourceFile], flows: list[tuple[SourceFile, dict[str, Any]]]) -> list[Finding]:
    used: set[str] = set()
    for _, flow in flows:
        for action in flow.get("actions") or []:
            if isinstance(action, dict):
                used |= {str(action[k]) for k in ("template", "item") if action.get(k)}
    return [
        Finding(
            "info",
            "unused-template",
            t.path,
            t.line_of("id"),
            f"template {t.data.get('id')!r} is not used by any flow",
        )
        for t in templates
        if t.data.get("id") and t.data["id"] not in used
    ]


def _sparse_findings(templates: Iterable[Template], sources: list[SourceFile]) -> list[Finding]:
    """A text that reads wrong for a sparse record: a warning, not a load error — it is right for every
    record that has the value, and an upgrade must not stop a running service over wording."""
    by_path = {s.path: s for s in sources}
    findings = []
    for template in templates:
        source = by_path.get(template.file)
        for field, problems in template.sparse_text.items():
            line = source.line_of("text" if field == "prompt.text" else field) if source else None
            for problem in problems:
                findings.append(
                    Finding(
                        "warning", "sparse-text", template.file, line, f"template {template.id!r} {field}: {problem}"
                    )
                )
    return findings


def lint(paths: Sequence[str], settings: Settings) -> list[Finding]:
    """Every finding for the files under ``paths`` (or the configured engine paths), sorted by file and line."""
    sources = read_sources(paths, settings)
    mappings = [m for s in sources.mappings for m in s.data.get("mapping") or [] if isinstance(m, dict)]
    triggers = {str(m.get("trigger")) for m in mappings}
    flows = [(s, s.data) for s in sources.flows]
    findings: list[Finding] = []
    for source, flow in flows:
        flow_id = str(flow.get("id", Path(source.path).stem))
        trigger = flow.get("trigger")
        if isinstance(trigger, str) and trigger not in triggers:
            findings.append(
                Finding(
                    "error",
                    "unmapped-trigger",
                    source.path,
                    source.line_of("trigger"),
                    f"no mapping produces trigger {trigger!r}: the flow can never fire",
                    flow_id,
                )
            )
        not_after = flow.get("not_after")
        if isinstance(not_after, str) and not_after not in triggers:
            findings.append(
                Finding(
                    "error",
                    "unmapped-trigger",
                    source.path,
                    source.line_of("not_after"),
                    f"no mapping produces not_after trigger {not_after!r}: it never stops the flow",
                    flow_id,
                )
            )
        if isinstance(trigger, str):
            findings += _condition_findings(source, flow, _resource_types(trigger, mappings), flow_id)
        findings += _action_findings(source, flow, flow_id)
    channels, channel_errors = registry_channels(settings)
    errors = [*sources.errors, *channel_errors]
    parsed = parse_sources(sources.mappings, sources.flows, sources.templates, settings, errors, channels=channels)
    findings += _overlap_findings(parsed.flows.values(), sources.flows)
    findings += _sparse_findings(parsed.templates.values(), sources.templates)
    if sources.templates_from_paths:
        findings += _template_findings(sources.templates, flows)
    # validate's errors too. Where lint already reports the same line, its wording stays, as an error.
    load_errors = parsed.errors
    rejected = {(e.file, e.line) for e in load_errors if e.line}
    findings = [dataclasses.replace(f, severity="error") if (f.file, f.line) in rejected else f for f in findings]
    covered = {(f.file, f.line) for f in findings}
    for error in load_errors:
        if error.line and (error.file, error.line) in covered:
            continue
        findings.append(Finding("error", "invalid", error.file, error.line, f"{error.field}: {error.reason}"))
    return sorted(findings, key=lambda f: (f.file, f.line or 0, f.code, f.message))


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.severity in {"error", "warning"} for f in findings) else 0
