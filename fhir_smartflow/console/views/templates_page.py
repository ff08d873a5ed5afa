"""Templates: the list and the editor, with an Insert menu of the merge-field catalog and a live preview
rendered against the sample record (the one every template is test-rendered against at load)."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from fhir_smartflow.console.auth import current_user, require
from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.console.forms import (
    TemplateForm,
    template_form_from_post,
    template_form_from_text,
    write_template,
)
from fhir_smartflow.console.nav import add_nav
from fhir_smartflow.console.store import InvalidFile, NotEditable, StaleEdit
from fhir_smartflow.console.views.flows import NOT_ANNOUNCED
from fhir_smartflow.console.views.simulation import find_patients
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.templating import (
    CATALOG_FIELDS,
    TemplateRenderError,
    build_catalog,
    compile_template,
    make_environment,
    render,
    sample_catalog,
)
from fhir_smartflow.flowfiles import registry_channels


def _sample_value(catalog: Any, name: str) -> str:
    value: Any = catalog
    for part in name.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


def merge_fields(deps: ConsoleDeps) -> list[tuple[str, str]]:
    """Each merge field of the catalog and its value in the sample record (what it means, by example)."""
    catalog = sample_catalog(deps.settings)
    return [(name, _sample_value(catalog, name)) for name in CATALOG_FIELDS]


def _catalog(deps: ConsoleDeps, patient_query: str) -> tuple[Any, str]:
    """The sample record, with the chosen patient of the FHIR server in place of the sample patient."""
    catalog = sample_catalog(deps.settings)
    if not patient_query:
        return catalog, "the sample patient"
    try:
        found = find_patients(deps, patient_query)
    except Exception as exc:  # the server's failure is shown, the preview stays on the sample
        return catalog, f"the sample patient (the FHIR server could not be searched: {type(exc).__name__})"
    if not found:
        return catalog, f"the sample patient (no patient found for {patient_query!r})"
    chosen = build_catalog(deps.settings, patient=found[0])
    return {**catalog, "patient": chosen["patient"]}, f"Patient/{found[0].get('id')}"


def preview(deps: ConsoleDeps, parts: dict[str, str], patient_query: str = "") -> dict[str, Any]:
    """Each part rendered against the sample record (or a chosen patient), or its error."""
    env = make_environment()
    catalog, _ = _catalog(deps, patient_query)
    out: dict[str, Any] = {}
    for part, source in parts.items():
        if not source:
            continue
        try:
            out[part] = {"text": render(compile_template(env, source), catalog)}
        except TemplateRenderError as exc:
            out[part] = {"error": str(exc)}
        except Exception as exc:  # a Jinja syntax error is the author's to fix, shown as such
            out[part] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _editor(
    deps: ConsoleDeps,
    name: str | None,
    form: TemplateForm,
    etag: str,
    errors: list[Any],
    notice: str = "",
    status: int = 200,
) -> tuple[str, int]:
    preview_patient = request.form.get("preview_patient", "").strip()
    channels, _ = registry_channels(deps.settings)
    field_errors: dict[str, list[str]] = {}
    general = []
    for error in errors:
        key = error.field.split(".")[0].replace("prompt", "prompt_text")
        if key in ("id", "name", "status", "methods", "subject", "body", "note_type", "prompt_text"):
            field_errors.setdefault(key, []).append(error.reason)
        else:
            general.append(f"{error.field}: {error.reason}")
    body = render_template(
        "template_edit.html",
        name=name,
        form=form,
        etag=etag,
        field_errors=field_errors,
        general_errors=general,
        notice=notice,
        methods=list(channels),
        note_types=m.NOTE_TYPES,
        merge_fields=merge_fields(deps),
        preview=preview(
            deps, {"subject": form.subject, "body": form.body, "prompt": form.prompt_text}, preview_patient
        ),
        preview_patient=preview_patient,
        preview_on=_catalog(deps, preview_patient)[1] if preview_patient else "the sample patient",
    )
    return body, status


def register(app: Flask, deps: ConsoleDeps) -> None:
    add_nav(app, "Templates", "templates")
    store = deps.template_store

    @app.get("/templates", endpoint="templates")
    @require("viewer")
    def templates() -> str:
        rows = []
        for name in store.list():
            try:
                form = template_form_from_text(store.read(name).text)
            except ValueError:
                form = TemplateForm(id=name, name="(not valid TOML)")
            rows.append((name, form))
        return render_template("templates.html", rows=rows)

    @app.get("/templates/new", endpoint="template_new")
    @require("admin")
    def template_new() -> tuple[str, int]:
        return _editor(deps, None, TemplateForm(), "", [])

    @app.get("/templates/<name>", endpoint="template_edit")
    @require("viewer")
    def template_edit(name: str) -> tuple[str, int]:
        if name not in store.list():
            abort(404)
        stored = store.read(name)
        return _editor(deps, name, template_form_from_text(stored.text), stored.etag, [])

    @app.post("/templates/new", endpoint="template_create")
    @app.post("/templates/<name>", endpoint="template_save")
    @require("admin")
    def template_save(name: str | None = None) -> tuple[str, int] | Response:
        form = template_form_from_post(request.form)
        etag = request.form.get("etag") or None
        target = name or form.id
        if not target:
            return _editor(deps, name, form, "", [], "Give the template an id.", 422)
        original = store.read(name).text if name else None
        text = write_template(form, original)
        try:
            if request.form.get("step") != "save":
                errors = [e for e in store.check(target, text) if e.file == str(store.path(target))]
                return _editor(deps, name, form, etag or "", errors, "" if errors else "The template loads.")
            stored = store.save(target, text, etag, current_user())
        except NotEditable as exc:
            return _editor(deps, name, form, etag or "", [], f"Not saved: {exc}", 422)
        except StaleEdit as exc:
            newer = exc.current
            if newer is None:
                abort(409)
            return _editor(
                deps,
                name,
                template_form_from_text(newer.text),
                newer.etag,
                [],
                "Someone saved this template meanwhile: this is their version. Yours was not saved.",
                409,
            )
        except InvalidFile as exc:
            return _editor(deps, name, form, etag or "", exc.errors, "Not saved: fix the marked fields.", 422)
        flash(f"Saved template {target}.", "info")
        if not stored.announced:
            flash(NOT_ANNOUNCED, "error")
        return redirect(url_for("template_edit", name=target))

    @app.post("/templates/preview", endpoint="template_preview")
    @require("viewer")
    def template_preview() -> tuple[str, int, dict[str, str]]:
        parts = {k: request.form.get(k, "") for k in ("subject", "body", "prompt")}
        patient = request.form.get("preview_patient", "").strip()
        return json.dumps(preview(deps, parts, patient)), 200, {"Content-Type": "application/json"}
