"""validate and lint apply one duplicate-automation rule (engine/duplicates.py), so they agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_smartflow.config import load_settings
from fhir_smartflow.flowfiles import load_paths
from fhir_smartflow.tooling.lint import lint

LINT = Path(__file__).resolve().parent / "fixtures" / "lint" / "bad"
MAPPINGS, TEMPLATE = LINT / "mappings.toml", LINT / "template-sms.toml"
FLOW = """id = "{id}"
name = "{id}"
trigger = "appointment.no_show"
{condition}
[[actions]]
name = "Text"
category = "smartflow"
type = "patient-message"
item = "{item}"
template = "lint-sms"
methods = ["sms"]
"""


def _write(tmp_path: Path, flow_id: str, item: str, condition: str = "") -> None:
    (tmp_path / f"{flow_id}.toml").write_text(FLOW.format(id=flow_id, item=item, condition=condition))


def _validate_and_lint(tmp_path: Path) -> tuple[list[str], list[tuple[str, str, int | None]]]:
    settings = load_settings(env={})
    _, errors = load_paths([str(MAPPINGS)], [str(tmp_path)], [str(TEMPLATE)], settings)
    findings = lint([str(MAPPINGS), str(TEMPLATE), str(tmp_path)], settings)
    return [f"{Path(e.file).name}:{e.line}: {e.field}" for e in errors], [
        (f.code, Path(f.file).name, f.line) for f in findings
    ]


@pytest.mark.parametrize("items", [("same", "same"), ("a-text", "b-text")], ids=["same item", "same template"])
def test_the_same_message_twice_is_an_error_for_both(tmp_path: Path, items: tuple[str, str]) -> None:
    _write(tmp_path, "a", items[0])
    _write(tmp_path, "b", items[1])
    errors, findings = _validate_and_lint(tmp_path)
    assert errors == ["b.toml:9: actions[1].item"]
    assert findings == [("duplicate-automation", "b.toml", 9)]  # one finding: validate's error folds into it


def test_conditions_compare_without_whitespace_and_a_one_sided_condition_only_warns(tmp_path: Path) -> None:
    _write(tmp_path, "a", "a-text", condition="condition = \"status = 'noshow'\"")
    _write(tmp_path, "b", "b-text", condition="condition = \"status  =  'noshow'\"")
    errors, findings = _validate_and_lint(tmp_path)
    assert errors == ["b.toml:9: actions[1].item"] and findings == [("duplicate-automation", "b.toml", 9)]
    _write(tmp_path, "b", "b-text")
    errors, findings = _validate_and_lint(tmp_path)
    assert errors == [] and findings == [("overlapping-flows", "b.toml", 3)]
