"""Flows: the list (enable / disable in place) and the editor (checked by the loader and lint before saving,
with the dry run of "Test before going live" on what is being edited)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from flask import Flask, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from fhir_smartflow.console.auth import current_user, require
from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.console.forms import (
    OVERDUE_CHOICES,
    OWNER_KINDS,
    RECURRING_KINDS,
    ActionForm,
    FlowForm,
    errors_by_input,
    form_from_post,
    form_from_text,
    write_flow,
)
from fhir_smartflow.console.nav import add_nav
from fhir_smartflow.console.store import InvalidFile, StaleEdit
from fhir_smartflow.console.views.checking import Checked, check_flow
from fhir_smartflow.console.views.common import (
    activity,
    flow_data,
    load_engine,
    trigger_choices,
    trigger_resource_types,
)
from fhir_smartflow.console.views.simulation import DryRun, dry_run
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.action_types import ACTION_TYPES
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.flowfiles import registry_channels
from fhir_smartflow.tooling.lint import lint

CONDITION_CHECK = "console-condition-check"  # the file name the condition is checked under (never saved)
NOT_ANNOUNCED = "Saved, but Redis did not take the notice: running processes pick it up at the next save."
QUESTIONNAIRES_SHOWN = 50
STAFF_SHOWN = 50
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class Row:
    name: str
    id: str
    title: str
    trigger: str
    enabled: bool
    version: str
    etag: str
    last_run: str
    runs: int
    failures: int
    warnings: list[str]


def _choices(deps: ConsoleDeps, engine: Engine | None) -> dict[str, Any]:
    """What the editor's pickers offer: the loaded triggers, the action types of the registry, templates,
    channels, roles, units, anchors and policies of the model."""
    channels, _ = registry_channels(deps.settings)
    templates = sorted(engine.templates.values(), key=lambda t: t.id) if engine else []
    return {
        "triggers": trigger_choices(engine),
        "action_types": list(ACTION_TYPES.values()),
        "templates": templates,
        "methods": list(channels),
        "method_types": {name: list(spec.allowed_methods(channels)) for name, spec in ACTION_TYPES.items()},
        "roles": sorted(deps.settings.roles),
        "units": m.UNITS,
        "directions": m.DIRECTIONS,
        "anchors": m.ANCHORS,
        "weekend_policies": m.WEEKEND_POLICIES,
        "owner_kinds": OWNER_KINDS,
        "recurring_kinds": RECURRING_KINDS,
        "overdue_choices": OVERDUE_CHOICES,
        "questionnaires": _questionnaires(deps),
        "staff_refs": _staff(deps),
    }


@dataclass(frozen=True)
class StaffRef:
    reference: str
    label: str


def _staff(deps: ConsoleDeps, query: str = "") -> list[StaffRef]:
    """The FHIR server's Practitioners and PractitionerRoles (named like ``query`` when given), offered for
    "who is responsible"."""
    if deps.fhir is None:
        return []
    found: list[StaffRef] = []
    searches = {"Practitioner": {"name": query}, "PractitionerRole": {"practitioner.name": query}} if query else {}
    for rtype in ("Practitioner", "PractitionerRole"):
        params = {"_count": str(STAFF_SHOWN), **searches.get(rtype, {})}
        try:
            resources = deps.fhir.search(rtype, params)[:STAFF_SHOWN]
        except Exception:  # not offered by this server, or unreachable: the field stays free text
            continue
        for r in resources:
            if isinstance(r, dict) and r.get("id"):
                found.append(StaffRef(f"{rtype}/{r['id']}", _staff_label(r)))
    return found


def _staff_label(resource: dict[str, Any]) -> str:
    names = resource.get("name") or []
    if names and isinstance(names[0], dict):
        name = names[0]
        return name.get("text") or " ".join([*(name.get("given") or []), name.get("family", "")]).strip()
    code = (resource.get("code") or [{}])[0] if isinstance(resource.get("code"), list) else {}
    practitioner = (resource.get("practitioner") or {}).get("display", "")
    return " · ".join(x for x in (practitioner, code.get("text", "")) if x) or resource["resourceType"]


@dataclass(frozen=True)
class Questionnaire:
    url: str
    title: str


def _questionnaires(deps: ConsoleDeps) -> list[Questionnaire]:
    """The FHIR server's Questionnaires for the send-form item picker (none when it cannot be asked)."""
    if deps.fhir is None:
        return []
    try:
        found = deps.fhir.search("Questionnaire", {"_count": str(QUESTIONNAIRES_SHOWN), "_elements": "url,title,name"})
    except Exception:  # a server without Questionnaire (OpenEMR 7.0.0) or unreachable: the field stays free text
        return []
    return [
        Questionnaire(str(q["url"]), str(q.get("title") or q.get("name") or q["url"]))
        for q in found[:QUESTIONNAIRES_SHOWN]
        if isinstance(q, dict) and q.get("url")
    ]


def _rows(deps: ConsoleDeps) -> list[Row]:
    names = deps.flow_store.list()
    stored = {name: deps.flow_store.read(name) for name in names}
    data = {name: flow_data(s.text) for name, s in stored.items()}
    ids = {name: str(d.get("id") or name) for name, d in data.items()}
    acts = activity(deps, ids.values())
    warnings: dict[str, list[str]] = {}
    for finding in lint([], deps.settings):
        if finding.flow and finding.severity in ("error", "warning"):
            warnings.setdefault(finding.flow, []).append(f"{finding.code}: {finding.message}")
    rows = []
    for name in names:
        d, fid = data[name], ids[name]
        act = acts[fid]
        rows.append(
            Row(
                name=name,
                id=fid,
                title=str(d.get("name") or fid),
                trigger=str(d.get("trigger") or ""),
                enabled=d.get("enabled", True) is not False,
                version=str(d.get("version", "1")),
                etag=stored[name].etag,
                last_run=act.last_run,
                runs=act.runs,
                failures=act.failures,
                warnings=warnings.get(fid, []),
            )
        )
    return rows


def _editor(
    deps: ConsoleDeps,
    name: str | None,
    form: FlowForm,
    etag: str | None,
    checked: Checked | None = None,
    run: DryRun | None = None,
    status: int = 200,
    notice: str = "",
) -> tuple[str, int]:
    engine, _ = load_engine(deps)
    field_errors, general = errors_by_input(checked.errors if checked else [], form)
    general += [str(e) for e in (checked.others if checked else [])]
    warnings = [f"{w.code}: {w.message}" for w in (checked.warnings if checked else [])]
    body = render_template(
        "flow_edit.html",
        name=name,
        form=form,
        etag=etag or "",
        field_errors=field_errors,
        general_errors=general,
        warnings=warnings,
        checked=checked,
        run=run,
        notice=notice,
        resource_types=trigger_resource_types(engine, form.trigger),
        **_choices(deps, engine),
    )
    return body, status


def register(app: Flask, deps: ConsoleDeps) -> None:
    add_nav(app, "Flows", "flows")

    @app.get("/", endpoint="home")  # the console opens on the flows
    @app.get("/flows", endpoint="flows")
    @require("viewer")
    def flows() -> str:
        failures = deps.reload_bus.failures() if deps.reload_bus is not None else []
        return render_template("flows.html", rows=_rows(deps), reload_failures=failures)

    @app.post("/flows/<name>/enabled", endpoint="flow_enabled")
    @require("admin")
    def flow_enabled(name: str) -> Response:
        if name not in deps.flow_store.list():
            abort(404)
        stored = deps.flow_store.read(name)
        form = form_from_text(stored.text)
        form.enabled = request.form.get("enabled") == "true"
        try:
            saved = deps.flow_store.save(name, write_flow(form, stored.text), request.form.get("etag"), current_user())
        except StaleEdit:
            flash(f"{name} was changed by someone else meanwhile: look again and retry.", "error")
        except InvalidFile as exc:
            flash(f"{name} cannot be changed: " + "; ".join(f"{e.field}: {e.reason}" for e in exc.errors), "error")
        else:
            flash(f"{form.name or name} is now {'enabled' if form.enabled else 'disabled'}.", "info")
            if not saved.announced:
                flash(NOT_ANNOUNCED, "error")
        return redirect(url_for("flows"))

    @app.get("/flows/new", endpoint="flow_new")
    @require("admin")
    def flow_new() -> tuple[str, int]:
        form = FlowForm(actions=[ActionForm()])
        return _editor(deps, None, form, None)

    @app.get("/flows/<name>", endpoint="flow_edit")
    @require("viewer")
    def flow_edit(name: str) -> tuple[str, int]:
        if name not in deps.flow_store.list():
            abort(404)
        stored = deps.flow_store.read(name)
        form = form_from_text(stored.text)
        return _editor(deps, name, form, stored.etag, check_flow(deps.flow_store, deps.settings, name, stored.text))

    @app.post("/flows/new", endpoint="flow_create")
    @app.post("/flows/<name>", endpoint="flow_save")
    @require("admin")
    def flow_save(name: str | None = None) -> tuple[str, int] | Response:
        form = form_from_post(request.form)
        etag = request.form.get("etag") or None
        step = request.form.get("step", "check")
        if step == "add_action":
            form.actions.append(ActionForm())
            return _editor(deps, name, form, etag)
        target = name or form.id
        original = deps.flow_store.read(name).text if name else None
        text = write_flow(form, original)
        checked = check_flow(deps.flow_store, deps.settings, target or "new-flow", text)
        if not target or not _NAME.match(target):
            return _editor(deps, name, form, etag, checked, status=422, notice="Give the flow an id (a-z, 0-9, -).")
        if step == "test":
            run = dry_run(deps, checked, form.id, request.form)
            return _editor(deps, name, form, etag, checked, run=run)
        if step != "save" or checked.blocked:
            status = 422 if checked.blocked else 200
            notice = "Not saved: fix the marked fields." if checked.blocked and step == "save" else ""
            return _editor(deps, name, form, etag, checked, status=status, notice=notice)
        if name is None and target in deps.flow_store.list():
            return _editor(deps, name, form, etag, checked, status=409, notice=f"A flow file {target} exists already.")
        try:
            stored = deps.flow_store.save(target, text, etag, current_user())
        except StaleEdit as exc:
            newer = exc.current
            return _editor(
                deps,
                name,
                form_from_text(newer.text),
                newer.etag,
                check_flow(deps.flow_store, deps.settings, target, newer.text),
                status=409,
                notice="Someone saved this flow meanwhile: this is their version. Your change was not saved.",
            )
        except InvalidFile as exc:
            return _editor(
                deps,
                name,
                form,
                etag,
                Checked(errors=exc.errors),
                status=422,
                notice="Not saved: fix the marked fields.",
            )
        flash(f"Saved {form.name or target}.", "info")
        if not stored.announced:
            flash(NOT_ANNOUNCED, "error")
        return redirect(url_for("flow_edit", name=target))

    @app.post("/flows/<name>/delete", endpoint="flow_delete")
    @require("admin")
    def flow_delete(name: str) -> Response:
        if name not in deps.flow_store.list():
            abort(404)
        try:
            deps.flow_store.delete(name, request.form.get("etag", ""), current_user())
        except StaleEdit:
            flash(f"{name} was changed by someone else meanwhile: look again and retry.", "error")
            return redirect(url_for("flow_edit", name=name))
        except InvalidFile as exc:
            flash(f"{name} cannot be deleted: " + "; ".join(str(e) for e in exc.errors), "error")
            return redirect(url_for("flow_edit", name=name))
        flash(f"Deleted {name} (its versions stay in the history).", "info")
        return redirect(url_for("flows"))

    @app.get("/flows/<name>/source", endpoint="flow_source")
    @require("viewer")
    def flow_source(name: str) -> tuple[str, int, dict[str, str]]:
        if name not in deps.flow_store.list():
            abort(404)
        return deps.flow_store.read(name).text, 200, {"Content-Type": "text/plain; charset=utf-8"}

    @app.get("/staff", endpoint="staff_search")
    @require("viewer")
    def staff_search() -> tuple[str, int, dict[str, str]]:
        """Practitioners and PractitionerRoles named like ``q`` (the editor's "responsible" field asks)."""
        found = _staff(deps, request.args.get("q", "").strip())
        body = json.dumps([{"reference": f.reference, "label": f.label} for f in found])
        return body, 200, {"Content-Type": "application/json"}

    @app.post("/flows/check-condition", endpoint="flow_check_condition")
    @require("viewer")
    def flow_check_condition() -> tuple[str, int, dict[str, str]]:
        """The condition as typed, checked as the loader and lint check it (the editor's script asks)."""
        form = FlowForm(
            id="condition-check",
            name="condition check",
            trigger=request.form.get("trigger", ""),
            condition=request.form.get("condition", ""),
            actions=[ActionForm(name="x", type="staff-task", item="x", owner_kind="patient")],
        )
        checked = check_flow(deps.flow_store, deps.settings, CONDITION_CHECK, write_flow(form))
        problems = [e.reason for e in checked.errors if e.field == "condition"]
        problems += [w.message for w in checked.warnings if w.code == "unknown-path"]
        body = json.dumps({"ok": not problems, "problems": problems})
        return body, 200, {"Content-Type": "application/json"}
