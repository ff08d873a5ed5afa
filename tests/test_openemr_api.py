"""StandardApi at its HTTP edge (``responses``): what a lost answer or an unreachable OpenEMR becomes."""

from __future__ import annotations

import pytest
import requests
import responses

from fhir_smartflow.fhir.tokens import StaticTokenProvider
from fhir_smartflow.openemr.api import StandardApi
from fhir_smartflow.openemr.errors import OpenEmrAmbiguousWrite, OpenEmrTransientError

API = "https://emr.example.org/apis/default/api"


@pytest.fixture
def api() -> StandardApi:
    return StandardApi(API, StaticTokenProvider("t"), timeout=1)


@responses.activate
def test_a_write_whose_answer_never_came_is_ambiguous_and_not_resent(api: StandardApi) -> None:
    responses.post(f"{API}/patient/1/message", body=requests.ReadTimeout("read timed out"))
    with pytest.raises(OpenEmrAmbiguousWrite, match="no answer within 1s"):
        api.post_message("1", {"body": "x"})
    assert len(responses.calls) == 1


@responses.activate
def test_a_read_without_answer_or_an_unreachable_server_is_transient(api: StandardApi) -> None:
    responses.get(f"{API}/patient/1/document", body=requests.ReadTimeout("read timed out"))
    with pytest.raises(OpenEmrTransientError, match="did not answer in time") as slow:
        api.list_documents("1", "Smart Flows")
    assert not isinstance(slow.value, OpenEmrAmbiguousWrite)
    responses.post(f"{API}/patient/1/message", body=requests.ConnectionError("refused"))
    with pytest.raises(OpenEmrTransientError, match="OpenEMR unreachable: ConnectionError") as down:
        api.post_message("1", {"body": "x"})
    assert not isinstance(down.value, OpenEmrAmbiguousWrite)
    assert responses.calls[-1].request.headers["Authorization"] == "Bearer t"
