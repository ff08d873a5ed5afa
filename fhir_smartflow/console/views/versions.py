"""Versions of a flow or template file (who saved each, when) and the diff between any two; the audit trail."""

from __future__ import annotations

from flask import Flask, abort, render_template, request

from fhir_smartflow.console.auth import require
from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.console.nav import add_nav
from fhir_smartflow.console.store import FileStore, UnknownFile

AUDIT_SHOWN = 200


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def register(app: Flask, deps: ConsoleDeps) -> None:
    stores: dict[str, FileStore] = {"flows": deps.flow_store, "templates": deps.template_store}
    add_nav(app, "Audit", "audit")

    @app.get("/flows/<name>/versions", endpoint="flow_versions")
    @require("viewer")
    def flow_versions(name: str) -> str:
        return versions("flows", name)

    @app.get("/templates/<name>/versions", endpoint="template_versions")
    @require("viewer")
    def template_versions(name: str) -> str:
        return versions("templates", name)

    def versions(kind: str, name: str) -> str:
        store = stores[kind]
        if name not in store.list():
            abort(404)
        kept = store.history(name)
        numbers = [v.number for v in kept]
        a, b = _number(request.args.get("a")), _number(request.args.get("b"))
        if b is None and numbers:
            b = numbers[-1]
        if a is None and len(numbers) > 1:
            a = numbers[-2]
        diff, problem = "", ""
        if a is not None and b is not None:
            try:
                diff = store.diff(name, a, b)
            except UnknownFile as exc:
                problem = f"No such version: {exc}"
        edit = "flow_edit" if kind == "flows" else "template_edit"
        return render_template(
            "versions.html", kind=kind, name=name, versions=list(reversed(kept)), a=a, b=b, diff=diff,
            problem=problem, edit=edit, changes=deps.audit.recent(AUDIT_SHOWN, target=name),
        )  # fmt: skip

    @app.get("/audit", endpoint="audit")
    @require("viewer")
    def audit() -> str:
        target = request.args.get("target", "").strip() or None
        return render_template("audit.html", entries=deps.audit.recent(AUDIT_SHOWN, target=target), target=target)
