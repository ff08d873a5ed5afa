"""Run history: every recorded run with its steps, outcome and reason, filtered by flow, patient, outcome, date."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask, render_template, request

from fhir_smartflow.console.auth import require
from fhir_smartflow.console.deps import ConsoleDeps
from fhir_smartflow.console.nav import add_nav
from fhir_smartflow.console.views.common import history, outcome

OUTCOMES = ("", "ran", "not run", "failed")
PAGE = 100


def _since(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC) if text else None
    except ValueError:
        return None


def register(app: Flask, deps: ConsoleDeps) -> None:
    add_nav(app, "Run history", "history")

    @app.get("/history", endpoint="history")
    @require("viewer")
    def history_page() -> str:
        flow = request.args.get("flow", "").strip()
        patient = request.args.get("patient", "").strip()
        wanted = request.args.get("outcome", "")
        since_text = request.args.get("since", "").strip()
        since = _since(since_text)
        problem = "" if since or not since_text else "The date is not a date like 2026-03-05."
        store = history(deps)
        runs = []
        if store is not None:
            for record in store.query(patient=patient or None, flow=flow or None, since=since, limit=PAGE * 5):
                record["outcome"] = outcome(record)
                if wanted and record["outcome"] != wanted:
                    continue
                runs.append(record)
                if len(runs) >= PAGE:
                    break
        base = deps.fhir.base_url if deps.fhir is not None else ""
        return render_template(
            "history.html",
            runs=runs,
            flow=flow,
            patient=patient,
            outcome=wanted,
            since=since_text,
            outcomes=OUTCOMES,
            problem=problem,
            no_redis=store is None,
            fhir_base=base.rstrip("/"),
            flow_ids=sorted(deps.flow_store.list()),
        )
