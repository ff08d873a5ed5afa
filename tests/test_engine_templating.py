"""Sandboxed templates and the merge-field catalog."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError

from fhir_smartflow.engine.templating import (
    CATALOG_FIELDS,
    TemplateRenderError,
    build_catalog,
    compile_template,
    make_environment,
    render,
    sample_catalog,
)
from tests.support.engine import SETTINGS, appointment, patient

ROOT_DOC = __import__("pathlib").Path(__file__).resolve().parent.parent / "docs" / "merge-fields.md"


def test_catalog_from_resources_in_clinic_time_zone():
    catalog = build_catalog(
        SETTINGS,
        patient=patient(),
        appointment=appointment("a1", "booked", "2026-11-02T14:30:00Z", "x"),
        payer={"name": "Acme Health Plan"},
        questionnaire={"title": "PHQ-9"},
        form_link="https://portal.example.org/f",
    )
    assert catalog["patient"] == {
        "first_name": "Alex",
        "last_name": "Rivera",
        "full_name": "Alex Rivera",
        "preferred_name": "Alex",
        "birth_date": "1985-06-15",
        "mrn": "MRN-0042",
        "phone": "+15555550100",
    }
    assert catalog["appointment"] == {
        "start": "Monday, November 2, 2026 at 9:30 AM EST",
        "date": "Monday, November 2, 2026",
        "time": "9:30 AM EST",
        "location": "Main Street Clinic",
        "clinician": "Dr. Jordan Lee",
    }
    assert catalog["insurance"]["name"] == "Acme Health Plan" and catalog["form"]["title"] == "PHQ-9"
    assert catalog["clinic"] == {"name": "Example Behavioral Health", "phone": "(555) 555-0199"}


def test_every_documented_field_exists_in_the_catalog():
    sample = sample_catalog(SETTINGS)
    for name in CATALOG_FIELDS:
        group, key = name.split(".")
        assert key in sample[group], name
    documented = ROOT_DOC.read_text()
    for name in CATALOG_FIELDS:
        assert f"`{name}`" in documented, name


def test_missing_values_render_empty_not_undefined():
    empty = build_catalog(SETTINGS)
    template = compile_template(make_environment(), "Hi {{ patient.first_name }} {{ insurance.name }}!")
    assert render(template, empty) == "Hi  !"


@pytest.mark.parametrize(
    "source", ["{{ ''.__class__ }}", "{{ patient.__class__.__mro__ }}", "{{ cycler.__init__.__globals__ }}"]
)
def test_python_internals_are_blocked(source):
    env = make_environment()
    with pytest.raises(TemplateRenderError):
        render(compile_template(env, source), sample_catalog(SETTINGS))
    with pytest.raises(SecurityError):
        env.from_string("{{ ''.__class__.__mro__[1].__subclasses__() }}").render()


def test_unknown_field_is_an_error():
    with pytest.raises(TemplateRenderError, match="nickname"):
        render(compile_template(make_environment(), "{{ patient.nickname }}"), sample_catalog(SETTINGS))


def test_ordinary_loops_filters_and_formatting_stay_within_the_bounds():
    source = (
        "{% for i in range(3) %}{{ loop.index }}/{{ loop.length }}{% if loop.last %}!{% endif %} {% endfor %}"
        "{{ 'ab' * 3 }} {{ '%05d' % 42 }} {{ patient.first_name|upper|center(9) }}|{{ [3, 1, 2]|sort|join(',') }}"
    )
    text = render(compile_template(make_environment(), source), sample_catalog(SETTINGS))
    assert text == "1/3 2/3 3/3! ababab 00042    ALEX  |1,2,3"


@pytest.mark.parametrize(
    ("source", "bound"),
    [
        ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}", "calls"),
        ("{{ 'x'|center(10**8) }}", "width or count"),
        ("{{ 'x'.ljust(10**8) }}", "width or count"),
        ("{{ '%0100000000d' % 1 }}", "100,000 characters"),
        ("{{ 7 ** 100000 }}", "bits"),
        ("{% for i in range(5000) %}{{ 'x' * 50 }}{% endfor %}", "output of more than"),
    ],
)
def test_runaway_templates_stop_at_a_bound_naming_the_template(source, bound):
    template = compile_template(make_environment(), source, name="runaway body")
    with pytest.raises(TemplateRenderError, match=f"template runaway body: too costly to render: .*{bound}"):
        render(template, sample_catalog(SETTINGS))
