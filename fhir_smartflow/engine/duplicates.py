"""Duplicate automation: two enabled flows on one trigger that would give a patient the same thing twice.

What an action gives (`gives`): a message's template, a send-form's form, and for every type its
``item`` (the automation name, docs/flows.md). Two enabled flows on the same trigger that share any of
these overlap. With the same condition (compared with runs of whitespace collapsed) that is a load
error, so ``validate`` and ``lint`` report the same duplicates; when only one of the two has a
condition, ``lint`` warns (``overlapping-flows``). Different conditions are not judged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.model import Action, Flow
from fhir_smartflow.engine.tomlfiles import LoadError, SourceFile


@dataclass(frozen=True)
class Overlap:
    earlier: Flow  # in (file, id) order
    later: Flow  # the one reported
    action: Action  # the later flow's first action that gives something the earlier one gives too
    shared: tuple[str, ...]  # what both give, e.g. ("template 'missed-appointment-sms'",)
    same_condition: bool  # False: one of the two has no condition

    @property
    def field(self) -> str:
        return f"actions[{self.action.index + 1}].item"


def gives(action: Action) -> set[str]:
    """What an action gives a patient, in words ("template 'x'", "form 'x'", "staff-task 'x'")."""
    spec = ACTION_TYPES[action.type]
    if spec.form:
        return {f"form {action.item!r}"}
    given = {f"{action.type} {action.item!r}"}
    if spec.sends_messages and action.template:
        given.add(f"template {action.template!r}")
    return given


def overlapping_flows(flows: Iterable[Flow]) -> list[Overlap]:
    """Every overlapping pair of enabled flows on the same trigger (same or one-sided condition)."""
    enabled = sorted((f for f in flows if f.enabled), key=lambda f: (f.file, f.id))
    found: list[Overlap] = []
    for i, earlier in enumerate(enabled):
        earlier_gives = set().union(*(gives(a) for a in earlier.actions))
        for later in enabled[i + 1 :]:
            if later.trigger != earlier.trigger or later.id == earlier.id:
                continue
            first, second = _condition(earlier), _condition(later)
            if first != second and first and second:
                continue
            for action in later.actions:
                shared = gives(action) & earlier_gives
                if shared:
                    found.append(Overlap(earlier, later, action, tuple(sorted(shared)), first == second))
                    break
    return found


def duplicate_automation(flows: Iterable[Flow], sources: list[SourceFile]) -> list[LoadError]:
    """The load errors: overlaps with the same condition, on the later flow's action."""
    by_path = {s.path: s for s in sources}
    errors: list[LoadError] = []
    for overlap in overlapping_flows(flows):
        if not overlap.same_condition:
            continue
        earlier, later = overlap.earlier, overlap.later
        source = by_path.get(later.file)
        errors.append(
            LoadError(
                later.file,
                overlap.field,
                f"duplicate automation: flow {earlier.id!r} ({earlier.file}) already gives "
                f"{', '.join(overlap.shared)} on {later.trigger!r} with the same condition; disable one of them",
                source.line_of("item", "actions", overlap.action.index) if source else None,
            )
        )
    return errors


def _condition(flow: Flow) -> str:
    return re.sub(r"\s+", " ", flow.condition or "").strip()
