"""Doctor checks of the web console's setup (docs/console.md): its signing key and where saves go."""

from __future__ import annotations

import os
from pathlib import Path

from fhir_smartflow import shipped
from fhir_smartflow.config import secret
from fhir_smartflow.tooling.doctor.model import Check, DoctorContext, Finding

MIN_KEY = 32
HISTORY = ".console-history"  # the default beside the flows directory (console/deps.py)


def _first_dir(paths: list[str]) -> Path | None:
    return next((Path(p) for p in paths if not shipped.is_shipped(p) and Path(p).is_dir()), None)


def _writable(path: Path) -> bool:
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return existing is not None and os.access(existing, os.W_OK)


class ConsoleReady(Check):
    name = "console"
    about = "the console is mounted (signing key set) and can save flows, templates and their history"

    def run(self, ctx: DoctorContext) -> list[Finding]:
        console, engine = ctx.settings.console, ctx.settings.engine
        if not console.enabled:
            return [self.skip("[console] enabled = false")]
        key = secret(console.secret_key_env)
        setting = f"${console.secret_key_env}"
        if not key:
            return [self.warn(f"not mounted: {setting} is not set", f"set {setting} (the same on every host)")]
        if len(key) < MIN_KEY:
            return [self.fail(f"{setting} is shorter than {MIN_KEY} characters", "use a longer random key")]
        findings: list[Finding] = []
        directories = {"flows": _first_dir(engine.flows), "templates": _first_dir(engine.templates)}
        for kind, directory in directories.items():
            if directory is None:
                findings.append(
                    self.warn(f"{kind} are read-only: [engine] {kind} names no directory", "point it at a directory")
                )
            elif not os.access(directory, os.W_OK):
                findings.append(self.fail(f"{directory} is not writable", f"let the service user write {kind} there"))
        anchor = directories["flows"] or directories["templates"]
        history = Path(console.history_dir) if console.history_dir else (anchor.parent / HISTORY if anchor else None)
        if history is not None and not _writable(history):
            findings.append(self.fail(f"history directory {history} is not writable", "set [console] history_dir"))
        return findings or [self.ok(f"mounted at {console.path}; saves to {anchor}, history in {history}")]
