"""The loaded Smart Flows language: mappings, flows, actions, templates, and the Engine holding them.

All dataclasses are frozen: the engine is loaded once (at start, SIGHUP or an explicit reload) and
shared read-only by every event. The loader (``loader.py``) is the only place that builds them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any

from fhir_smartflow.channels import ChannelSpec

# Triggers the built-in lifecycle acts on even when no flow names them (planner.py): task.completed ends
# a workflow; patient.discharged / patient.admitted set and clear the discharge marker and cancel.
TASK_LIFECYCLE_TRIGGER = "task.completed"
DISCHARGE_TRIGGERS = frozenset({"patient.discharged", "patient.admitted"})
LIFECYCLE_TRIGGERS = frozenset({TASK_LIFECYCLE_TRIGGER}) | DISCHARGE_TRIGGERS

UNITS = ("minutes", "hours", "days", "weeks")
DIRECTIONS = ("after", "before")
ANCHORS = (
    "event",
    "admission",
    "discharge",
    "appointment_start",
    "first_kept_appointment",
    "insurance_effective",
)
WEEKEND_POLICIES = ("keep", "previous-friday", "next-monday")
RECUR_EVERY = ("daily", "weekly", "monthly")
NOTE_TYPES = ("progress-note", "consult-note", "history-and-physical", "discharge-summary", "procedure-note")


@dataclass(frozen=True)
class MappingRule:
    """One ``[[mapping]]``: when a resource change means ``trigger``."""

    trigger: str
    resource: str
    interactions: tuple[str, ...] = ("create", "update")
    when: str | None = None
    previous: str | None = None
    previous_missing: bool = True
    patient: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    once_per: str | None = None  # "patient": fire once per patient ever
    search: str | None = None
    file: str = ""


@dataclass(frozen=True)
class Duration:
    amount: int
    unit: str  # minutes | hours | days | weeks


@dataclass(frozen=True)
class Due:
    amount: int
    unit: str
    direction: str = "after"
    anchor: str = "event"

    @property
    def duration(self) -> Duration:
        return Duration(self.amount, self.unit)


@dataclass(frozen=True)
class Owner:
    kind: str  # patient | practitioner | role | group
    value: str = ""  # reference (practitioner / group) or role name


@dataclass(frozen=True)
class Recurring:
    every: str | None = None  # daily | weekly | monthly
    cron: str | None = None
    count: int | None = None
    until: date | None = None


@dataclass(frozen=True)
class Overdue:
    notify_owner: bool = False


@dataclass(frozen=True)
class Action:
    index: int
    name: str
    slug: str
    type: str
    item: str
    category: str = "smartflow"
    template: str | None = None
    methods: tuple[str, ...] = ()
    due: Due | None = None
    weekend: str = "keep"
    owner: Owner | None = None
    reminder: Duration | None = None
    recurring: Recurring | None = None
    completes_workflow: bool = False
    overdue: Overdue | None = None
    notify_on_failure: bool = False
    form_title: str = ""  # send-form: the form's title (else the Questionnaire's, read from the server)


@dataclass(frozen=True)
class Flow:
    id: str
    name: str
    trigger: str
    actions: tuple[Action, ...]
    version: str = "1"
    description: str = ""
    enabled: bool = True
    condition: str | None = None
    not_after: str | None = None
    file: str = ""

    @property
    def stops_at_discharge(self) -> bool:
        """``not_after = "patient.discharged"``: never starts for a discharged patient, and a discharge
        cancels its open tasks and pending follow-ups."""
        return self.not_after == "patient.discharged"

    def action(self, slug: str) -> Action | None:
        return next((a for a in self.actions if a.slug == slug), None)


@dataclass(frozen=True)
class Prompt:
    text: str
    roles: tuple[str, ...] = ()
    practitioners: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipients:
    practitioners: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    status: str = "enabled"
    methods: tuple[str, ...] = ()
    subject: str = ""
    body: str = ""
    note_type: str = "progress-note"
    prompt: Prompt | None = None
    recipients: Recipients = field(default_factory=Recipients)
    file: str = ""
    # What reads wrong for a sparse record (engine/merge_fields.py), by part: lint's warnings.
    sparse_text: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @property
    def enabled(self) -> bool:
        return self.status == "enabled"


Compiled = Callable[..., list[Any]]


@dataclass(frozen=True)
class Engine:
    """Everything loaded, indexed for the per-event hot path. Read-only after load."""

    mappings: tuple[MappingRule, ...]
    flows: Mapping[str, Flow]
    templates: Mapping[str, Template]
    # FHIRPath expression -> compiled function (every expression in mappings and flows).
    paths: Mapping[str, Compiled] = field(default_factory=dict, repr=False, compare=False)
    # (template id, part) -> compiled Jinja2 template; part: subject | body | prompt
    renderers: Mapping[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)
    # The channels the flows were checked against (channel name -> spec), for the planner's messages.
    channels: Mapping[str, ChannelSpec] = field(default_factory=dict, repr=False, compare=False)

    # The per-event lookups below are indexed once (cached_property writes the instance __dict__, which a
    # frozen dataclass allows): the engine is immutable after load, and a per-event scan over every flow
    # made planning grow linearly with flows that cannot match.
    @cached_property
    def _flows_by_trigger(self) -> Mapping[str, tuple[Flow, ...]]:
        index: dict[str, list[Flow]] = {}
        for _, flow in sorted(self.flows.items()):
            index.setdefault(flow.trigger, []).append(flow)
        return {trigger: tuple(flows) for trigger, flows in index.items()}

    @cached_property
    def _enabled_triggers(self) -> frozenset[str]:
        return frozenset(f.trigger for f in self.flows.values() if f.enabled)

    @cached_property
    def _wanted_triggers(self) -> frozenset[str]:
        return self._enabled_triggers | LIFECYCLE_TRIGGERS

    @cached_property
    def _needed_triggers(self) -> frozenset[str]:
        needed = self._enabled_triggers | {TASK_LIFECYCLE_TRIGGER}
        if any(f.enabled and f.stops_at_discharge for f in self.flows.values()):
            needed |= DISCHARGE_TRIGGERS
        return needed

    @cached_property
    def _mappings_by_resource(self) -> Mapping[str, tuple[MappingRule, ...]]:
        index: dict[str, list[MappingRule]] = {}
        for rule in self.mappings:
            index.setdefault(rule.resource, []).append(rule)
        return {resource: tuple(rules) for resource, rules in index.items()}

    def flows_for(self, trigger: str) -> tuple[Flow, ...]:
        """Every flow (enabled or not: disabled runs are recorded) on ``trigger``, in id order."""
        return self._flows_by_trigger.get(trigger, ())

    def enabled_triggers(self) -> set[str]:
        return set(self._enabled_triggers)

    def wanted_triggers(self) -> frozenset[str]:
        """Triggers worth matching when an event arrives: those of enabled flows plus every lifecycle one
        (a discharge is tracked even while no flow stops at it, so the marker is right after a reload)."""
        return self._wanted_triggers

    def needed_triggers(self) -> frozenset[str]:
        """Triggers that must reach us (subscriptions, polling): those of enabled flows, task.completed,
        and — when a flow stops at discharge — patient.discharged and patient.admitted (the admission
        clears the marker of a returning patient)."""
        return self._needed_triggers

    def form_titles(self) -> dict[str, str]:
        """Questionnaire canonical → the ``form_title`` a send-form action gives it."""
        return {a.item: a.form_title for flow in self.flows.values() for a in flow.actions if a.form_title and a.item}

    def resource_types(self) -> set[str]:
        """Resource types whose mappings produce the needed triggers (+ Task, for the task lifecycle)."""
        types = {m.resource for m in self.mappings if m.trigger in self._needed_triggers}
        return types | {"Task"}

    def mappings_for(self, resource_type: str) -> tuple[MappingRule, ...]:
        return self._mappings_by_resource.get(resource_type, ())

    def triggers(self) -> set[str]:
        return {m.trigger for m in self.mappings}

    def prior_fields(self) -> set[str]:
        """Top-level fields the ``previous`` expressions read (what the prior state must keep)."""
        fields = {"resourceType", "id", "meta", "status", "active", "period"}
        for m in self.mappings:
            if m.previous:
                fields |= _top_level_names(m.previous)
        return fields

    def action_for(self, identifier: str) -> tuple[Flow, Action] | None:
        """The flow action behind a plan identifier ``{flow_id}/{action_slug}/...`` (None if unknown)."""
        flow_id, _, rest = identifier.partition("/")
        flow = self.flows.get(flow_id)
        action = flow.action(rest.split("/", 1)[0]) if flow else None
        return (flow, action) if flow and action else None

    def path(self, expression: str) -> Compiled:
        return self.paths[expression]


def _top_level_names(expression: str) -> set[str]:
    import re

    # Identifiers at the start of the expression or after an operator / parenthesis.
    return {m.group(1) for m in re.finditer(r"(?:^|[\s(=!<>,|])([a-z][A-Za-z0-9]*)(?=[.\s=!<>)]|$)", expression)}
