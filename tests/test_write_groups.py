"""Write groups: in a batch job, the first writes of events for different patients go to the server in
one shared pair of transactions (worker/write_groups.py), and what ends up on the server is what one
job per event writes.

Real parts: the suite's Redis, the sandbox FHIR store over HTTP (its request log counts the
transactions), the whole service runtime (`build_service_runtime`, example flows, portal / SMS / email
deliveries with no provider configured) and a real rq worker draining real jobs. Each scenario runs as
one batch job and as one job per event, on two fresh stores, and both must come out the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_smartflow.config import load_settings
from fhir_smartflow.events import ResourceEvent
from fhir_smartflow.worker import runtime
from fhir_smartflow.worker.history import RunHistory
from tests.support.events import drain
from tests.support.fhir import FHIR, Sandbox, search_all, serve_sandbox, set_faults
from tests.support.net import ThreadedWsgiServer
from tests.support.service import write_service_config

pytestmark = pytest.mark.integration

ServeApp = Callable[..., ThreadedWsgiServer]
WRITTEN = ("Task", "Communication", "Provenance")


@pytest.fixture
def stores(serve_app: ServeApp) -> Iterator[Callable[[], Sandbox]]:
    made: list[Sandbox] = []

    def make() -> Sandbox:
        made.append(serve_sandbox(serve_app))
        return made[-1]

    yield make
    for sandbox in made:
        sandbox.close()


def adult(pid: str, version: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": version},
        "birthDate": "1980-05-01",
        "name": [{"given": ["Ada"], "family": f"Example-{pid}"}],
        "telecom": [{"system": "email", "value": f"{pid}@example.org"}],
        **extra,
    }


def put(base: str, resource: dict[str, Any]) -> None:
    answer = requests.put(f"{base}/Patient/{resource['id']}", json=resource, headers=FHIR, timeout=5)
    assert answer.status_code in (200, 201), answer.text


def full_resource(resource: dict[str, Any], number: int, interaction: str = "create") -> ResourceEvent:
    """A full-resource notification of ``resource``, as the webhook queues it."""
    return ResourceEvent(
        subscription="smartflow-patient",
        resource_type="Patient",
        resource_id=resource["id"],
        received_at="2026-11-25T10:00:00+00:00",
        event_number=number,
        version_id=resource["meta"]["versionId"],
        timestamp=f"2026-11-25T10:00:{number:02d}Z",
        interaction=interaction,
        payload_content="full-resource",
        resource=resource,
        body_hash=f"h{number}",
    )


def service(tmp_path: Path, base: str, redis_url: str, prefix: str, fhir_extra: str = "") -> runtime.Runtime:
    """The whole service on store ``base``; ``fhir_extra``: more `[fhir]` keys."""
    (tmp_path / prefix.strip(":")).mkdir()
    config = write_service_config(tmp_path / prefix.strip(":"), prefix=prefix, redis_url=redis_url, fhir_base=base)
    if fhir_extra:  # the [fhir] table is the last before [engine]
        config.write_text(config.read_text().replace("[engine]", f"{fhir_extra}\n[engine]"))
    return runtime.build_service_runtime(load_settings(config, env={}))


def written(base: str) -> dict[str, list[str]]:
    """Everything the flows wrote, by type: each business identifier (Provenance: its meta.tag) with the
    resource's status. Each resource once: a duplicate shows as a repeated line."""
    out: dict[str, list[str]] = {}
    for rtype in WRITTEN:
        values = []
        for resource in search_all(base, rtype):
            if rtype == "Provenance":
                values += [tag["code"] for tag in resource.get("meta", {}).get("tag", [])]
            else:
                values += [f"{i['value']} {resource.get('status')}" for i in resource.get("identifier", [])]
        out[rtype] = sorted(values)
    return out


def transactions(sandbox: Sandbox) -> int:
    """Transaction (and batch) Bundles the store received: POSTs to its base."""
    return sum(1 for r in sandbox.log.requests if r.method == "POST" and r.path in ("", "/"))


def triggers_run(rt: runtime.Runtime) -> list[str]:
    """The run history a user sees: each trigger that ran (its id names the focus and its version)."""
    return sorted(
        record["trigger"]["id"] for record in RunHistory.from_settings(rt.settings, rt.redis).query(limit=500)
    )


def two_stores(stores: Callable[[], Sandbox], patients: list[dict[str, Any]]) -> tuple[Sandbox, Sandbox]:
    """Two fresh stores holding ``patients``."""
    pair = stores(), stores()
    for base in pair:
        for patient in patients:
            put(base, patient)
    return pair


def both_ways(
    stores: Callable[[], Sandbox],
    redis_url: str,
    tmp_path: Path,
    patients: list[dict[str, Any]],
    events: list[ResourceEvent],
) -> tuple[Sandbox, Sandbox]:
    """The events as one batch job on one store and as one job each on another (both start with
    ``patients``), every job done, the same runs in the history of both; the two stores."""
    grouped, single = two_stores(stores, patients)
    grouped_rt, single_rt = service(tmp_path, grouped, redis_url, "wg1:"), service(tmp_path, single, redis_url, "wg2:")
    assert drain(grouped_rt, events, batch=True) == []
    assert drain(single_rt, events, batch=False) == []
    assert triggers_run(grouped_rt) == triggers_run(single_rt)
    return grouped, single


def test_a_batch_of_patients_shares_two_transactions_and_writes_what_one_job_each_writes(
    stores: Callable[[], Sandbox], redis_url: str, tmp_path: Path
) -> None:
    patients = [adult(f"p{n}") for n in range(1, 7)]
    events = [full_resource(patient, number) for number, patient in enumerate(patients, start=1)]

    grouped, single = both_ways(stores, redis_url, tmp_path, patients, events)

    assert written(grouped) == written(single)
    assert len(written(grouped)["Task"]) == 2 * len(patients)  # the intake packet and its review
    # Each event's first writes (its intake Task and Communications, with their Provenances) take two
    # transactions on their own: in the batch, the six events share those two.
    assert transactions(single) - transactions(grouped) == 2 * len(patients) - 2


def test_events_of_one_patient_in_a_batch_each_see_the_earlier_ones_work(
    stores: Callable[[], Sandbox], redis_url: str, tmp_path: Path
) -> None:
    """Registered, then discharged (the intake workflow ends: its open Tasks are cancelled), then the
    record edited again (no second discharge: the prior state says it was inactive already): each event's
    triggers rest on the one before, with other patients' events between them."""
    p1, p2, p3 = adult("p1", active=True), adult("p2"), adult("p3")
    discharged = adult("p1", version="2", active=False)
    edited = adult("p1", version="3", active=False, gender="female")
    events = [
        full_resource(p1, 1),
        full_resource(p2, 2),
        full_resource(discharged, 3, "update"),
        full_resource(p3, 4),
        full_resource(edited, 5, "update"),
    ]

    grouped, single = both_ways(stores, redis_url, tmp_path, [edited, p2, p3], events)

    assert written(grouped) == written(single)
    assert "cancelled" in {line.split()[-1] for line in written(single)["Task"]}


def test_a_refused_shared_transaction_leaves_each_event_to_write_its_own(
    stores: Callable[[], Sandbox], redis_url: str, tmp_path: Path
) -> None:
    patients = [adult(f"p{n}") for n in range(1, 4)]
    events = [full_resource(patient, number) for number, patient in enumerate(patients, start=1)]
    grouped, single = two_stores(stores, patients)
    rt = service(tmp_path, grouped, redis_url, "wg1:")
    set_faults(grouped, fail_first=1, methods=["POST"], statuses=[422])  # the shared one: refused

    assert drain(rt, events, batch=True) == []
    assert drain(service(tmp_path, single, redis_url, "wg2:"), events, batch=False) == []

    assert written(grouped) == written(single)
    assert transactions(grouped) == transactions(single) + 1  # the refused one, then each its own


def test_write_groups_can_be_turned_off(stores: Callable[[], Sandbox], redis_url: str, tmp_path: Path) -> None:
    patients = [adult(f"p{n}") for n in range(1, 4)]
    events = [full_resource(patient, number) for number, patient in enumerate(patients, start=1)]
    off, single = two_stores(stores, patients)

    rt = service(tmp_path, off, redis_url, "wg1:", fhir_extra="events_per_transaction = 0")
    assert drain(rt, events, batch=True) == []
    assert drain(service(tmp_path, single, redis_url, "wg2:"), events, batch=False) == []

    assert written(off) == written(single)
    assert transactions(off) == transactions(single)
