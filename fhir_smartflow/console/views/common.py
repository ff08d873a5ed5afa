"""What several pages show: the loaded engine, triggers in words, the run history, the logged-in user's name."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.engine.model import Engine, MappingRule
from fhir_smartflow.engine.tomlfiles import LoadError
from fhir_smartflow.flowfiles import load_paths
from fhir_smartflow.worker.history import RunHistory

HISTORY_LIMIT = 500  # runs read for a page's counts


def load_engine(deps: ConsoleDeps) -> tuple[Engine | None, list[LoadError]]:
    engine = deps.settings.engine
    return load_paths(engine.mappings, engine.flows, engine.templates, deps.settings)


@dataclass(frozen=True)
class TriggerChoice:
    name: str
    description: str


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def describe_rule(rule: MappingRule) -> str:
    """One mapping in words: "a Patient is created", "an Appointment is created or updated where status = ..."."""
    done = " or ".join({"create": "created", "update": "updated"}[i] for i in rule.interactions)
    text = f"{_article(rule.resource)} {rule.resource} is {done}"
    if rule.when:
        text += f" and {rule.when}"
    if rule.previous:
        text += f" (before: {rule.previous})"
    if rule.once_per:
        text += f", once per {rule.once_per}"
    return text


def trigger_choices(engine: Engine | None) -> list[TriggerChoice]:
    """Every trigger the loaded mappings define, described by its mappings ("when ... or when ...")."""
    if engine is None:
        return []
    rules: dict[str, list[MappingRule]] = {}
    for rule in engine.mappings:
        rules.setdefault(rule.trigger, []).append(rule)
    return [
        TriggerChoice(name, "When " + "; or when ".join(describe_rule(r) for r in found))
        for name, found in sorted(rules.items())
    ]


def trigger_resource_types(engine: Engine | None, trigger: str) -> list[str]:
    if engine is None:
        return []
    return sorted({r.resource for r in engine.mappings if r.trigger == trigger})


def history(deps: ConsoleDeps) -> RunHistory | None:
    if deps.redis is None:
        return None
    return RunHistory.from_settings(deps.settings, deps.redis)


def failed(record: dict[str, Any]) -> bool:
    """A run failed when an action of it failed (an error) or a delivery did not go out."""
    if record.get("errors"):
        return True
    return any(d.get("status") in ("failed", "not-done") for d in record.get("deliveries") or [])


def outcome(record: dict[str, Any]) -> str:
    if failed(record):
        return "failed"
    flows = record.get("flows") or []
    return "ran" if any(f.get("ran") for f in flows) else "not run"


@dataclass
class FlowActivity:
    last_run: str = ""
    runs: int = 0
    failures: int = 0


def activity(deps: ConsoleDeps, flow_ids: Iterable[str]) -> dict[str, FlowActivity]:
    """Per flow: its last run and its runs / failures of the last 24 hours (from the run history)."""
    found = {fid: FlowActivity() for fid in flow_ids}
    store = history(deps)
    if store is None:
        return found
    since = deps.clock() - timedelta(hours=24)
    for fid, act in found.items():
        records = store.query(flow=fid, limit=HISTORY_LIMIT)
        if records:
            act.last_run = records[0].get("at", "")
        for rec in records:
            at = _instant(rec.get("at", ""))
            if at is None or at < since:
                continue
            if any(f.get("id") == fid and f.get("ran") for f in rec.get("flows") or []):
                act.runs += 1
                act.failures += failed(rec)
    return found


def _instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def flow_data(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
