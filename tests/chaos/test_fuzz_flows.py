"""Fuzz flow and template files through the loader and ``fhir-smartflow validate``.

Whatever a clinic administrator writes, the loader never raises and every problem is reported as
``file[:line]: field: reason`` naming the file it is in. In-process through ``load_paths`` (fast,
many examples), plus one real ``validate`` subprocess (exit 1, no traceback, one line per problem).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.procs import ROOT
from tests.support.toml import to_toml

pytestmark = [pytest.mark.chaos, pytest.mark.integration]  # integration: one test runs `validate` for real

FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
ERROR_LINE = re.compile(r"^(?P<file>[^:]+?)(?::(?P<line>\d+))?: (?P<field>[^:]+): (?P<reason>.+)$")
MAPPINGS = str(ROOT / "mappings" / "patient.toml")  # the one the fuzzed flow needs: keeps loads fast

VALID_FLOW: dict[str, Any] = {
    "id": "fuzz-intake",
    "name": "Fuzz intake",
    "enabled": True,
    "version": "1",
    "trigger": "patient.registered",
    "actions": [
        {
            "name": "Send intake packet",
            "category": "smartflow",
            "type": "send-form",
            "item": "http://example.org/Questionnaire/intake",
            "template": "fuzz-template",
            "methods": ["portal"],
            "due": {"amount": 3, "unit": "days", "direction": "after", "anchor": "event"},
            "owner": "patient",
        }
    ],
}
VALID_TEMPLATE: dict[str, Any] = {
    "id": "fuzz-template",
    "name": "Fuzz template",
    "status": "enabled",
    "methods": ["portal"],
    "subject": "Forms from {{ clinic.name }}",
    "body": "Hi {{ patient.first_name }}, please complete {{ form.title }} by {{ task.due }}: {{ form.link }}",
}


def load(tmp: Path, flow_text: str | None = None, template_text: str | None = None) -> tuple[Any, list[Any]]:
    from fhir_smartflow.config import load_settings
    from fhir_smartflow.flowfiles import load_paths

    flows, templates = tmp / "flows", tmp / "templates"
    flows.mkdir(exist_ok=True)
    templates.mkdir(exist_ok=True)
    (flows / "fuzz.toml").write_text(flow_text if flow_text is not None else to_toml(VALID_FLOW), encoding="utf-8")
    tpl = template_text if template_text is not None else to_toml(VALID_TEMPLATE)
    (templates / "fuzz-template.toml").write_text(tpl, encoding="utf-8")
    return load_paths([MAPPINGS], [str(flows)], [str(templates)], load_settings(env={}))


def assert_well_reported(errors: list[Any], must_fail: bool, file_hint: str) -> None:
    for error in errors:
        text = str(error)
        assert "\n" not in text.strip() or text.count("\n") < 3, f"multi-line error: {text!r}"
        m = ERROR_LINE.match(text.splitlines()[0])
        assert m, f"not 'file[:line]: field: reason': {text!r}"
        assert error.file and error.field and error.reason, f"empty part in {error!r}"
        assert "Traceback" not in text
    if must_fail:
        assert errors, "an invalid file loaded without any error"
        assert any(file_hint in e.file for e in errors), f"no error names {file_hint}: {[str(e) for e in errors]}"


def test_the_valid_pair_loads(tmp_path: Path) -> None:
    """The control: the mutations below start from files that load cleanly."""
    engine, errors = load(tmp_path)
    assert errors == [] and engine is not None
    assert "fuzz-intake" in engine.flows


@FUZZ
@given(text=st.text(max_size=400))
def test_arbitrary_text_as_a_flow(tmp_path: Path, text: str) -> None:
    engine, errors = load(tmp_path, flow_text=text)
    assert_well_reported(errors, must_fail=engine is None, file_hint="fuzz.toml")


SCALARS = st.one_of(
    st.integers(), st.booleans(), st.text(max_size=30), st.floats(allow_nan=False, allow_infinity=False)
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text("abcdefgh", min_size=1, max_size=5), SCALARS, max_size=3),
)
REQUIRED_TOP = ["id", "trigger", "actions"]
REQUIRED_ACTION = ["name", "category", "type"]


@FUZZ
@given(
    where=st.sampled_from(["top", "action"]),
    key=st.sampled_from(sorted({*VALID_FLOW, *VALID_FLOW["actions"][0], "conditon", "unknown"})),
    value=VALUES,
    drop=st.booleans(),
)
def test_mutated_flow(tmp_path: Path, where: str, key: str, value: Any, drop: bool) -> None:
    doc = {**VALID_FLOW, "actions": [dict(VALID_FLOW["actions"][0])]}
    target = doc if where == "top" else doc["actions"][0]
    if drop:
        target.pop(key, None)
    else:
        target[key] = value
    engine, errors = load(tmp_path, flow_text=to_toml(doc))
    definitely_invalid = drop and key in (REQUIRED_TOP if where == "top" else REQUIRED_ACTION)
    if not drop and key in ("enabled",) and not isinstance(value, bool):
        definitely_invalid = True
    if not drop and key == "category" and where == "action" and value != "smartflow":
        definitely_invalid = True
    assert_well_reported(errors, must_fail=definitely_invalid or engine is None, file_hint="fuzz.toml")


JINJA_BITS = st.sampled_from(
    ["{{", "}}", "{%", "%}", "{#", "#}", "|", "patient.first_name", "patient.nope", "form.title", " if ", " for ",
     "endif", "()", "[0]", "'x'", "clinic.name", "task.due", "upper", "\\", "\n", "x"]
)  # fmt: skip


@FUZZ
@given(parts=st.lists(JINJA_BITS, max_size=12))
def test_fuzzed_template_bodies(tmp_path: Path, parts: list[str]) -> None:
    template = {**VALID_TEMPLATE, "body": "".join(parts)}
    engine, errors = load(tmp_path, template_text=to_toml(template))
    assert_well_reported(errors, must_fail=engine is None, file_hint="fuzz-template.toml")


@pytest.mark.parametrize(
    "body",
    ["Hi {{ patient.middle_name }}", "{{ patient.first_name ", "{% if %}", "{{ nosuch.field }}", "{% endfor %}"],
)
def test_broken_templates_are_load_errors(tmp_path: Path, body: str) -> None:
    engine, errors = load(tmp_path, template_text=to_toml({**VALID_TEMPLATE, "body": body}))
    assert engine is None
    assert_well_reported(errors, must_fail=True, file_hint="fuzz-template.toml")


def test_validate_command_reports_without_traceback(tmp_path: Path, run_cli) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "not-toml.toml").write_text("id = \n[[actions]\n", encoding="utf-8")
    (flows / "wrong-types.toml").write_text(to_toml({**VALID_FLOW, "id": "wrong-types", "enabled": "yes"}), "utf-8")
    (flows / "no-actions.toml").write_text(to_toml({k: v for k, v in VALID_FLOW.items() if k != "actions"}), "utf-8")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "fuzz-template.toml").write_text(to_toml(VALID_TEMPLATE), encoding="utf-8")
    env = {
        "SMARTFLOW_ENGINE_MAPPINGS": MAPPINGS,
        "SMARTFLOW_ENGINE_FLOWS": str(flows),
        "SMARTFLOW_ENGINE_TEMPLATES": str(templates),
        "PATH": "/usr/bin:/bin",
    }
    result = run_cli("validate", env=env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, out
    for line in lines:
        assert ERROR_LINE.match(line), f"not 'file[:line]: field: reason': {line!r}"
    for name in ("not-toml.toml", "wrong-types.toml", "no-actions.toml"):
        assert any(name in line for line in lines), f"{name} not reported:\n{out}"
