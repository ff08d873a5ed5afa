"""Load-time checks of the merge fields a template uses (docs/merge-fields.md).

- ``unknown_fields``: every ``root.field`` the text reads that the catalog does not have, with the
  close names (difflib), so a typo reads "unknown merge field patient.first_nam (did you mean
  patient.first_name?)" instead of Jinja's "'dict object' has no attribute 'first_nam'".
- ``sparse_problems``: the text rendered for a sparse record (no identifier, no phone, no display
  names, no Practitioner / Location / payer to read). A field printed without a guard, and the
  punctuation left dangling around it ("(MRN )", "with  at ."), are reported; ``lint`` shows them
  as warnings (docs/merge-fields.md says why not load errors).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import TemplateSyntaxError, nodes

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.templating import (
    CATALOG_FIELDS,
    Catalog,
    TemplateRenderError,
    build_catalog,
    make_environment,
    render,
)

ROOTS: dict[str, frozenset[str]] = {}
for _name in CATALOG_FIELDS:
    _root, _field = _name.split(".", 1)
    ROOTS[_root] = ROOTS.get(_root, frozenset()) | {_field}


@dataclass(frozen=True)
class UnknownField:
    field: str  # as written: "patient.first_nam" or "pateint"
    line: int  # line in the template text (1-based)
    close: tuple[str, ...]  # catalog fields it may have meant

    def describe(self) -> str:
        hint = f" (did you mean {' or '.join(self.close)}?)" if self.close else ""
        return f"unknown merge field {self.field}{hint}; the fields are listed in docs/merge-fields.md"


def unknown_fields(source: str) -> list[UnknownField]:
    """Merge fields ``source`` reads that are not in the catalog (a syntax error is left to the compiler)."""
    try:
        tree = make_environment().parse(source)
    except TemplateSyntaxError:
        return []
    found: list[UnknownField] = []
    local = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    local |= {"loop", *make_environment().globals}
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name not in ROOTS and name.name not in local:
            close = tuple(difflib.get_close_matches(name.name, list(ROOTS), n=3, cutoff=0.6))
            found.append(UnknownField(name.name, name.lineno, close))
    for attr in tree.find_all(nodes.Getattr):
        root = attr.node
        known = isinstance(root, nodes.Name) and root.name in ROOTS and root.name not in local
        if known and attr.attr not in ROOTS[root.name]:
            everything = [f"{r}.{f}" for r, fields in ROOTS.items() for f in sorted(fields)]
            wanted = f"{root.name}.{attr.attr}"
            close = tuple(difflib.get_close_matches(wanted, everything, n=3, cutoff=0.6))
            found.append(UnknownField(wanted, attr.lineno, close))
    return sorted(found, key=lambda u: (u.line, u.field))


# --- the sparse record -----------------------------------------------------------------------------

_MARK = "\x00"


class _Absent(str):
    """An empty value that is visible in the output: falsy (so ``{% if %}`` and ``or`` guard it), but
    printed as a marker naming its field."""

    def __bool__(self) -> bool:
        return False


def sparse_catalog(settings: Settings) -> Catalog:
    """A record with only what every record has: names, an appointment time, a due date; no identifier,
    no phone, no participant display names, no Practitioner, Location or payer to read."""
    return build_catalog(
        settings,
        patient={"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Alex"]}]},
        appointment={
            "resourceType": "Appointment",
            "start": "2026-03-09T14:30:00Z",
            "participant": [{"actor": {"reference": "Location/1"}}, {"actor": {"reference": "Practitioner/1"}}],
        },
        payer=None,
        questionnaire={"resourceType": "Questionnaire", "title": "Intake questionnaire"},
        form_link="https://portal.example.org/forms/intake",
        due=datetime(2026, 3, 12, 13, 0, tzinfo=UTC),
    )


def _marked(catalog: Catalog) -> dict[str, dict[str, Any]]:
    return {
        root: {key: _Absent(f"{_MARK}{root}.{key}{_MARK}") if value == "" else value for key, value in group.items()}
        for root, group in catalog.items()
    }


_MARKED = re.compile(rf"{_MARK}([a-z_]+\.[a-z_]+){_MARK}", re.IGNORECASE)
# What a missing value leaves behind once it renders as nothing.
_DANGLING: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\(\s*\)"), "empty parentheses"),
    (re.compile(r"[^\S\n]+[,.;:!?)]"), "a space before punctuation"),
    (re.compile(r"\S[^\S\n]{2,}\S"), "a double space"),
    (re.compile(r"(?m)^[^\S\n]*[,.;:!?]"), "a line starting with punctuation"),
    (re.compile(r"[,;:(][^\S\n]*$"), "text ending in a dangling punctuation mark"),
)


def sparse_problems(compiled: Any, settings: Settings, catalog: Mapping[str, Any] | None = None) -> list[str]:
    """What reads wrong when ``compiled`` is rendered for a sparse record (empty list: nothing)."""
    try:
        text = render(compiled, _marked(dict(catalog or sparse_catalog(settings))))
    except TemplateRenderError as exc:
        return [f"does not render for a sparse record: {exc}"]
    return text_problems(text)


def text_problems(text: str) -> list[str]:
    """Empty merge fields (still marked) and dangling punctuation in a rendered text."""
    problems: list[str] = []
    empty = list(dict.fromkeys(m.group(1).lower() for m in _MARKED.finditer(text)))
    if empty:
        problems.append(
            "prints " + ", ".join(empty) + " although a record may have none: guard it with "
            "{% if " + empty[0] + " %}...{% endif %}"
        )
    plain = _MARKED.sub("", text)
    for pattern, what in _DANGLING:
        match = pattern.search(plain)
        if match:
            around = plain[max(0, match.start() - 20) : match.end() + 20].replace("\n", " ")
            problems.append(f"{what} when a value is missing: ...{around}...")
    return problems
