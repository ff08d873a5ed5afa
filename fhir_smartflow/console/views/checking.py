"""A flow as the editor has it, checked the way `validate` and `lint` check files, before anything is saved.

The candidate text replaces the stored file of the same name among the configured files (the other flows
matter: duplicate automation is judged across flows); the loader's errors and lint's warnings about that
one file are returned, and, when it loads, the engine it makes (for the dry run of the test page).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fhir_smartflow.config import Settings
from fhir_smartflow.console.store import FlowStore, NotEditable
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.engine.tomlfiles import LoadError
from fhir_smartflow.tooling.lint import Finding, lint, read_sources

_LINT_SHOWN = ("error", "warning")


@dataclass
class Checked:
    errors: list[LoadError] = field(default_factory=list)  # the candidate's load errors: it cannot be saved
    others: list[LoadError] = field(default_factory=list)  # other files' errors (they block a save too)
    warnings: list[Finding] = field(default_factory=list)  # lint's findings about it
    engine: Engine | None = None  # every configured file with the candidate in place

    @property
    def blocked(self) -> bool:
        return bool(self.errors or self.others)


def check_flow(store: FlowStore, settings: Settings, name: str, text: str) -> Checked:
    """The candidate ``text`` of flow file ``name`` checked with every configured file, as a save would be."""
    try:
        path = str(store.path(name))
    except NotEditable as exc:  # no flow directory configured, or a bad name: nothing can be saved
        return Checked(others=[LoadError(f"{name}.toml", "file", str(exc))])
    engine, errors = store.candidate_engine(name, text)
    mine = [e for e in errors if e.file == path]
    others = [e for e in errors if e.file != path]
    if any(e.field == "file" for e in mine):  # not TOML: nothing to lint
        return Checked(errors=mine, others=others)
    return Checked(mine, others, _lint_candidate(settings, store, name, text), engine)


def _lint_candidate(settings: Settings, store: FlowStore, name: str, text: str) -> list[Finding]:
    """lint over copies of the files with the candidate in place (lint reads files), its findings kept."""
    sources = read_sources([], settings)
    target_path = store.path(name).resolve()
    others = [s for s in sources.flows if Path(s.path).resolve() != target_path]
    with tempfile.TemporaryDirectory(prefix="console-lint-") as tmp:
        root = Path(tmp)
        for kind, group in (("mappings", sources.mappings), ("templates", sources.templates), ("flows", others)):
            folder = root / kind
            folder.mkdir()
            for i, source in enumerate(group):
                (folder / f"{i:04d}-{Path(source.path).name}").write_text(source.text, encoding="utf-8")
        target = root / "candidate" / f"{name}.toml"
        target.parent.mkdir()
        target.write_text(text, encoding="utf-8")
        findings = lint([str(root / "mappings"), str(root / "templates"), str(root / "flows"), str(target)], settings)
        return [f for f in findings if f.file == str(target) and f.severity in _LINT_SHOWN and f.code != "invalid"]
