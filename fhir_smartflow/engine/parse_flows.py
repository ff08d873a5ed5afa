"""Parse and check `flows/**/*.toml`: flows, actions, owners, durations, recurrences."""

from __future__ import annotations

from datetime import date

from fhir_smartflow.config import Settings
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.checks import EXAMPLE_REF, ID, REF, compile_into
from fhir_smartflow.engine.model import Flow, Template
from fhir_smartflow.engine.tomlfiles import Checker, LoadError, SourceFile, slugify

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
_NEEDS_TEMPLATE = {"patient-message", "staff-message", "notify", "patient-note", "record-prompt"}
_RESERVED_FLOW_PREFIX = "lifecycle-"


def parse_flow(
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
    if fid and not ID.match(fid):
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
        compile_into(check, paths, condition, "condition", "condition")
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
    if notify_on_failure and ("owner" not in raw or (owner is not None and owner.kind == "patient")):
        check.error(
            p + "notify_on_failure",
            "a failed delivery is told to the action's staff owner: add owner = { practitioner = ... }, "
            "{ role = ... } or { group = ... }",
            key="notify_on_failure",
            **t,
        )
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
    if kind in REF and not REF[kind].match(value):
        check.error(
            p + f"owner.{kind}",
            f"expected a reference like {EXAMPLE_REF[kind]}, got {value!r}",
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

