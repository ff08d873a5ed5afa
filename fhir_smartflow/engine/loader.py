"""Load and validate mappings, templates and flows into an Engine — strictly, in stages.

Stage 1 reads and parses each file (TOML errors). Stage 2 checks each file on its own (unknown
keys, types, required fields, durations, units, FHIRPath syntax). Stage 3 checks references across
files (triggers, templates, roles), test-renders templates against the sample catalog and looks for
duplicate automation. Every problem is a LoadError ``file[:line]: field: reason``; nothing partial
is returned: an engine with errors is None.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date

from fhir_smartflow.config import Settings
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.fhirpath import FhirPathError, compile_path
from fhir_smartflow.engine.model import Engine, Flow, MappingRule, Template
from fhir_smartflow.engine.templating import (
    TemplateRenderError,
    compile_template,
    make_environment,
    render,
    sample_catalog,
)
from fhir_smartflow.engine.tomlfiles import (
    Checker,
    EngineLoadError,
    LoadError,
    SourceFile,
    discover,
    kind_of,
    read_toml,
    slugify,
)

__all__ = ["EngineLoadError", "LoadError", "load_engine", "load_paths"]

_MAPPING_KEYS = {
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
_TEMPLATE_KEYS = {"id", "name", "status", "methods", "subject", "body", "note_type", "prompt", "recipients"}
_FLOW_KEYS = {"id", "name", "description", "enabled", "version", "trigger", "condition", "not_after", "actions"}
_ACTION_KEYS = {
    "name",
    "category",
    "type",
    "item",
    "template",
    "methods",
    "due",
    "weekend",
    "owner",
    "reminder",
    "recurring",
    "completes_workflow",
    "overdue",
    "notify_on_failure",
}
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TRIGGER = re.compile(r"^[a-z][a-z_]*\.[a-z][a-z_]*$")
_RESOURCE = re.compile(r"^[A-Z][A-Za-z]+$")
_REF = {
    "practitioner": re.compile(r"^(Practitioner|PractitionerRole)/[A-Za-z0-9\-.]{1,64}$"),
    "group": re.compile(r"^(Group|CareTeam)/[A-Za-z0-9\-.]{1,64}$"),
}
# Which delivery methods each action type may use (the first entry is the default when a type has one).
ALLOWED_METHODS: dict[str, tuple[str, ...]] = {
    "send-form": ("sms", "email", "voice", "portal", "webhook"),
    "patient-message": ("sms", "email", "voice", "portal", "webhook"),
    "notify": ("staff-message", "sms", "email", "voice", "webhook"),
    "staff-message": ("staff-message", "sms", "email"),
    "staff-task": (),
    "patient-note": ("patient-note",),
    "record-prompt": (),
}
_EXAMPLE_REF = {"practitioner": "Practitioner/123", "group": "Group/intake-team"}
_NEEDS_TEMPLATE = {"patient-message", "staff-message", "notify", "patient-note", "record-prompt"}
_RESERVED_FLOW_PREFIX = "lifecycle-"


def load_engine(settings: Settings) -> Engine:
    engine, errors = load_paths(settings.engine.mappings, settings.engine.flows, settings.engine.templates, settings)
    if errors or engine is None:
        raise EngineLoadError(errors)
    return engine


def load_paths(
    mappings: Sequence[str], flows: Sequence[str], templates: Sequence[str], settings: Settings
) -> tuple[Engine | None, list[LoadError]]:
    """Load everything under the given paths; (engine, []) or (None, errors)."""
    errors: list[LoadError] = []
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
    return build_engine(sources["mapping"], sources["flow"], sources["template"], settings, errors)


def build_engine(
    mapping_files: list[SourceFile],
    flow_files: list[SourceFile],
    template_files: list[SourceFile],
    settings: Settings,
    errors: list[LoadError] | None = None,
) -> tuple[Engine | None, list[LoadError]]:
    errors = list(errors or [])
    paths: dict[str, m.Compiled] = {}
    mappings: list[MappingRule] = []
    for source in mapping_files:
        rules, errs = _parse_mappings(source, paths)
        mappings += rules
        errors += errs
    templates: dict[str, Template] = {}
    renderers: dict[tuple[str, str], object] = {}
    for source in template_files:
        template, errs = _parse_template(source, settings, renderers)
        errors += errs
        if template is None:
            continue
        if template.id in templates:
            errors.append(
                LoadError(
                    source.path,
                    "id",
                    f"duplicate template id {template.id!r} (also in {templates[template.id].file})",
                    source.line_of("id"),
                )
            )
            continue
        templates[template.id] = template
    known_triggers = {r.trigger for r in mappings}
    flows: dict[str, Flow] = {}
    for source in flow_files:
        flow, errs = _parse_flow(source, settings, paths, templates, known_triggers)
        errors += errs
        if flow is None:
            continue
        if flow.id in flows:
            errors.append(
                LoadError(
                    source.path,
                    "id",
                    f"duplicate flow id {flow.id!r} (also in {flows[flow.id].file})",
                    source.line_of("id"),
                )
            )
            continue
        flows[flow.id] = flow
    errors += _duplicate_automation(flows, flow_files)
    if errors:
        return None, errors
    return Engine(tuple(mappings), flows, templates, paths, renderers), []


# --- mappings --------------------------------------------------------------------------------------


def _compile(
    check: Checker,
    paths: dict[str, m.Compiled],
    expression: str,
    field: str,
    key: str,
    table: str | None = None,
    index: int | None = None,
) -> None:
    if expression in paths:
        return
    try:
        paths[expression] = compile_path(expression)
    except FhirPathError as exc:
        check.error(field, f"not valid FHIRPath ({exc}): {expression}", key=key, table=table, index=index)


def _parse_mappings(source: SourceFile, paths: dict[str, m.Compiled]) -> tuple[list[MappingRule], list[LoadError]]:
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
        check.unknown_keys(item, _MAPPING_KEYS, prefix, **t)
        trigger = check.get(item, "trigger", str, field=prefix + "trigger", required=True, **t)
        if trigger and not _TRIGGER.match(trigger):
            check.error(
                prefix + "trigger", f"must look like 'area.event' (lower case), got {trigger!r}", key="trigger", **t
            )
        resource = check.get(item, "resource", str, field=prefix + "resource", required=True, **t)
        if resource and not _RESOURCE.match(resource):
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
        bad = [x for x in interactions if x not in ("create", "update")]
        if bad:
            check.error(prefix + "interactions", f"must be create and/or update, got {bad}", key="interactions", **t)
        expressions: dict[str, str] = {}
        for key in ("when", "previous", "patient"):
            value = check.get(item, key, str, field=prefix + key, **t)
            if value:
                expressions[key] = value
                _compile(check, paths, value, prefix + key, key, **t)
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
                _compile(check, paths, expression, f"{prefix}parameters.{name}", name, **t)
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


# --- templates -------------------------------------------------------------------------------------


def _known_roles(check: Checker, roles: Sequence[str], settings: Settings, field: str, key: str) -> None:
    for role in roles:
        if role not in settings.roles:
            check.error(
                field, f"unknown role {role!r} (roles in the config: {', '.join(sorted(settings.roles))})", key=key
            )


def _parse_template(
    source: SourceFile, settings: Settings, renderers: dict[tuple[str, str], object]
) -> tuple[Template | None, list[LoadError]]:
    check = Checker(source)
    data = source.data
    check.unknown_keys(data, _TEMPLATE_KEYS)
    tid = check.get(data, "id", str, required=True)
    if tid and not _ID.match(tid):
        check.error("id", f"use lower-case letters, digits and '-' only, got {tid!r}")
    name = check.get(data, "name", str, required=True)
    status = check.get(data, "status", str, default="enabled")
    if status not in ("enabled", "disabled"):
        check.error("status", f"must be 'enabled' or 'disabled', got {status!r}")
    methods = check.string_list(data, "methods")
    for method in methods:
        if method not in m.METHODS:
            check.error("methods", f"unknown method {method!r} (allowed: {', '.join(m.METHODS)})")
    subject = check.get(data, "subject", str, default="")
    body = check.get(data, "body", str, default="")
    note_type = check.get(data, "note_type", str, default="progress-note")
    if note_type not in m.NOTE_TYPES:
        check.error("note_type", f"unknown note type {note_type!r} (allowed: {', '.join(m.NOTE_TYPES)})")
    prompt = None
    raw_prompt = check.get(data, "prompt", dict)
    if raw_prompt is not None:
        check.unknown_keys(raw_prompt, {"text", "roles", "practitioners"}, "prompt.")
        text = check.get(raw_prompt, "text", str, field="prompt.text", required=True, default="")
        roles = check.string_list(raw_prompt, "roles", field="prompt.roles")
        _known_roles(check, roles, settings, "prompt.roles", "roles")
        practitioners = check.string_list(raw_prompt, "practitioners", field="prompt.practitioners")
        _check_refs(check, practitioners, "practitioner", "prompt.practitioners", "practitioners")
        prompt = m.Prompt(text, roles, practitioners)
    recipients = m.Recipients()
    raw_recipients = check.get(data, "recipients", dict)
    if raw_recipients is not None:
        check.unknown_keys(raw_recipients, {"practitioners", "groups", "roles"}, "recipients.")
        practitioners = check.string_list(raw_recipients, "practitioners", field="recipients.practitioners")
        _check_refs(check, practitioners, "practitioner", "recipients.practitioners", "practitioners")
        groups = check.string_list(raw_recipients, "groups", field="recipients.groups")
        _check_refs(check, groups, "group", "recipients.groups", "groups")
        roles = check.string_list(raw_recipients, "roles", field="recipients.roles")
        _known_roles(check, roles, settings, "recipients.roles", "roles")
        recipients = m.Recipients(practitioners, groups, roles)
    if not body and not (prompt and prompt.text):
        check.error("body", "required (the message text), unless the template is only a record prompt")
    if tid:
        env = make_environment()
        sample = sample_catalog(settings)
        parts = {"subject": subject, "body": body, "prompt": prompt.text if prompt else ""}
        for part, text in parts.items():
            if not text:
                continue
            try:
                compiled = compile_template(env, text)
                render(compiled, sample)
                renderers[(tid, part)] = compiled
            except TemplateRenderError as exc:
                field = "prompt.text" if part == "prompt" else part
                check.error(field, f"does not render: {exc}", key="text" if part == "prompt" else part)
    if check.errors or not tid or not name:
        return None, check.errors
    return Template(tid, name, status, methods, subject, body, note_type, prompt, recipients, source.path), []


def _check_refs(check: Checker, refs: Sequence[str], kind: str, field: str, key: str) -> None:
    for ref in refs:
        if not _REF[kind].match(ref):
            wanted = (
                "Practitioner/<id> or PractitionerRole/<id>"
                if kind == "practitioner"
                else "Group/<id> or CareTeam/<id>"
            )
            check.error(field, f"expected {wanted}, got {ref!r}", key=key)


# --- flows -----------------------------------------------------------------------------------------


def _parse_flow(
    source: SourceFile,
    settings: Settings,
    paths: dict[str, m.Compiled],
    templates: dict[str, Template],
    known_triggers: set[str],
) -> tuple[Flow | None, list[LoadError]]:
    check = Checker(source)
    data = source.data
    check.unknown_keys(data, _FLOW_KEYS)
    fid = check.get(data, "id", str, required=True)
    if fid and not _ID.match(fid):
        check.error("id", f"use lower-case letters, digits and '-' only, got {fid!r}")
    if fid and fid.startswith(_RESERVED_FLOW_PREFIX):
        check.error("id", f"ids starting with {_RESERVED_FLOW_PREFIX!r} are reserved for built-in lifecycle runs")
    name = check.get(data, "name", str, required=True)
    description = check.get(data, "description", str, default="")
    enabled = check.get(data, "enabled", bool, default=True)
    version = check.get(data, "version", (str, int), default="1")
    trigger = check.get(data, "trigger", str, required=True)
    if trigger and trigger not in known_triggers:
        check.error("trigger", f"unknown trigger {trigger!r} (known: {', '.join(sorted(known_triggers))})")
    condition = check.get(data, "condition", str)
    if condition:
        _compile(check, paths, condition, "condition", "condition")
    not_after = check.get(data, "not_after", str)
    if not_after is not None and not_after != "patient.discharged":
        check.error("not_after", f"only 'patient.discharged' is supported, got {not_after!r}")
    raw_actions = check.get(data, "actions", list, required=True, default=[])
    if "actions" in data and not raw_actions:
        check.error("actions", "a flow needs at least one [[actions]] entry")
    actions: list[m.Action] = []
    slugs: set[str] = set()
    for i, raw in enumerate(raw_actions):
        action = _parse_action(check, raw, i, settings, templates)
        if action is None:
            continue
        if action.slug in slugs:
            check.error(
                f"actions[{i + 1}].name",
                f"two actions are named {action.name!r}; names must differ",
                key="name",
                table="actions",
                index=i,
            )
        slugs.add(action.slug)
        actions.append(action)
    if check.errors or not (fid and name and trigger):
        return None, check.errors
    return Flow(
        id=fid,
        name=name,
        trigger=trigger,
        actions=tuple(actions),
        version=str(version),
        description=description,
        enabled=enabled,
        condition=condition,
        not_after=not_after,
        file=source.path,
    ), []


def _duration(check: Checker, raw: object, field: str, key: str, index: int, allowed: set[str]) -> dict | None:
    t = {"table": "actions", "index": index}
    if not isinstance(raw, dict):
        check.error(field, f'expected a table like {{ amount = 1, unit = "days" }}, got {raw!r}', key=key, **t)
        return None
    check.unknown_keys(raw, allowed, field + ".", **t)
    amount = check.get(raw, "amount", int, field=f"{field}.amount", required=True, line_key=key, **t)
    unit = check.get(raw, "unit", str, field=f"{field}.unit", required=True, line_key=key, **t)
    if amount is not None and amount < 0:
        check.error(f"{field}.amount", f"must be zero or more, got {amount}", key=key, **t)
        amount = None
    if unit is not None and unit not in m.UNITS:
        check.error(f"{field}.unit", f"unknown unit {unit!r} (use {', '.join(m.UNITS)})", key=key, **t)
        unit = None
    if amount is None or unit is None:
        return None
    return {**raw, "amount": amount, "unit": unit}


def _parse_action(
    check: Checker, raw: object, i: int, settings: Settings, templates: dict[str, Template]
) -> m.Action | None:
    t = {"table": "actions", "index": i}
    p = f"actions[{i + 1}]."
    before = len(check.errors)
    if not isinstance(raw, dict):
        check.error(f"actions[{i + 1}]", "expected a table", **t)
        return None
    check.unknown_keys(raw, _ACTION_KEYS, p, **t)
    name = check.get(raw, "name", str, field=p + "name", required=True, **t)
    category = check.get(raw, "category", str, field=p + "category", required=True, **t)
    if category is not None and category != "smartflow":
        check.error(p + "category", f"must be 'smartflow', got {category!r}", key="category", **t)
    atype = check.get(raw, "type", str, field=p + "type", required=True, **t)
    if atype is not None and atype not in m.ACTION_TYPES:
        check.error(p + "type", f"unknown action type {atype!r} (use {', '.join(m.ACTION_TYPES)})", key="type", **t)
        atype = None
    item = check.get(raw, "item", str, field=p + "item", required=True, **t)
    if atype == "send-form" and item and not item.startswith(("http://", "https://", "urn:")):
        check.error(p + "item", f"a send-form item is the Questionnaire canonical URL, got {item!r}", key="item", **t)
    template_id = check.get(raw, "template", str, field=p + "template", **t)
    template = None
    if template_id is not None:
        template = templates.get(template_id)
        if template is None:
            check.error(p + "template", f"unknown template {template_id!r}", key="template", **t)
        elif not template.enabled:
            check.error(
                p + "template",
                f"template {template_id!r} is disabled ({template.file}); enable it or choose another",
                key="template",
                **t,
            )
            template = None
    elif atype in _NEEDS_TEMPLATE:
        check.error(p + "template", f"required for a {atype} action", key="template", **t)
    if atype == "record-prompt" and template is not None and template.prompt is None:
        check.error(
            p + "template", f"template {template.id!r} has no [prompt] for a record-prompt", key="template", **t
        )
    methods = check.string_list(raw, "methods", field=p + "methods", **t)
    if atype is not None:
        methods = _check_methods(check, atype, methods, template, "methods" in raw, p, t, named=template_id is not None)
    due = None
    raw_due = raw.get("due")
    if raw_due is not None:
        values = _duration(check, raw_due, p + "due", "due", i, {"amount", "unit", "direction", "anchor"})
        if values is not None:
            direction = values.get("direction", "after")
            anchor = values.get("anchor", "event")
            if direction not in m.DIRECTIONS:
                check.error(p + "due.direction", f"must be 'after' or 'before', got {direction!r}", key="due", **t)
            if anchor not in m.ANCHORS:
                check.error(p + "due.anchor", f"unknown anchor {anchor!r} (use {', '.join(m.ANCHORS)})", key="due", **t)
            due = m.Due(values["amount"], values["unit"], str(direction), str(anchor))
    weekend = check.get(raw, "weekend", str, field=p + "weekend", default="keep", **t)
    if weekend not in m.WEEKEND_POLICIES:
        check.error(
            p + "weekend", f"must be one of {', '.join(m.WEEKEND_POLICIES)}, got {weekend!r}", key="weekend", **t
        )
    owner = _parse_owner(check, raw.get("owner"), p, settings, t)
    if atype == "staff-task" and ("owner" not in raw or (owner is not None and owner.kind == "patient")):
        check.error(
            p + "owner",
            "a staff-task needs an owner: { practitioner = ... }, { role = ... } or { group = ... }",
            key="owner" if "owner" in raw else "type",
            **t,
        )
    reminder = None
    if "reminder" in raw:
        values = _duration(check, raw["reminder"], p + "reminder", "reminder", i, {"amount", "unit"})
        reminder = m.Duration(values["amount"], values["unit"]) if values else None
        if due is None and raw_due is None:
            check.error(p + "reminder", "a reminder is relative to the due date: add `due`", key="reminder", **t)
    recurring = _parse_recurring(check, raw.get("recurring"), p, t)
    completes = check.get(raw, "completes_workflow", bool, field=p + "completes_workflow", default=False, **t)
    overdue = None
    raw_overdue = check.get(raw, "overdue", dict, field=p + "overdue", **t)
    if raw_overdue is not None:
        check.unknown_keys(raw_overdue, {"notify_owner"}, p + "overdue.", **t)
        notify = check.get(
            raw_overdue, "notify_owner", bool, field=p + "overdue.notify_owner", default=False, line_key="overdue", **t
        )
        overdue = m.Overdue(notify)
        if raw_due is None:
            check.error(p + "overdue", "overdue needs a due date: add `due`", key="overdue", **t)
    if (completes or recurring or reminder or overdue) and atype not in ("send-form", "staff-task", "staff-message"):
        check.error(
            p + "type",
            "reminders, recurrences, overdue and completes_workflow need a task "
            "(send-form, staff-task or staff-message)",
            key="type",
            **t,
        )
    notify_on_failure = check.get(raw, "notify_on_failure", bool, field=p + "notify_on_failure", default=False, **t)
    if len(check.errors) > before or not (name and atype and item):
        return None
    return m.Action(
        index=i,
        name=name,
        slug=slugify(name),
        type=atype,
        item=item,
        category="smartflow",
        template=template_id,
        methods=methods,
        due=due,
        weekend=weekend,
        owner=owner,
        reminder=reminder,
        recurring=recurring,
        completes_workflow=completes,
        overdue=overdue,
        notify_on_failure=notify_on_failure,
    )


def _check_methods(
    check: Checker,
    atype: str,
    methods: tuple[str, ...],
    template: Template | None,
    given: bool,
    p: str,
    t: dict,
    named: bool = False,
) -> tuple[str, ...]:
    allowed = ALLOWED_METHODS[atype]
    if not given:
        if template is not None and template.methods:
            methods = tuple(x for x in template.methods if x in allowed)
        elif atype in ("staff-message", "patient-note", "notify"):
            methods = allowed[:1]
    for method in methods:
        if method not in allowed:
            check.error(
                p + "methods",
                f"{method!r} cannot be used by a {atype} action (allowed: {', '.join(allowed) or 'none'})",
                key="methods",
                **t,
            )
        elif given and template is not None and template.methods and method not in template.methods:
            check.error(
                p + "methods",
                f"template {template.id!r} is not written for {method!r} (its methods: {', '.join(template.methods)})",
                key="methods",
                **t,
            )
    if methods and template is None and not named and atype not in ("staff-task", "record-prompt"):
        check.error(p + "template", "sending a message needs a template", key="methods", **t)
    if atype == "patient-message" and not methods:
        check.error(p + "methods", "a patient-message needs at least one method", key="methods", **t)
    return methods


def _parse_owner(check: Checker, raw: object, p: str, settings: Settings, t: dict) -> m.Owner | None:
    if raw is None:
        return None
    if raw == "patient":
        return m.Owner("patient")
    if not isinstance(raw, dict) or len(raw) != 1:
        check.error(
            p + "owner",
            'use "patient", { practitioner = "Practitioner/<id>" }, { role = "<role>" } '
            f'or {{ group = "Group/<id>" }}, got {raw!r}',
            key="owner",
            **t,
        )
        return None
    ((kind, value),) = raw.items()
    if kind not in ("practitioner", "role", "group") or not isinstance(value, str):
        check.error(p + "owner", f"unknown owner kind {kind!r} (use practitioner, role or group)", key="owner", **t)
        return None
    if kind == "role" and value not in settings.roles:
        check.error(
            p + "owner.role",
            f"unknown role {value!r} (roles in the config: {', '.join(sorted(settings.roles))})",
            key="owner",
            **t,
        )
        return None
    if kind in _REF and not _REF[kind].match(value):
        check.error(
            p + f"owner.{kind}",
            f"expected a reference like {_EXAMPLE_REF[kind]}, got {value!r}",
            key="owner",
            **t,
        )
        return None
    return m.Owner(kind, value)


def _parse_recurring(check: Checker, raw: object, p: str, t: dict) -> m.Recurring | None:
    if raw is None:
        return None
    field = p + "recurring"
    if not isinstance(raw, dict):
        check.error(field, 'expected a table like { every = "weekly", count = 12 }', key="recurring", **t)
        return None
    before = len(check.errors)
    check.unknown_keys(raw, {"every", "cron", "count", "until"}, field + ".", **t)
    every = check.get(raw, "every", str, field=field + ".every", line_key="recurring", **t)
    cron = check.get(raw, "cron", str, field=field + ".cron", line_key="recurring", **t)
    count = check.get(raw, "count", int, field=field + ".count", line_key="recurring", **t)
    until_raw = check.get(raw, "until", (date, str), field=field + ".until", line_key="recurring", **t)
    if (every is None) == (cron is None):
        check.error(field, "give exactly one of `every` (daily, weekly, monthly) or `cron`", key="recurring", **t)
    if every is not None and every not in m.RECUR_EVERY:
        check.error(field + ".every", f"must be daily, weekly or monthly, got {every!r}", key="recurring", **t)
    if cron is not None:
        from croniter import croniter

        if not croniter.is_valid(cron):
            check.error(field + ".cron", f"not a valid cron expression: {cron!r}", key="recurring", **t)
    if count is None and until_raw is None:
        check.error(field, "needs an end: `count` (number of occurrences) or `until` (a date)", key="recurring", **t)
    if count is not None and count < 1:
        check.error(field + ".count", f"must be at least 1, got {count}", key="recurring", **t)
    until = None
    if isinstance(until_raw, str):
        try:
            until = date.fromisoformat(until_raw)
        except ValueError:
            check.error(field + ".until", f"expected a date like 2026-12-31, got {until_raw!r}", key="recurring", **t)
    elif isinstance(until_raw, date):
        until = until_raw
    if len(check.errors) > before:
        return None
    return m.Recurring(every, cron, count, until)


def _duplicate_automation(flows: dict[str, Flow], sources: list[SourceFile]) -> list[LoadError]:
    """Two enabled flows doing the same item on the same trigger under the same condition."""
    errors: list[LoadError] = []
    seen: dict[tuple[str, str, str, str], Flow] = {}
    by_path = {s.path: s for s in sources}
    for flow in sorted(flows.values(), key=lambda f: (f.file, f.id)):
        if not flow.enabled:
            continue
        for action in flow.actions:
            key = (flow.trigger, (flow.condition or "").strip(), action.type, action.item)
            other = seen.get(key)
            if other is not None and other.id != flow.id:
                source = by_path.get(flow.file)
                line = source.line_of("item", "actions", action.index) if source else None
                errors.append(
                    LoadError(
                        flow.file,
                        f"actions[{action.index + 1}].item",
                        f"duplicate automation: flow {other.id!r} ({other.file}) already does {action.type} "
                        f"{action.item!r} on {flow.trigger!r} with the same condition; disable one of them",
                        line,
                    )
                )
            else:
                seen.setdefault(key, flow)
    return errors
