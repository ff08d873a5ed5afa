"""Polling bridge against the OpenEMR emulator over real HTTP, with real Redis and the real rq job."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import requests
from rq import SimpleWorker

from fhir_smartflow.fhir.errors import TokenRefused
from fhir_smartflow.fhir.oauth import ClientCredentialsTokenProvider, TokenRequest, post_token
from fhir_smartflow.fhir.smart import CLIENT_ASSERTION_TYPE, PrivateKeyJwt, client_assertion, smart_backend_services
from fhir_smartflow.ingest.poll import (
    DATE_WINDOW,
    FULL_SCAN,
    LAST_UPDATED,
    UNSUPPORTED,
    FullScanTooLarge,
    NothingToPoll,
    build_poller,
)
from fhir_smartflow.ingest.poll_plan import own_strategy
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import make_queue
from fhir_smartflow.worker.runtime import build_runtime, install
from fhir_smartflow.worker.seams import RecordingDispatcher
from tests.support.openemr import CLIENT_ID, ENV, KEY_ID, authorize, book_appointment, make_settings, rsa_pem
from tests.support.openemr_emulator import OpenEmrEmulator
from tests.support.openemr_emulator_scopes import CURRENT, DEV

pytestmark = pytest.mark.integration


def backend_services(emulator: OpenEmrEmulator, pem: bytes, scopes: str) -> ClientCredentialsTokenProvider:
    """The read token as `[fhir] auth = "smart-backend"` builds it (endpoint discovered from the FHIR base)."""
    return smart_backend_services(emulator.fhir_base, PrivateKeyJwt(CLIENT_ID, pem, kid=KEY_ID), scopes=scopes)


def run_worker(settings, conn: redis.Redis) -> RecordingDispatcher:
    """Run the real process_event job over everything queued (burst), with the recording dispatcher."""
    rt = build_runtime(settings, conn)
    install(rt)
    try:
        SimpleWorker([rt.queue], connection=conn).work(burst=True)
    finally:
        install(None)
    return rt.dispatcher


def test_client_credentials_assertion_is_verified_and_only_reads_granted(
    emulator: OpenEmrEmulator, private_pem: bytes
) -> None:
    auth = backend_services(emulator, private_pem, "system/Patient.read system/Task.write")
    with pytest.raises(TokenRefused, match="invalid_scope"):  # the dev build knows no system/Task.write
        auth.token()
    v2 = backend_services(emulator, private_pem, "system/Patient.rs")
    with pytest.raises(TokenRefused, match="invalid_scope"):  # nor any v2 scope
        v2.token()
    auth = backend_services(emulator, private_pem, "system/Patient.read system/Encounter.read")
    assert auth.token() and auth.granted_scopes() == "system/Patient.read system/Encounter.read"
    session = requests.Session()
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.read",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": client_assertion(CLIENT_ID, emulator.token_url, private_pem, KEY_ID),
    }
    assert post_token(session, TokenRequest(emulator.token_url, form), 5)["expires_in"] == 300
    with pytest.raises(TokenRefused) as replay:
        post_token(session, TokenRequest(emulator.token_url, form), 5)  # same jti again
    assert replay.value.error == "invalid_client"
    stranger = {**form, "client_assertion": client_assertion(CLIENT_ID, emulator.token_url, rsa_pem(), KEY_ID)}
    with pytest.raises(TokenRefused, match="invalid_client"):
        post_token(session, TokenRequest(emulator.token_url, stranger), 5)
    wrong_aud = {**form, "client_assertion": client_assertion(CLIENT_ID, emulator.fhir_base, private_pem, KEY_ID)}
    with pytest.raises(TokenRefused, match="invalid_client"):
        post_token(session, TokenRequest(emulator.token_url, wrong_aud), 5)


def openemr_settings(emu: OpenEmrEmulator, redis_url: str, key_file: Path, **poll):
    settings = make_settings(emu, redis_url, key_file, **poll)
    return settings


EXPECTED = {
    DEV: {
        "Appointment": own_strategy("Appointment"),  # no FHIR Appointment: the Standard API's list
        "Encounter": FULL_SCAN,
        "Patient": FULL_SCAN,  # no _lastUpdated declared
        "QuestionnaireResponse": UNSUPPORTED,
    },
    CURRENT: {
        "Appointment": DATE_WINDOW,
        "Encounter": LAST_UPDATED,
        "Patient": LAST_UPDATED,
        "QuestionnaireResponse": LAST_UPDATED,
    },
}


def test_strategies_come_from_the_capability_statement(any_emulator, redis_url, redis_conn, key_file) -> None:
    poller = build_poller(make_settings(any_emulator, redis_url, key_file), redis_conn, env=ENV)
    assert {p.resource_type: p.strategy for p in poller.plans()} == EXPECTED[any_emulator.mode]


def test_new_patients_are_queued_once_and_a_second_poll_doubles_nothing(
    any_emulator, redis_url, redis_conn, key_file
) -> None:
    emulator = any_emulator
    settings = make_settings(emulator, redis_url, key_file, types=["Patient"])
    poller = build_poller(settings, redis_conn)
    ids = [emulator.add_patient(f"Family{i}", "Pat") for i in range(3)]
    [result] = poller.run_once()
    assert (result.found, result.queued) == (3, 3)
    assert emulator.log == []  # no search parameter the server does not declare was sent
    emulator.advance(60)
    [again] = poller.run_once()  # dev: the read-time lastUpdated changed, the content did not
    late = emulator.add_patient("Late", "Pat")
    [third] = poller.run_once()
    dispatched = run_worker(settings, redis_conn).dispatched()
    assert sorted(e.resource_id for e in dispatched) == sorted([*ids, late])  # each exactly once
    if emulator.mode == DEV:
        assert (again.queued, third.queued) == (0, 1)  # full scan: only what changed is queued
    assert emulator.log == []


def test_a_full_scan_is_bounded_and_says_what_the_server_lacks(emulator, redis_url, redis_conn, key_file) -> None:
    settings = make_settings(emulator, redis_url, key_file, types=["Patient"], full_scan_max=2)
    for i in range(3):
        emulator.add_patient(f"Family{i}", "Pat")
    with pytest.raises(FullScanTooLarge, match="no _lastUpdated search for Patient"):
        build_poller(settings, redis_conn).run_once()


def test_a_poller_with_nothing_it_can_watch_says_so(emulator, redis_url, redis_conn, key_file, tmp_path) -> None:
    settings = make_settings(emulator, redis_url, key_file, types=["QuestionnaireResponse", "CarePlan"])
    with pytest.raises(NothingToPoll, match="QuestionnaireResponse: not in the server's CapabilityStatement"):
        build_poller(settings, redis_conn).require_something()
    import threading

    with pytest.raises(NothingToPoll):
        build_poller(settings, redis_conn).run(threading.Event())


def test_appointment_no_show_fires_once(any_emulator, redis_url, redis_conn, key_file) -> None:
    """Dev: no FHIR Appointment — the Standard API's list, calendar code '?' → noshow. Current: the FHIR
    date window (its _lastUpdated is pc_time, NULL for API-made appointments)."""
    emulator = any_emulator
    settings = make_settings(emulator, redis_url, key_file, types=["Appointment"])
    authorize(settings, redis_conn)
    puuid = emulator.add_patient("Doe", "Jane")
    front_desk = emulator.issue_user_token("api:oemr user/appointment.write user/appointment.rs user/appointment.c")
    made = book_appointment(emulator, {"Authorization": f"Bearer {front_desk}"})
    assert made.json() == {"id": 1} and emulator.appointments[0].pc_time is None
    poller = build_poller(settings, redis_conn, env=ENV)
    assert poller.run_once()[0].queued == 1  # booked
    assert poller.run_once()[0].queued == 0  # nothing changed
    emulator.set_appointment_status(1, "?")  # the calendar: no show
    assert poller.run_once()[0].queued == 1
    assert poller.run_once()[0].queued == 0
    events = run_worker(settings, redis_conn).dispatched()
    assert [e.resource["status"] for e in events] == ["booked", "noshow"]
    assert {e.resource["participant"][0]["actor"]["reference"] for e in events} == {f"Patient/{puuid}"}


def test_first_run_without_lookback_records_a_baseline_and_queues_nothing(
    any_emulator, redis_url, redis_conn, key_file
) -> None:
    emulator = any_emulator
    settings = make_settings(emulator, redis_url, key_file, types=["Patient"], initial_lookback_hours=0)
    emulator.add_patient("Old", "Pat")
    poller = build_poller(settings, redis_conn)
    poller.clock = lambda: datetime.fromtimestamp(emulator.now(), UTC)  # the server's clock
    emulator.advance(60)
    assert [r.queued for r in poller.run_once()] == [0]
    emulator.advance(60)
    emulator.add_patient("New", "Pat")
    assert [r.queued for r in poller.run_once()] == [1]


def test_crash_between_enqueue_and_watermark_rereads_and_dedupe_absorbs(
    serve_app, private_pem, redis_url, redis_conn, key_file
) -> None:
    from tests.support.openemr import serve_emulator

    emulator = serve_emulator(serve_app, private_pem, mode=CURRENT)  # the last-updated strategy
    settings = make_settings(emulator, redis_url, key_file, types=["Patient"])
    ids = [emulator.add_patient(f"Family{i}", "Pat") for i in range(3)]
    queue = make_queue(redis_conn, settings.redis.queue, "t:")
    from fhir_smartflow.queueing import enqueue_events

    def enqueue_then_crash(events):
        enqueue_events(queue, events)  # durably queued ...
        raise SystemExit("killed before the watermark moved")  # ... then the process dies

    crashing = build_poller(settings, redis_conn, enqueue=enqueue_then_crash)
    with pytest.raises(SystemExit):
        crashing.run_once()
    assert crashing.watermark("Patient") is None  # never moved past what was not confirmed
    assert queue.count == 3  # the page made it to the queue (OpenEMR answers every match in one Bundle)
    [result] = build_poller(settings, redis_conn).run_once()  # restarted poller re-reads from the old mark
    assert result.queued == 3 and queue.count == 6
    dispatcher = run_worker(settings, redis_conn)
    assert sorted(e.resource_id for e in dispatcher.dispatched()) == sorted(ids)  # each exactly once
    metrics = Metrics(redis_conn, "t:")
    assert metrics.counter_value("events", result="deduplicated") == 3
    assert metrics.counter_value("events", result="processed") == 3
    dedupe_keys = sorted(k.decode() for k in redis_conn.scan_iter("t:dedupe:*"))
    assert len(dedupe_keys) == 3 and all(k.startswith("t:dedupe:poll:Patient|Patient/") for k in dedupe_keys)


def test_poll_once_command_prints_strategies_and_results(
    emulator, redis_url, key_file, tmp_path: Path, processes
) -> None:
    emulator.add_patient("Cli", "Pat")
    config = tmp_path / "smartflow.toml"
    config.write_text(f"""
[redis]
url = "{redis_url}"
key_prefix = "t:"
[fhir]
base_url = "{emulator.fhir_base}"
auth = "smart-backend"
client_id = "{CLIENT_ID}"
private_key_file = "{key_file}"
key_id = "{KEY_ID}"
scopes = "system/Patient.read system/Encounter.read"
[poll]
types = ["Patient", "Encounter"]
initial_lookback_hours = 1
[openemr]
base_url = "{emulator.base_url}"
""")
    cli = str(Path(sys.executable).with_name("fhir-smartflow"))
    proc = processes(
        [cli, "--config", str(config), "poll", "--once", "--json"],
        env={"PATH": os.environ.get("PATH", "")},
        name="poll",
    )
    assert proc.proc.wait(timeout=30) == 0, proc.output()
    out = proc.output()
    report = json.loads(out[out.index("{") :])
    results = {r["resource_type"]: r for r in report["results"]}
    assert results["Patient"]["queued"] == 1 and results["Encounter"]["strategy"] == "full-scan"
    from click.testing import CliRunner

    from fhir_smartflow.cli import main

    text = CliRunner().invoke(main, ["--config", str(config), "poll", "--once"])
    assert text.exit_code == 0, text.output
    assert "strategy Patient: full-scan" in text.output and "strategy Encounter: full-scan" in text.output
    assert "Patient: found 1, queued 0" in text.output  # the second pass: nothing changed
