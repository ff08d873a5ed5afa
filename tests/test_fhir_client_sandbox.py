"""The FhirClient against the sandbox FHIR store over real HTTP: what actually goes out on the wire."""

from __future__ import annotations

import pytest

from fhir_smartflow.fhir.client import FhirClient
from fhir_smartflow.fhir.tokens import StaticTokenProvider
from fhir_smartflow.retry import RetryPolicy

pytestmark = pytest.mark.integration


def test_static_bearer_token_goes_out_as_is(sandbox_server: str) -> None:
    client = FhirClient(sandbox_server, auth=StaticTokenProvider("s3cret"), retry=RetryPolicy(max_retries=0))
    seen: list[str] = []
    client.http.session.hooks["response"].append(lambda r, *a, **k: seen.append(r.request.headers["Authorization"]))
    assert client.capabilities()["resourceType"] == "CapabilityStatement"
    assert seen == ["Bearer s3cret"]
