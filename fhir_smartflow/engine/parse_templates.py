"""Parse and check `templates/*.toml`; every part is compiled and test-rendered against the sample catalog."""

from __future__ import annotations

from collections.abc import Mapping

from fhir_smartflow.channels import ChannelSpec
from fhir_smartflow.config import Settings
from fhir_smartflow.engine import model as m
from fhir_smartflow.engine.checks import check_refs, checked_id, known_roles
from fhir_smartflow.engine.merge_fields import sparse_problems, unknown_fields
from fhir_smartflow.engine.model import Template
from fhir_smartflow.engine.templating import (
    TemplateRenderError,
    compile_template,
    make_environment,
    render,
    sample_catalog,
)
from fhir_smartflow.engine.tomlfiles import Checker, LoadError, SourceFile

# The keys of each table (the JSON Schema, engine/schema.py, is generated from these too).
TEMPLATE_KEYS = {"id", "name", "status", "methods", "subject", "body", "note_type", "prompt", "recipients"}
PROMPT_KEYS = {"text", "roles", "practitioners"}
RECIPIENTS_KEYS = {"practitioners", "groups", "roles"}
STATUSES = ("enabled", "disabled")


def parse_template(
    source: SourceFile,
    settings: Settings,
    renderers: dict[tuple[str, str], object],
    channels: Mapping[str, ChannelSpec],
) -> tuple[Template | None, list[LoadError]]:
    check = Checker(source)
    data = source.data
    check.unknown_keys(data, TEMPLATE_KEYS)
    tid = checked_id(check, data)
    name = check.get(data, "name", str, required=True)
    status = check.get(data, "status", str, default="enabled")
    if status not in STATUSES:
        check.error("status", f"must be 'enabled' or 'disabled', got {status!r}")
    methods = check.string_list(data, "methods")
    for method in methods:
        if method not in channels:
            check.error("methods", f"unknown method {method!r} (allowed: {', '.join(channels)})")
    subject = check.get(data, "subject", str, default="")
    body = check.get(data, "body", str, default="")
    note_type = check.get(data, "note_type", str, default="progress-note")
    if note_type not in m.NOTE_TYPES:
        check.error("note_type", f"unknown note type {note_type!r} (allowed: {', '.join(m.NOTE_TYPES)})")
    prompt = None
    raw_prompt = check.get(data, "prompt", dict)
    if raw_prompt is not None:
        check.unknown_keys(raw_prompt, PROMPT_KEYS, "prompt.")
        text = check.get(raw_prompt, "text", str, field="prompt.text", required=True, default="")
        roles = check.string_list(raw_prompt, "roles", field="prompt.roles")
        known_roles(check, roles, settings, "prompt.roles", "roles")
        practitioners = check.string_list(raw_prompt, "practitioners", field="prompt.practitioners")
        check_refs(check, practitioners, "practitioner", "prompt.practitioners", "practitioners")
        prompt = m.Prompt(text, roles, practitioners)
    recipients = m.Recipients()
    raw_recipients = check.get(data, "recipients", dict)
    if raw_recipients is not None:
        check.unknown_keys(raw_recipients, RECIPIENTS_KEYS, "recipients.")
        practitioners = check.string_list(raw_recipients, "practitioners", field="recipients.practitioners")
        check_refs(check, practitioners, "practitioner", "recipients.practitioners", "practitioners")
        groups = check.string_list(raw_recipients, "groups", field="recipients.groups")
        check_refs(check, groups, "group", "recipients.groups", "groups")
        roles = check.string_list(raw_recipients, "roles", field="recipients.roles")
        known_roles(check, roles, settings, "recipients.roles", "roles")
        recipients = m.Recipients(practitioners, groups, roles)
    if not body and not (prompt and prompt.text):
        check.error("body", "required (the message text), unless the template is only a record prompt")
    sparse: dict[str, tuple[str, ...]] = {}
    if tid:
        env = make_environment()
        sample = sample_catalog(settings)
        parts = {"subject": subject, "body": body, "prompt": prompt.text if prompt else ""}
        for part, text in parts.items():
            if not text:
                continue
            field, key = ("prompt.text", "text") if part == "prompt" else (part, part)
            unknown = unknown_fields(text)
            for item in unknown:
                check.error_at(field, item.describe(), _text_line(source, key, item.line))
            if unknown:
                continue
            try:
                compiled = compile_template(env, text, name=f"{tid} {part}")
                render(compiled, sample)
                renderers[(tid, part)] = compiled
            except TemplateRenderError as exc:
                check.error(field, f"does not render: {exc}", key=key)
                continue
            problems = sparse_problems(compiled, settings)
            if problems:
                sparse[field] = tuple(problems)
    if check.errors or not tid or not name:
        return None, check.errors
    return Template(
        tid, name, status, methods, subject, body, note_type, prompt, recipients, source.path, sparse_text=sparse
    ), []


def _text_line(source: SourceFile, key: str, line: int) -> int | None:
    """The file line of line ``line`` of the text set by ``key`` (a multi-line string may start on the
    next line: TOML drops a newline right after the opening quotes)."""
    start = source.line_of(key)
    if start is None:
        return None
    opening = source.text.splitlines()[start - 1].split("=", 1)[-1].strip()
    first = start + 1 if opening in ('"""', "'''") else start
    return first + line - 1
