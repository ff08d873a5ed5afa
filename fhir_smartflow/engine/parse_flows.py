"""Parse and check `flows/**/*.toml`: flows, actions, owners, durations, recurrences.

An action is read by one parser per key (``ACTION_FIELDS``), then checked by its type's spec (action_types.py):
what a type requires, allows or defaults is asked of the spec, never written here per type name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_smartflow.channels import ChannelSpec
from fhir_smartflow.config import Settings
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.action_types import ACTION_TYPES, ActionType, task_types
from fhir_smartflow.engine.checks import EXAMPLE_REF, REF, checked_id, compile_into
from fhir_smartflow.engine.model import Flow, Template
from fhir_smartflow.engine.references import target_type_problem
from fhir_smartflow.engine.tomlfiles import Checker, LoadError, SourceFile, slugify

# The keys of each table (the JSON Schema, engine/schema.py, is generated from these too).
FLOW_KEYS = {"id", "name", "description", "enabled", "version", "trigger", "condition", "not_after", "actions"}
DUE_KEYS = {"amount", "unit", "direction", "anchor"}
REMINDER_KEYS = {"amount", "unit"}
OVERDUE_KEYS = {"notify_owner"}
RECURRING_KEYS = {"every", "cron", "count", "until"}
NOT_AFTER = ("patient.discharged",)
_RESERVED_FLOW_PREFIX = "lifecycle-"


def parse_flow(
    source: SourceFile,
    settings: Settings,
    paths: dict[str, m.Compiled],
    templates: dict[str, Template],
    known_triggers: set[str],
    channels: Mapping[str, ChannelSpec],
) -> tuple[Flow | None, list[LoadError]]:
    check = Checker(source)
    data = source.data
    check.unknown_keys(data, FLOW_KEYS)
    fid = checked_id(check, data)
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
    if not_after is not None and not_after not in NOT_AFTER:
        check.error("not_after", f"only 'patient.discharged' is supported, got {not_after!r}")
    raw_actions = check.get(data, "actions", list, required=True, default=[])
    if "actions" in data and not raw_actions:
        check.error("actions", "a flow needs at least one [[actions]] entry")
    actions: list[m.Action] = []
    slugs: set[str] = set()
    for i, raw in enumerate(raw_actions):
        action = _parse_action(check, raw, i, settings, templates, channels)
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


@dataclass
class _Entry:
    """One ``[[actions]]`` table while it is read: the field parsers fill it, then its type's spec checks it."""

    raw: dict[str, Any]
    index: int
    name: str | None = None
    spec: ActionType | None = None
    item: str | None = None
    template_id: str | None = None
    template: Template | None = None
    methods: tuple[str, ...] = ()
    due: m.Due | None = None
    weekend: str = "keep"
    owner: m.Owner | None = None
    reminder: m.Duration | None = None
    recurring: m.Recurring | None = None
    completes: bool = False
    overdue: m.Overdue | None = None
    notify_on_failure: bool = False
    form_title: str = ""

    @property
    def p(self) -> str:  # the field prefix of its errors
        return f"actions[{self.index + 1}]."

    @property
    def t(self) -> dict[str, Any]:  # where its lines are looked up
        return {"table": "actions", "index": self.index}

    @property
    def staff_owned(self) -> bool:
        return "owner" in self.raw and not (self.owner is not None and self.owner.kind == "patient")


@dataclass(frozen=True)
class _Context:
    check: Checker
    settings: Settings
    templates: dict[str, Template]
    channels: Mapping[str, ChannelSpec]


def _name(c: _Context, e: _Entry) -> None:
    e.name = c.check.get(e.raw, "name", str, field=e.p + "name", required=True, **e.t)


def _category(c: _Context, e: _Entry) -> None:
    category = c.check.get(e.raw, "category", str, field=e.p + "category", required=True, **e.t)
    if category is not None and category != "smartflow":
        c.check.error(e.p + "category", f"must be 'smartflow', got {category!r}", key="category", **e.t)


def _type(c: _Context, e: _Entry) -> None:
    atype = c.check.get(e.raw, "type", str, field=e.p + "type", required=True, **e.t)
    if atype is not None and atype not in ACTION_TYPES:
        known = ", ".join(ACTION_TYPES)
        c.check.error(e.p + "type", f"unknown action type {atype!r} (use {known})", key="type", **e.t)
    e.spec = ACTION_TYPES.get(atype) if atype is not None else None


def _item(c: _Context, e: _Entry) -> None:
    e.item = c.check.get(e.raw, "item", str, field=e.p + "item", required=True, **e.t)


def _form_title(c: _Context, e: _Entry) -> None:
    """The form's title for the messages, so a server without Questionnaire (OpenEMR 7.0.0) is not asked."""
    title = c.check.get(e.raw, "form_title", str, field=e.p + "form_title", **e.t)
    if title is not None:
        if e.spec is not None and not e.spec.form:
            c.check.error(e.p + "form_title", "only a send-form action has a form", key="form_title", **e.t)
        e.form_title = title.strip()


def _template(c: _Context, e: _Entry) -> None:
    e.template_id = c.check.get(e.raw, "template", str, field=e.p + "template", **e.t)
    if e.template_id is None:
        return
    template = c.templates.get(e.template_id)
    if template is None:
        c.check.error(e.p + "template", f"unknown template {e.template_id!r}", key="template", **e.t)
    elif not template.enabled:
        c.check.error(
            e.p + "template",
            f"template {e.template_id!r} is disabled ({template.file}); enable it or choose another",
            key="template",
            **e.t,
        )
    else:
        e.template = template


def _methods(c: _Context, e: _Entry) -> None:
    e.methods = c.check.string_list(e.raw, "methods", field=e.p + "methods", **e.t)


def _due(c: _Context, e: _Entry) -> None:
    raw_due = e.raw.get("due")
    if raw_due is None:
        return
    values = _duration(c.check, raw_due, e.p + "due", "due", e.index, DUE_KEYS)
    if values is None:
        return
    direction = values.get("direction", "after")
    anchor = values.get("anchor", "event")
    if direction not in m.DIRECTIONS:
        c.check.error(e.p + "due.direction", f"must be 'after' or 'before', got {direction!r}", key="due", **e.t)
    if anchor not in m.ANCHORS:
        c.check.error(e.p + "due.anchor", f"unknown anchor {anchor!r} (use {', '.join(m.ANCHORS)})", key="due", **e.t)
    e.due = m.Due(values["amount"], values["unit"], str(direction), str(anchor))


def _weekend(c: _Context, e: _Entry) -> None:
    e.weekend = c.check.get(e.raw, "weekend", str, field=e.p + "weekend", default="keep", **e.t)
    if e.weekend not in m.WEEKEND_POLICIES:
        c.check.error(
            e.p + "weekend",
            f"must be one of {', '.join(m.WEEKEND_POLICIES)}, got {e.weekend!r}",
            key="weekend",
            **e.t,
        )


def _owner(c: _Context, e: _Entry) -> None:
    e.owner = _parse_owner(c.check, e.raw.get("owner"), e.p, c.settings, e.t)
    if e.owner is not None and e.owner.kind in REF and e.spec is not None and e.spec.makes_task:
        # The owner becomes Task.owner: R4 allows only some types there (Group is not one of them).
        problem = target_type_problem("Task", "owner", e.owner.value)
        if problem:
            kinds = '{ group = "CareTeam/<id>" }, { practitioner = "Practitioner/<id>" } or { role = "<role>" }'
            c.check.error(e.p + f"owner.{e.owner.kind}", f"{problem}; use {kinds}", key="owner", **e.t)
            e.owner = None


def _reminder(c: _Context, e: _Entry) -> None:
    if "reminder" not in e.raw:
        return
    values = _duration(c.check, e.raw["reminder"], e.p + "reminder", "reminder", e.index, REMINDER_KEYS)
    e.reminder = m.Duration(values["amount"], values["unit"]) if values else None
    if e.due is None and e.raw.get("due") is None:
        c.check.error(e.p + "reminder", "a reminder is relative to the due date: add `due`", key="reminder", **e.t)


def _recurring(c: _Context, e: _Entry) -> None:
    e.recurring = _parse_recurring(c.check, e.raw.get("recurring"), e.p, e.t)


def _completes(c: _Context, e: _Entry) -> None:
    field = e.p + "completes_workflow"
    e.completes = c.check.get(e.raw, "completes_workflow", bool, field=field, default=False, **e.t)


def _overdue(c: _Context, e: _Entry) -> None:
    raw_overdue = c.check.get(e.raw, "overdue", dict, field=e.p + "overdue", **e.t)
    if raw_overdue is None:
        return
    c.check.unknown_keys(raw_overdue, OVERDUE_KEYS, e.p + "overdue.", **e.t)
    field = e.p + "overdue.notify_owner"
    notify = c.check.get(raw_overdue, "notify_owner", bool, field=field, default=False, line_key="overdue", **e.t)
    e.overdue = m.Overdue(notify)
    if e.raw.get("due") is None:
        c.check.error(e.p + "overdue", "overdue needs a due date: add `due`", key="overdue", **e.t)


def _notify_on_failure(c: _Context, e: _Entry) -> None:
    field = e.p + "notify_on_failure"
    e.notify_on_failure = c.check.get(e.raw, "notify_on_failure", bool, field=field, default=False, **e.t)
    if e.notify_on_failure and not e.staff_owned:
        c.check.error(
            field,
            "a failed delivery is told to the action's staff owner: add owner = { practitioner = ... }, "
            "{ role = ... } or { group = ... }",
            key="notify_on_failure",
            **e.t,
        )


# The keys of an action and their parsers, run in this order (later parsers see what earlier ones found).
ACTION_FIELDS: dict[str, Callable[[_Context, _Entry], None]] = {
    "name": _name,
    "category": _category,
    "type": _type,
    "item": _item,
    "form_title": _form_title,
    "template": _template,
    "methods": _methods,
    "due": _due,
    "weekend": _weekend,
    "owner": _owner,
    "reminder": _reminder,
    "recurring": _recurring,
    "completes_workflow": _completes,
    "overdue": _overdue,
    "notify_on_failure": _notify_on_failure,
}


def _parse_action(
    check: Checker,
    raw: object,
    i: int,
    settings: Settings,
    templates: dict[str, Template],
    channels: Mapping[str, ChannelSpec],
) -> m.Action | None:
    before = len(check.errors)
    if not isinstance(raw, dict):
        check.error(f"actions[{i + 1}]", "expected a table", table="actions", index=i)
        return None
    entry = _Entry(raw, i)
    check.unknown_keys(raw, ACTION_FIELDS, entry.p, **entry.t)
    context = _Context(check, settings, templates, channels)
    for parse in ACTION_FIELDS.values():
        parse(context, entry)
    if entry.spec is not None:
        _check_type(context, entry, entry.spec)
    if len(check.errors) > before or not (entry.name and entry.spec and entry.item):
        return None
    return m.Action(
        index=i,
        name=entry.name,
        slug=slugify(entry.name),
        type=entry.spec.name,
        item=entry.item,
        category="smartflow",
        template=entry.template_id,
        methods=entry.methods,
        due=entry.due,
        weekend=entry.weekend,
        owner=entry.owner,
        reminder=entry.reminder,
        recurring=entry.recurring,
        completes_workflow=entry.completes,
        overdue=entry.overdue,
        notify_on_failure=entry.notify_on_failure,
        form_title=entry.form_title,
    )


def _check_type(c: _Context, e: _Entry, spec: ActionType) -> None:
    """What the action's type requires of the fields."""
    problem = spec.item_problem(e.item) if e.item else None
    if problem:
        c.check.error(e.p + "item", problem, key="item", **e.t)
    if spec.needs_template and e.template_id is None:
        c.check.error(e.p + "template", f"required for a {spec.name} action", key="template", **e.t)
    problem = spec.template_problem(e.template) if e.template is not None else None
    if problem:
        c.check.error(e.p + "template", problem, key="template", **e.t)
    e.methods = _check_methods(c, e, spec)
    if spec.needs_staff_owner and not e.staff_owned:
        c.check.error(
            e.p + "owner",
            f"a {spec.name} needs an owner: {{ practitioner = ... }}, {{ role = ... }} or {{ group = ... }}",
            key="owner" if "owner" in e.raw else "type",
            **e.t,
        )
    if (e.completes or e.recurring or e.reminder or e.overdue) and not spec.makes_task:
        tasks = task_types()
        c.check.error(
            e.p + "type",
            "reminders, recurrences, overdue and completes_workflow need a task "
            f"({', '.join(tasks[:-1])} or {tasks[-1]})",
            key="type",
            **e.t,
        )


def _check_methods(c: _Context, e: _Entry, spec: ActionType) -> tuple[str, ...]:
    """The methods named (or, when none are, the template's that the type allows, else its default),
    each checked against the loaded channels and what the type may use."""
    allowed = spec.allowed_methods(c.channels)
    template, methods, given = e.template, e.methods, "methods" in e.raw
    p, t = e.p, e.t
    if not given:
        if template is not None and template.methods:
            methods = tuple(x for x in template.methods if x in allowed)
        elif spec.default_method in allowed:
            methods = (spec.default_method,)
    for method in methods:
        if method not in c.channels:
            c.check.error(
                p + "methods",
                f"{method!r} cannot be used: there is no channel of that name "
                f"(known channels: {', '.join(c.channels)})",
                key="methods",
                **t,
            )
        elif method not in allowed:
            c.check.error(
                p + "methods",
                f"{method!r} cannot be used by a {spec.name} action (allowed: {', '.join(allowed) or 'none'})",
                key="methods",
                **t,
            )
        elif given and template is not None and template.methods and method not in template.methods:
            c.check.error(
                p + "methods",
                f"template {template.id!r} is not written for {method!r} (its methods: {', '.join(template.methods)})",
                key="methods",
                **t,
            )
    if methods and template is None and e.template_id is None and spec.audience is not None:
        c.check.error(p + "template", "sending a message needs a template", key="methods", **t)
    if spec.needs_method and not methods:
        c.check.error(p + "methods", f"a {spec.name} needs at least one method", key="methods", **t)
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
    check.unknown_keys(raw, RECURRING_KEYS, field + ".", **t)
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
