"""The flow editor's fields ↔ the flow TOML file, both ways.

``FlowForm`` holds exactly what a flow file can say (docs/flows.md), as the strings and flags an HTML form
posts. ``form_from_text`` reads a file into it; ``write_flow`` writes it back with tomlkit into the file's
own text, touching only the keys whose value changed, so comments and layout of everything else stay.
Nothing here checks the values: the text is handed to the same loader ``validate`` uses, and its field
names (``actions[2].due.amount``) are mapped back onto the inputs with ``input_for``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table

from fhir_smartflow.engine.parse_flows import NOT_AFTER

OWNER_KINDS = ("", "patient", "practitioner", "role", "group")  # "": nobody named
RECURRING_KINDS = ("", "daily", "weekly", "monthly", "cron")
OVERDUE_CHOICES = ("", "mark", "notify")  # nothing / mark it overdue / mark it and tell the owner

# Key order of a new file (the order of docs/flows.md).
_FLOW_ORDER = ("id", "name", "description", "enabled", "version", "trigger", "condition", "not_after")
_ACTION_ORDER = (
    "name",
    "category",
    "type",
    "item",
    "form_title",
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
)
# What the loader assumes for a missing key: a key set to its default is left as written.
_FLOW_DEFAULTS: dict[str, Any] = {"enabled": True, "version": "1", "description": ""}
_ACTION_DEFAULTS: dict[str, Any] = {"weekend": "keep", "completes_workflow": False, "notify_on_failure": False}
_DUE_DEFAULTS = {"direction": "after", "anchor": "event"}


@dataclass
class ActionForm:
    name: str = ""
    type: str = "send-form"
    item: str = ""
    form_title: str = ""
    template: str = ""
    methods: list[str] = field(default_factory=list)
    methods_given: bool = False  # methods named (else the template's are used)
    due_amount: str = ""  # empty: no due date
    due_unit: str = "days"
    due_direction: str = "after"
    due_anchor: str = "event"
    weekend: str = "keep"
    owner_kind: str = ""
    owner_value: str = ""
    reminder_amount: str = ""  # empty: no reminder
    reminder_unit: str = "days"
    recurring: str = ""
    recurring_cron: str = ""
    recurring_count: str = ""
    recurring_until: str = ""
    completes_workflow: bool = False
    overdue: str = ""
    notify_on_failure: bool = False
    origin: int | None = None  # index of the [[actions]] table it was read from


@dataclass
class FlowForm:
    id: str = ""
    name: str = ""
    description: str = ""
    enabled: bool = True
    version: str = "1"
    trigger: str = ""
    condition: str = ""
    not_after_discharge: bool = False
    actions: list[ActionForm] = field(default_factory=list)


# --- file -> form ---------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _action_from_data(raw: Mapping[str, Any], index: int) -> ActionForm:
    a = ActionForm(origin=index)
    a.name = _text(raw.get("name"))
    a.type = _text(raw.get("type"))
    a.item = _text(raw.get("item"))
    a.form_title = _text(raw.get("form_title"))
    a.template = _text(raw.get("template"))
    methods = raw.get("methods")
    a.methods_given = methods is not None
    a.methods = [_text(x) for x in methods] if isinstance(methods, list) else []
    due = raw.get("due")
    if isinstance(due, dict):
        a.due_amount = _text(due.get("amount"))
        a.due_unit = _text(due.get("unit", "days"))
        a.due_direction = _text(due.get("direction", "after"))
        a.due_anchor = _text(due.get("anchor", "event"))
    a.weekend = _text(raw.get("weekend", "keep"))
    owner = raw.get("owner")
    if owner == "patient":
        a.owner_kind = "patient"
    elif isinstance(owner, dict) and len(owner) == 1:
        ((kind, value),) = owner.items()
        a.owner_kind, a.owner_value = _text(kind), _text(value)
    reminder = raw.get("reminder")
    if isinstance(reminder, dict):
        a.reminder_amount = _text(reminder.get("amount"))
        a.reminder_unit = _text(reminder.get("unit", "days"))
    recurring = raw.get("recurring")
    if isinstance(recurring, dict):
        a.recurring = "cron" if "cron" in recurring else _text(recurring.get("every"))
        a.recurring_cron = _text(recurring.get("cron"))
        a.recurring_count = _text(recurring.get("count"))
        a.recurring_until = _text(recurring.get("until"))
    a.completes_workflow = raw.get("completes_workflow") is True
    overdue = raw.get("overdue")
    if isinstance(overdue, dict):
        a.overdue = "notify" if overdue.get("notify_owner") is True else "mark"
    a.notify_on_failure = raw.get("notify_on_failure") is True
    return a


def form_from_data(data: Mapping[str, Any]) -> FlowForm:
    actions = data.get("actions")
    return FlowForm(
        id=_text(data.get("id")),
        name=_text(data.get("name")),
        description=_text(data.get("description")),
        enabled=data.get("enabled", True) is not False,
        version=_text(data.get("version", "1")),
        trigger=_text(data.get("trigger")),
        condition=_text(data.get("condition")),
        not_after_discharge=data.get("not_after") in NOT_AFTER,
        actions=[_action_from_data(raw, i) for i, raw in enumerate(actions or []) if isinstance(raw, dict)],
    )


def form_from_text(text: str) -> FlowForm:
    """The form of a flow file (raises tomllib.TOMLDecodeError when it is not TOML)."""
    return form_from_data(tomllib.loads(text))


# --- posted fields -> form ------------------------------------------------------------------------------------


def action_input(index: int, name: str) -> str:
    """The HTML input name of an action's field (``actions-0-due_amount``)."""
    return f"actions-{index}-{name}"


def form_from_post(fields: Any) -> FlowForm:
    """The form from posted fields (a werkzeug MultiDict: ``get`` and ``getlist``)."""

    def get(name: str) -> str:
        return (fields.get(name) or "").strip()

    def flag(name: str) -> bool:
        return fields.get(name) in ("on", "true", "1", "yes")

    form = FlowForm(
        id=get("id"),
        name=get("name"),
        description=get("description"),
        enabled=flag("enabled"),
        version=get("version") or "1",
        trigger=get("trigger"),
        condition=get("condition"),
        not_after_discharge=flag("not_after"),
    )
    try:
        count = int(fields.get("action_count") or 0)
    except ValueError:
        count = 0
    for i in range(min(count, 100)):

        def aget(name: str, i: int = i) -> str:
            return get(action_input(i, name))

        if flag(action_input(i, "remove")):
            continue
        origin = aget("origin")
        methods = [m.strip() for m in fields.getlist(action_input(i, "methods")) if m.strip()]
        form.actions.append(
            ActionForm(
                name=aget("name"),
                type=aget("type"),
                item=aget("item"),
                form_title=aget("form_title"),
                template=aget("template"),
                methods=methods,
                methods_given=bool(methods),
                due_amount=aget("due_amount"),
                due_unit=aget("due_unit") or "days",
                due_direction=aget("due_direction") or "after",
                due_anchor=aget("due_anchor") or "event",
                weekend=aget("weekend") or "keep",
                owner_kind=aget("owner_kind"),
                owner_value=aget("owner_value"),
                reminder_amount=aget("reminder_amount"),
                reminder_unit=aget("reminder_unit") or "days",
                recurring=aget("recurring"),
                recurring_cron=aget("recurring_cron"),
                recurring_count=aget("recurring_count"),
                recurring_until=aget("recurring_until"),
                completes_workflow=flag(action_input(i, "completes_workflow")),
                overdue=aget("overdue"),
                notify_on_failure=flag(action_input(i, "notify_on_failure")),
                origin=int(origin) if origin.isdigit() else None,
            )
        )
    return form


# --- form -> values -> file -----------------------------------------------------------------------------------


def _number(text: str) -> int | str:
    """An integer when the text is one; else the text itself, so the loader names the field that is wrong."""
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def _day(text: str) -> date | str:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return text


def flow_values(form: FlowForm) -> dict[str, Any]:
    """The flow's top-level keys as plain values (None: the key is absent)."""
    return {
        "id": form.id,
        "name": form.name,
        "description": form.description or None,
        "enabled": form.enabled,
        "version": form.version or "1",
        "trigger": form.trigger,
        "condition": form.condition or None,
        "not_after": NOT_AFTER[0] if form.not_after_discharge else None,
    }


def action_values(a: ActionForm) -> dict[str, Any]:
    """One action's keys as plain values (None: the key is absent)."""
    owner: Any = None
    if a.owner_kind == "patient":
        owner = "patient"
    elif a.owner_kind:
        owner = {a.owner_kind: a.owner_value}
    recurring: dict[str, Any] | None = None
    if a.recurring:
        recurring = {"cron": a.recurring_cron} if a.recurring == "cron" else {"every": a.recurring}
        if a.recurring_count:
            recurring["count"] = _number(a.recurring_count)
        if a.recurring_until:
            recurring["until"] = _day(a.recurring_until)
    due = None
    if a.due_amount:
        due = {"amount": _number(a.due_amount), "unit": a.due_unit, "direction": a.due_direction}
        due["anchor"] = a.due_anchor
    return {
        "name": a.name,
        "category": "smartflow",
        "type": a.type,
        "item": a.item,
        "form_title": a.form_title or None,
        "template": a.template or None,
        "methods": list(a.methods) if a.methods_given else None,
        "due": due,
        "weekend": a.weekend or "keep",
        "owner": owner,
        "reminder": {"amount": _number(a.reminder_amount), "unit": a.reminder_unit} if a.reminder_amount else None,
        "recurring": recurring,
        "completes_workflow": a.completes_workflow,
        "overdue": None if not a.overdue else {"notify_owner": a.overdue == "notify"},
        "notify_on_failure": a.notify_on_failure,
    }


def _same(key: str, old: Any, new: Any, defaults: Mapping[str, Any]) -> bool:
    """Whether the written value ``old`` says what ``new`` says (defaults filled in on both sides)."""
    if key == "due" and isinstance(old, dict) and isinstance(new, dict):
        return {**_DUE_DEFAULTS, **old} == {**_DUE_DEFAULTS, **new}
    if new is None:
        return old is None or (key in defaults and old == defaults[key])
    if key == "version":
        return str(old) == str(new)
    return old == new


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_inline(v)}" for k, v in value.items()) + " }"
    return tomlkit.item(value).as_string()


def _item(value: Any) -> Any:
    """A tomlkit item for a plain value; tables inline and spaced like the shipped examples
    (``due = { amount = 3, unit = "days" }``)."""
    if isinstance(value, dict):
        return tomlkit.parse(f"v = {_inline(value)}\n")["v"]
    if isinstance(value, list):
        array = tomlkit.array()
        array.extend(value)
        return array
    return value


def _update(table: Any, values: Mapping[str, Any], order: tuple[str, ...], defaults: Mapping[str, Any]) -> None:
    """Set in ``table`` (a tomlkit container) every key whose value changed; remove those now absent."""
    current = table.unwrap() if hasattr(table, "unwrap") else dict(table)
    for key in order:
        new = values.get(key)
        old = current.get(key)
        if _same(key, old, new, defaults):
            continue
        if new is None or (key in defaults and new == defaults[key] and old is None):
            if key in table:
                del table[key]
            continue
        table[key] = _item(new)


def _new_action_table(values: Mapping[str, Any]) -> Table:
    table = tomlkit.table()
    _update(table, values, _ACTION_ORDER, _ACTION_DEFAULTS)
    return table


def write_flow(form: FlowForm, original: str | None = None) -> str:
    """The flow file for ``form``: ``original`` (the file as it is) with only what changed rewritten, or a new
    file. Actions are matched to their tables by ``origin``; removed ones are deleted, new ones appended."""
    doc = tomlkit.parse(original) if original else tomlkit.document()
    values = flow_values(form)
    if not original:
        for key in _FLOW_ORDER:
            if values[key] is not None:
                doc[key] = _item(values[key])
    else:
        _update(doc, values, _FLOW_ORDER, _FLOW_DEFAULTS)
    old_actions = doc.get("actions")
    tables: list[Any] = list(old_actions.body) if isinstance(old_actions, AoT) else []
    kept = {a.origin for a in form.actions if a.origin is not None and a.origin < len(tables)}
    if isinstance(old_actions, AoT):
        for index in sorted(set(range(len(tables))) - kept, reverse=True):
            del old_actions[index]
        survivors = [tables[i] for i in sorted(kept)]
    else:
        survivors = []
    new_tables: list[Table] = []
    for action in form.actions:
        values_a = action_values(action)
        if action.origin is not None and action.origin in kept and survivors:
            _update(survivors.pop(0), values_a, _ACTION_ORDER, _ACTION_DEFAULTS)
        else:
            new_tables.append(_new_action_table(values_a))
    if new_tables:
        if isinstance(old_actions, AoT):
            for table in new_tables:
                old_actions.append(table)
        else:
            doc.add(tomlkit.nl())
            doc["actions"] = tomlkit.aot()
            for table in new_tables:
                doc["actions"].append(table)
    elif isinstance(old_actions, AoT) and not form.actions:
        del doc["actions"]
    return tomlkit.dumps(doc)


# --- loader field names -> inputs -----------------------------------------------------------------------------

# An action's loader field (after ``actions[N].``) -> its input.
_ACTION_INPUTS: dict[str, str] = {
    "due": "due_amount",
    "due.amount": "due_amount",
    "due.unit": "due_unit",
    "due.direction": "due_direction",
    "due.anchor": "due_anchor",
    "owner": "owner_kind",
    "reminder": "reminder_amount",
    "reminder.amount": "reminder_amount",
    "reminder.unit": "reminder_unit",
    "recurring": "recurring",
    "recurring.every": "recurring",
    "recurring.cron": "recurring_cron",
    "recurring.count": "recurring_count",
    "recurring.until": "recurring_until",
    "overdue": "overdue",
    "overdue.notify_owner": "overdue",
}
_FLOW_INPUTS = {"not_after": "not_after", "actions": "actions"}
_ACTION_FIELD = re.compile(r"^actions\[(\d+)\](?:\.(.+))?$")


def input_for(loader_field: str, form: FlowForm | None = None) -> str | None:
    """The input a loader error is about (``actions[2].due.amount`` -> ``actions-1-due_amount``), or None when it
    is about the file as a whole. Action numbers count the actions of the written file, as the form does."""
    match = _ACTION_FIELD.match(loader_field)
    if match:
        index = int(match.group(1)) - 1
        rest = match.group(2) or "name"
        if rest.startswith("owner."):
            return action_input(index, "owner_value")
        if rest in _ACTION_INPUTS:
            return action_input(index, _ACTION_INPUTS[rest])
        if rest.split(".")[0] in _ACTION_ORDER:
            return action_input(index, rest.split(".")[0])
        return action_input(index, "name")
    if loader_field in _FLOW_INPUTS:
        return _FLOW_INPUTS[loader_field]
    if loader_field in _FLOW_ORDER:
        return loader_field
    return None


def errors_by_input(errors: list[Any], form: FlowForm | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """Loader errors (``field``, ``reason``) grouped by input; those about no input are returned apart."""
    found: dict[str, list[str]] = {}
    general: list[str] = []
    for error in errors:
        name = input_for(error.field, form)
        if name is None:
            general.append(f"{error.field}: {error.reason}")
        else:
            found.setdefault(name, []).append(error.reason)
    return found, general


# --- templates ------------------------------------------------------------------------------------------------

_TEMPLATE_ORDER = ("id", "name", "status", "methods", "subject", "body", "note_type")
_TEMPLATE_DEFAULTS: dict[str, Any] = {"status": "enabled"}
_LISTS = {"prompt": ("roles", "practitioners"), "recipients": ("practitioners", "groups", "roles")}


@dataclass
class TemplateForm:
    id: str = ""
    name: str = ""
    status: str = "enabled"
    methods: list[str] = field(default_factory=list)
    subject: str = ""
    body: str = ""
    note_type: str = ""
    prompt_text: str = ""
    prompt_roles: str = ""  # comma-separated
    prompt_practitioners: str = ""
    recipients_practitioners: str = ""
    recipients_groups: str = ""
    recipients_roles: str = ""


def _joined(value: Any) -> str:
    return ", ".join(str(x) for x in value) if isinstance(value, list) else _text(value)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def template_form_from_text(text: str) -> TemplateForm:
    data = tomllib.loads(text)
    prompt = data.get("prompt") if isinstance(data.get("prompt"), dict) else {}
    recipients = data.get("recipients") if isinstance(data.get("recipients"), dict) else {}
    methods = data.get("methods")
    return TemplateForm(
        id=_text(data.get("id")),
        name=_text(data.get("name")),
        status=_text(data.get("status", "enabled")),
        methods=[_text(m) for m in methods] if isinstance(methods, list) else [],
        subject=_text(data.get("subject")),
        body=_text(data.get("body")),
        note_type=_text(data.get("note_type")),
        prompt_text=_text(prompt.get("text")),
        prompt_roles=_joined(prompt.get("roles", [])),
        prompt_practitioners=_joined(prompt.get("practitioners", [])),
        recipients_practitioners=_joined(recipients.get("practitioners", [])),
        recipients_groups=_joined(recipients.get("groups", [])),
        recipients_roles=_joined(recipients.get("roles", [])),
    )


def template_form_from_post(fields: Any) -> TemplateForm:
    def get(name: str) -> str:
        return (fields.get(name) or "").replace("\r\n", "\n").strip()

    return TemplateForm(
        id=get("id"),
        name=get("name"),
        status=get("status") or "enabled",
        methods=[m for m in fields.getlist("methods") if m],
        subject=get("subject"),
        body=get("body"),
        note_type=get("note_type"),
        prompt_text=get("prompt_text"),
        prompt_roles=get("prompt_roles"),
        prompt_practitioners=get("prompt_practitioners"),
        recipients_practitioners=get("recipients_practitioners"),
        recipients_groups=get("recipients_groups"),
        recipients_roles=get("recipients_roles"),
    )


def _body_item(text: str) -> Any:
    """A body as the shipped templates write it: a multi-line basic string."""
    if "\n" in text or '"' in text:
        return tomlkit.string(text, multiline=True)
    return text


def write_template(form: TemplateForm, original: str | None = None) -> str:
    """The template file for ``form``: only what changed rewritten in ``original``, or a new file."""
    doc = tomlkit.parse(original) if original else tomlkit.document()
    current = doc.unwrap()
    values: dict[str, Any] = {
        "id": form.id,
        "name": form.name,
        "status": form.status,
        "methods": list(form.methods) or ([] if current.get("methods") == [] else None),
        "subject": form.subject or None,
        "body": form.body or None,
        "note_type": form.note_type or None,
    }
    for key in _TEMPLATE_ORDER:
        new, old = values[key], current.get(key)
        if _same(key, old, new, _TEMPLATE_DEFAULTS):
            continue
        if new is None or (new == _TEMPLATE_DEFAULTS.get(key) and old is None):
            if key in doc:
                del doc[key]
        else:
            doc[key] = _body_item(new) if key in ("body", "subject") else _item(new)
    tables = {
        "prompt": {
            "text": form.prompt_text or None,
            **{k: _split(list_field(form, "prompt", k)) for k in _LISTS["prompt"]},
        },
        "recipients": {k: _split(list_field(form, "recipients", k)) for k in _LISTS["recipients"]},
    }
    for table_name, wanted in tables.items():
        wanted = {k: v for k, v in wanted.items() if v}
        old_table = current.get(table_name)
        if not wanted:
            if table_name in doc:
                del doc[table_name]
            continue
        if old_table == wanted:
            continue
        if table_name not in doc:
            doc[table_name] = tomlkit.table()
        table = doc[table_name]
        for key in list(table.keys()):
            if key not in wanted:
                del table[key]
        for key, value in wanted.items():
            if (old_table or {}).get(key) != value:
                table[key] = _item(value)
    return tomlkit.dumps(doc)


def list_field(form: TemplateForm, table: str, key: str) -> str:
    """The comma-separated field of ``[table] key`` (``prompt_roles``, ``recipients_groups``, ...)."""
    return {
        ("prompt", "roles"): form.prompt_roles,
        ("prompt", "practitioners"): form.prompt_practitioners,
        ("recipients", "practitioners"): form.recipients_practitioners,
        ("recipients", "groups"): form.recipients_groups,
        ("recipients", "roles"): form.recipients_roles,
    }[(table, key)]
