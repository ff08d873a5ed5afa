"""``docs``: one Markdown page per flow with a Mermaid flowchart, plus an index.

Output is deterministic (sorted, no timestamps, paths as given) so it can be committed and reviewed as a diff.
"""

from __future__ import annotations

from pathlib import Path

from fhir_smartflow.engine.model import Action, Due, Duration, Engine, Flow, Owner, Recurring, Template

_ANCHORS = {
    "event": "the trigger event",
    "admission": "admission",
    "discharge": "discharge",
    "appointment_start": "the appointment start",
    "first_kept_appointment": "the first kept appointment",
    "insurance_effective": "the insurance effective date",
}


def _plural(amount: int, unit: str) -> str:
    return f"{amount} {unit if amount != 1 else unit.rstrip('s')}"


def describe_due(due: Due | None, weekend: str = "keep") -> str:
    if due is None:
        return "no due date"
    text = f"{_plural(due.amount, due.unit)} {due.direction} {_ANCHORS.get(due.anchor, due.anchor)}"
    if weekend != "keep":
        text += f" (weekends: {weekend})"
    return text


def describe_duration(d: Duration | None, suffix: str) -> str:
    return f"{_plural(d.amount, d.unit)} {suffix}" if d else "none"


def describe_owner(owner: Owner | None) -> str:
    if owner is None:
        return "unassigned"
    if owner.kind == "patient":
        return "the patient"
    return f"{owner.kind} `{owner.value}`"


def describe_recurring(r: Recurring | None) -> str:
    if r is None:
        return "no"
    what = f"cron `{r.cron}`" if r.cron else (r.every or "?")
    if r.count is not None:
        what += f", {r.count} times"
    if r.until is not None:
        what += f", until {r.until.isoformat()}"
    return what


def _label(text: str) -> str:
    """Mermaid-safe label text."""
    escaped = text.replace("`", "'").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    return " ".join(escaped.split())


def _cell(code: str) -> str:
    """Inline code inside a Markdown table cell: a literal | would end the cell."""
    return "`" + " ".join(code.split()).replace("|", "\\|") + "`"


def mermaid(flow: Flow) -> str:
    lines = ["flowchart TD", f'    T(["{_label(flow.trigger)}"])']
    source = "T"
    if flow.condition:
        lines.append(f'    C{{"{_label(flow.condition)}"}}')
        lines.append("    T --> C")
        lines.append('    C -->|"false"| X(["no action"])')
        source = "C"
    edge = ' -->|"true"| ' if flow.condition else " --> "
    for action in flow.actions:
        node = f"A{action.index + 1}"
        parts = [f"{action.index + 1}. {action.name}", action.type]
        if action.due:
            parts.append(f"due {describe_due(action.due)}")
        lines.append(f'    {node}["{"<br/>".join(_label(p) for p in parts)}"]')
        lines.append(f"    {source}{edge}{node}")
        if action.reminder:
            lines.append(f'    {node}R("reminder {_label(describe_duration(action.reminder, "before due"))}")')
            lines.append(f"    {node} -.-> {node}R")
        if action.recurring:
            lines.append(f'    {node} -->|"{_label(describe_recurring(action.recurring))}"| {node}')
    if flow.not_after:
        lines.append(f'    N(["{_label(flow.not_after)}"]) -.->|"cancels open tasks"| T')
    return "\n".join(lines)


def _template_block(template: Template | None, template_id: str) -> list[str]:
    if template is None:
        return [f"- Template: `{template_id}` (not found)"]
    out = [f"- Template: `{template.id}` — {template.name} ({template.status})"]
    if template.subject:
        out.append(f"- Subject: {template.subject}")
    if template.body:
        out += ["", "```jinja", template.body.strip(), "```"]
    if template.prompt:
        out.append(f"- Record prompt: {template.prompt.text}")
    return out


def action_section(action: Action, engine: Engine) -> list[str]:
    out = [
        f"### {action.index + 1}. {action.name}",
        "",
        f"- Type: `{action.type}` · item: `{action.item}`",
        f"- Due: {describe_due(action.due, action.weekend)}",
        f"- Owner: {describe_owner(action.owner)}",
        f"- Reminder: {describe_duration(action.reminder, 'before the due date')}",
        f"- Recurring: {describe_recurring(action.recurring)}",
        f"- Methods: {', '.join(action.methods) or 'none (FHIR only)'}",
        f"- Completes the workflow: {'yes' if action.completes_workflow else 'no'}",
    ]
    if action.overdue and action.overdue.notify_owner:
        out.append("- Overdue: marked overdue at the due date, owner notified")
    if action.notify_on_failure:
        out.append("- Delivery failure: staff message to the owner")
    if action.template:
        out += _template_block(engine.templates.get(action.template), action.template)
    return [*out, ""]


def flow_page(flow: Flow, engine: Engine) -> str:
    lines = [
        f"# {flow.name}",
        "",
        f"`{flow.id}` · version {flow.version} · {'enabled' if flow.enabled else 'disabled'} · `{flow.file}`",
        "",
    ]
    if flow.description:
        lines += [flow.description.strip(), ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| Trigger | `{flow.trigger}` |",
        f"| Condition | {_cell(flow.condition) if flow.condition else 'always'} |",
        f"| Stops on | {f'`{flow.not_after}` (open tasks cancelled)' if flow.not_after else '—'} |",
        "",
        "```mermaid",
        mermaid(flow),
        "```",
        "",
        "## Actions",
        "",
    ]
    for action in flow.actions:
        lines += action_section(action, engine)
    return "\n".join(lines).rstrip() + "\n"


def index_page(engine: Engine) -> str:
    lines = ["# Smart Flows", "", "| Flow | Trigger | Enabled | Actions |", "|---|---|---|---|"]
    for fid, flow in sorted(engine.flows.items()):
        lines.append(
            f"| [{flow.name}]({fid}.md) | `{flow.trigger}` | {'yes' if flow.enabled else 'no'} | {len(flow.actions)} |"
        )
    return "\n".join(lines) + "\n"


def render_docs(engine: Engine) -> dict[str, str]:
    """File name → Markdown text: ``index.md`` and ``<flow id>.md`` per flow."""
    pages = {"index.md": index_page(engine)}
    for fid, flow in sorted(engine.flows.items()):
        pages[f"{fid}.md"] = flow_page(flow, engine)
    return pages


def write_docs(engine: Engine, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_docs(engine).items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
