"""Every JSON example in docs/writeback.md is a valid R4B resource (the docs cannot drift from the models)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fhir_smartflow.engine.references import reference_type_problems
from fhir_smartflow.engine.validation import ResourceInvalid, validate_resource

DOC = Path(__file__).resolve().parent.parent / "docs" / "writeback.md"
EXAMPLES = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_doc_has_one_example_per_resource_type() -> None:
    types = sorted({json.loads(e)["resourceType"] for e in EXAMPLES})
    assert types == ["Communication", "DocumentReference", "Flag", "Provenance", "Task"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: json.loads(e)["resourceType"])
def test_doc_example_validates(example: str) -> None:
    validate_resource(json.loads(example))
    assert reference_type_problems(json.loads(example)) == []  # reference target types R4 allows


def test_validator_rejects_a_broken_example() -> None:
    broken = json.loads(EXAMPLES[0])
    del broken["intent"]
    with pytest.raises(ResourceInvalid, match="intent"):
        validate_resource(broken)
