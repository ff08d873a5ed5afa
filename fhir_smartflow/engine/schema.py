"""JSON Schemas (draft-07) of flow, template and mapping files, for TOML editors (taplo, Even Better TOML).

Built from the loader's own definitions: the key sets each parser accepts (``FLOW_KEYS``, ``ACTION_FIELDS``,
``TEMPLATE_KEYS``, ``MAPPING_KEYS``, ...), the enumerations of the model (units, anchors, weekend policies,
note types, action types) and the id / reference / trigger patterns. Each key the loader reads is described
here once; a key the loader gains without a description here (or loses) makes ``schema`` raise, so the
schemas cannot drift. The loader stays the authority (it also checks what a schema cannot: templates
that exist, roles in the config, FHIRPath syntax).

Channel names (``methods``) come from the channel registry at run time, where plugins add their own, so
they are a pattern with the built-in names as examples, never a closed list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhir_smartflow.channels import BUILTIN_CHANNELS
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.checks import ID, REF
from fhir_smartflow.engine.parse_flows import (
    ACTION_FIELDS,
    DUE_KEYS,
    FLOW_KEYS,
    NOT_AFTER,
    OVERDUE_KEYS,
    RECURRING_KEYS,
    REMINDER_KEYS,
)
from fhir_smartflow.engine.parse_mappings import INTERACTIONS, MAPPING_KEYS, TRIGGER
from fhir_smartflow.engine.parse_templates import PROMPT_KEYS, RECIPIENTS_KEYS, STATUSES, TEMPLATE_KEYS
from fhir_smartflow.refs import RESOURCE_TYPE_RE

DRAFT = "http://json-schema.org/draft-07/schema#"
ID_BASE = "urn:fhir-smartflow:schema:"
KINDS = ("flow", "template", "mapping")
CHANNEL_NAME = "^[a-z0-9_-]+$"  # what [delivery] plugins allows a channel to be called

Schema = dict[str, Any]


def _text(description: str, **more: Any) -> Schema:
    return {"type": "string", "description": description, **more}


def _required_text(description: str, **more: Any) -> Schema:
    return _text(description, pattern=more.pop("pattern", r"\S"), **more)


def _flag(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def _enum(values: Iterable[str], description: str) -> Schema:
    return {"type": "string", "enum": list(values), "description": description}


def _list(items: Schema, description: str) -> Schema:
    return {"type": "array", "items": items, "description": description}


def _pattern(regex: Any) -> str:
    return str(regex.pattern)


def _table(properties: Mapping[str, Schema], keys: Iterable[str], where: str, **more: Any) -> Schema:
    """A closed table whose properties are exactly the loader's ``keys`` for it."""
    loader, described = set(keys), set(properties)
    if loader != described:
        raise ValueError(
            f"{where}: the loader reads {sorted(loader - described)} without a schema, "
            f"the schema describes {sorted(described - loader)} the loader does not read: describe each key in "
            "engine/schema.py, then `fhir-smartflow schema --out docs/schema`"
        )
    return {"type": "object", "additionalProperties": False, "properties": dict(properties), **more}


def _channels(description: str) -> Schema:
    channel = {"type": "string", "pattern": CHANNEL_NAME, "examples": list(BUILTIN_CHANNELS)}
    return _list(channel, f"{description} Built-in: {', '.join(BUILTIN_CHANNELS)}; plugins add their own.")


def _ref(kind: str, example: str) -> Schema:
    return _text(f"a reference like {example}", pattern=_pattern(REF[kind]))


def _duration(keys: Iterable[str], where: str, extra: Mapping[str, Schema] | None = None) -> Schema:
    properties = {
        "amount": {"type": "integer", "minimum": 0, "description": "how many units"},
        "unit": _enum(m.UNITS, "minutes, hours, days or weeks"),
        **(extra or {}),
    }
    return _table(properties, keys, where, required=["amount", "unit"])


def _owner() -> Schema:
    one = {
        "practitioner": _ref("practitioner", "Practitioner/123 or PractitionerRole/123"),
        "role": _text("a role name from [roles] in the config"),
        "group": _ref("group", "Group/intake-team or CareTeam/x"),
    }
    return {
        "description": 'who owns the Task: "patient", or one of { practitioner = ... }, { role = ... }, '
        "{ group = ... }",
        "oneOf": [
            {"const": "patient"},
            *(
                {"type": "object", "additionalProperties": False, "required": [k], "properties": {k: v}}
                for k, v in one.items()
            ),
        ],
    }


def _recurring() -> Schema:
    properties = {
        "every": _enum(m.RECUR_EVERY, "daily, weekly or monthly (or give cron)"),
        "cron": _text("a cron expression (or give every)"),
        "count": {"type": "integer", "minimum": 1, "description": "number of occurrences"},
        "until": _text("last date, e.g. 2026-12-31", format="date"),
    }
    return _table(
        properties,
        RECURRING_KEYS,
        "actions[].recurring",
        oneOf=[{"required": ["every"]}, {"required": ["cron"]}],  # exactly one of them
        anyOf=[{"required": ["count"]}, {"required": ["until"]}],
    )


def _action() -> Schema:
    properties = {
        "name": _required_text("the action's name, unique in the flow"),
        "category": {"const": "smartflow", "description": 'always "smartflow"'},
        "type": _enum(ACTION_TYPES, "what the action does"),
        "item": _required_text("what it is about: a Questionnaire canonical for send-form, else a short code"),
        "form_title": _text("send-form: the form's title in messages (then no Questionnaire is read)"),
        "template": _text("the id of the template it sends"),
        "methods": _channels("the channels it uses (default: the template's, else the type's)."),
        "due": _duration(
            DUE_KEYS,
            "actions[].due",
            {
                "direction": _enum(m.DIRECTIONS, "after (default) or before the anchor"),
                "anchor": _enum(m.ANCHORS, "what the due date counts from (default: event)"),
            },
        ),
        "weekend": _enum(m.WEEKEND_POLICIES, "what a due date on a weekend or holiday becomes (default: keep)"),
        "owner": _owner(),
        "reminder": _duration(REMINDER_KEYS, "actions[].reminder"),
        "recurring": _recurring(),
        "completes_workflow": _flag("completing this Task completes the flow"),
        "overdue": _table(
            {"notify_owner": _flag("tell the owner when the Task is overdue")}, OVERDUE_KEYS, "actions[].overdue"
        ),
        "notify_on_failure": _flag("tell the staff owner when a delivery fails"),
    }
    return _table(properties, ACTION_FIELDS, "actions[]", required=["name", "category", "type", "item"])


def flow_schema() -> Schema:
    properties = {
        "id": _required_text("lower-case letters, digits and '-'", pattern=_pattern(ID)),
        "name": _required_text("the flow's name"),
        "description": _text("what the flow is for"),
        "enabled": _flag("false: loaded and checked, but never run (default true)"),
        "version": {"type": ["string", "integer"], "description": "bump when the flow changes meaning"},
        "trigger": _required_text("the trigger a mapping produces, e.g. patient.registered", pattern=_pattern(TRIGGER)),
        "condition": _text("FHIRPath on the trigger's resource (%patient for the patient); the flow runs when true"),
        "not_after": _enum(NOT_AFTER, "stop the flow from this event on"),
        "actions": {"type": "array", "minItems": 1, "items": _action(), "description": "[[actions]] tables"},
    }
    return _document("flow", _table(properties, FLOW_KEYS, "flow", required=["id", "name", "trigger", "actions"]))


def template_schema() -> Schema:
    practitioners = _list(_ref("practitioner", "Practitioner/123"), "practitioner references")
    roles = _list(_text("a role name from [roles] in the config"), "role names")
    properties = {
        "id": _required_text("lower-case letters, digits and '-'", pattern=_pattern(ID)),
        "name": _required_text("the template's name"),
        "status": _enum(STATUSES, "disabled templates cannot be used by flows"),
        "methods": _channels("the channels the text is written for."),
        "subject": _text("subject line (email, staff messages); merge fields allowed"),
        "body": _text("the message text (Jinja merge fields, docs/merge-fields.md)"),
        "note_type": _enum(m.NOTE_TYPES, "the kind of note a patient-note writes"),
        "prompt": _table(
            {
                "text": _required_text("what the clinician is asked to record"),
                "roles": roles,
                "practitioners": practitioners,
            },
            PROMPT_KEYS,
            "prompt",
            required=["text"],
        ),
        "recipients": _table(
            {
                "practitioners": practitioners,
                "groups": _list(_ref("group", "Group/intake-team"), "group or care team references"),
                "roles": roles,
            },
            RECIPIENTS_KEYS,
            "recipients",
        ),
    }
    body_or_prompt = [{"required": ["body"]}, {"required": ["prompt"]}]  # a record prompt needs no body
    table = _table(properties, TEMPLATE_KEYS, "template", required=["id", "name"], anyOf=body_or_prompt)
    return _document("template", table)


def mapping_schema() -> Schema:
    expression = "FHIRPath on the changed resource"
    properties = {
        "trigger": _required_text("area.event, lower case", pattern=_pattern(TRIGGER)),
        "resource": _required_text("the FHIR resource type", pattern=_pattern(RESOURCE_TYPE_RE)),
        "interactions": _list(_enum(INTERACTIONS, "create or update"), "which changes fire (default both)"),
        "when": _text(f"{expression}; the trigger fires when true"),
        "previous": _text(f"{expression} of the previous version; must be true for it"),
        "previous_missing": _flag("whether no known previous version satisfies previous (default true)"),
        "patient": _text(f"{expression} giving the patient reference"),
        "once_per": {"const": "patient", "description": "fire at most once per patient"},
        "search": _text("the search a Subscription for it uses, e.g. Appointment?status=noshow"),
        "parameters": {
            "type": "object",
            "additionalProperties": _text(expression),
            "description": "named values for the flows, each a FHIRPath expression",
        },
    }
    item = _table(properties, MAPPING_KEYS, "mapping[]", required=["trigger", "resource"])
    top = {"type": "object", "additionalProperties": False, "required": ["mapping"]}
    return _document("mapping", {**top, "properties": {"mapping": {"type": "array", "items": item}}})


def _document(kind: str, body: Schema) -> Schema:
    return {
        "$schema": DRAFT,
        "$id": f"{ID_BASE}{kind}",
        "title": f"fhir-smartflow {kind} file",
        "description": f"A {kind} file (docs/flows.md). `fhir-smartflow validate` is the authority.",
        **body,
    }


SCHEMAS = {"flow": flow_schema, "template": template_schema, "mapping": mapping_schema}


def schema(kind: str) -> Schema:
    """The JSON Schema of ``kind`` (flow, template or mapping)."""
    return SCHEMAS[kind]()
