"""Document: each flow's documentation for staff, with its diagram drawn by the page itself (HTML and CSS
served here; nothing from a CDN), printable. The wording is `flowdocs`' (the `docs` command's)."""

from __future__ import annotations

from flask import Flask, abort, render_template

from fhir_smartflow.console.auth import require
from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.console.views.common import flow_data, load_engine
from fhir_smartflow.tooling.flowdocs import describe_due, describe_duration, describe_owner, describe_recurring


def register(app: Flask, deps: ConsoleDeps) -> None:
    @app.get("/flows/<name>/doc", endpoint="flow_doc")
    @require("viewer")
    def flow_doc(name: str) -> str:
        if name not in deps.flow_store.list():
            abort(404)
        fid = str(flow_data(deps.flow_store.read(name).text).get("id") or name)
        engine, errors = load_engine(deps)
        flow = engine.flows.get(fid) if engine is not None else None
        if engine is None or flow is None:
            return render_template("flow_doc.html", flow=None, name=name, errors=errors)
        steps = [
            {
                "action": a,
                "due": describe_due(a.due, a.weekend),
                "owner": describe_owner(a.owner).replace("`", ""),
                "reminder": describe_duration(a.reminder, "before the due date"),
                "recurring": describe_recurring(a.recurring).replace("`", ""),
                "template": engine.templates.get(a.template) if a.template else None,
            }
            for a in flow.actions
        ]
        return render_template("flow_doc.html", flow=flow, name=name, steps=steps, errors=[])
