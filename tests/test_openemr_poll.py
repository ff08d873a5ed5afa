"""Polling bridge against the OpenEMR emulator over real HTTP, with real Redis and the real rq job."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import requests
from rq import SimpleWorker

from fhir_smartflow.fhir.errors import TokenRefused
from fhir_smartflow.fhir.oauth import ClientCredentialsTokenProvider, TokenRequest, post_token
from fhir_smartflow.fhir.smart import CLIENT_ASSERTION_TYPE, PrivateKeyJwt, client_assertion, smart_backend_services
from fhir_smartflow.ingest.poll import DATE_WINDOW, LAST_UPDATED, UNSUPPORTED, build_poller
from fhir_smartflow.metrics import Metrics
from fhir_smartflow.queueing import make_queue
from fhir_smartflow.worker.runtime import build_runtime, install
from fhir_smartflow.worker.seams import RecordingDispatcher
from tests.support.openemr import CLIENT_ID, KEY_ID, make_settings, rsa_pem
from tests.support.openemr_emulator import OpenEmrEmulator

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
    auth = backend_services(emulator, private_pem, "system/Patient.rs system/Task.cu")
    assert auth.token()
    assert auth.granted_scopes() == "system/Patient.rs"  # OpenEMR grants no system write scope
    session = requests.Session()
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": client_assertion(CLIENT_ID, emulator.token_url, private_pem, KEY_ID),
    }
    post_token(session, TokenRequest(emulator.token_url, form), 5)
    with pytest.raises(TokenRefused) as replay:
        post_token(session, TokenRequest(emulator.token_url, form), 5)  # same jti again
    assert replay.value.error == "invalid_client"
    stranger = {**form, "client_assertion": client_assertion(CLIENT_ID, emulator.token_url, rsa_pem(), KEY_ID)}
    with pytest.raises(TokenRefused, match="invalid_client"):
        post_token(session, TokenRequest(emulator.token_url, stranger), 5)
    wrong_aud = {**form, "client_assertion": client_assertion(CLIENT_ID, emulator.fhir_base, private_pem, KEY_ID)}
    with pytest.raises(TokenRefused, match="invalid_client"):
        post_token(session, TokenRequest(emulator.token_url, wrong_aud), 5)


def test_strategies_come_from_the_capability_statement(emulator, redis_url, redis_conn, key_file) -> None:
    poller = build_poller(make_settings(emulator, redis_url, key_file), redis_conn)
    strategies = {p.resource_type: p.strategy for p in poller.plans()}
    assert strategies == {
        "Appointment": DATE_WINDOW,
        "Encounter": LAST_UPDATED,
        "Patient": LAST_UPDATED,
        "QuestionnaireResponse": UNSUPPORTED,
    }
    assert any("Appointment: date-window" in line for line in poller.describe())


def test_new_patients_are_paged_queued_and_the_watermark_follows(emulator, redis_url, redis_conn, key_file) -> None:
    settings = make_settings(emulator, redis_url, key_file, types=["Patient"])
    poller = build_poller(settings, redis_conn)
    ids = [emulator.add_patient(f"Family{i}", "Pat") for i in range(5)]
    [result] = poller.run_once()
    assert (result.found, result.queued, result.pages) == (5, 5, 3)  # _count=2 → 3 pages via next links
    newest = max(p["updated"] for p in emulator.patients)
    assert poller.watermark("Patient") == datetime.fromtimestamp(int(newest), UTC)
    queue = make_queue(redis_conn, settings.redis.queue, "t:")
    assert queue.count == 5
    # Later: one more patient. The overlap window (5 s before the watermark) re-reads the first five too.
    emulator.advance(60)
    late = emulator.add_patient("Late", "Pat")
    [result] = poller.run_once()
    assert (result.found, result.queued) == (6, 6)
    [result] = poller.run_once()  # the watermark is now the late patient: only it is inside the overlap
    assert (result.found, result.queued) == (1, 1)
    assert Metrics(redis_conn, "t:").counter_value("events_received", source="poll") == 12
    dispatched = run_worker(settings, redis_conn).dispatched()
    assert sorted(e.resource_id for e in dispatched) == sorted([*ids, late])  # each once: dedupe absorbs
    assert {e.source for e in dispatched} == {"poll"} and all(e.resource for e in dispatched)
    assert Metrics(redis_conn, "t:").counter_value("events", result="deduplicated") == 6


def test_crash_between_enqueue_and_watermark_rereads_and_dedupe_absorbs(
    emulator, redis_url, redis_conn, key_file
) -> None:
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
    assert queue.count == 2  # the first page made it to the queue
    [result] = build_poller(settings, redis_conn).run_once()  # restarted poller re-reads from the old mark
    assert result.queued == 3 and queue.count == 5
    dispatcher = run_worker(settings, redis_conn)
    assert sorted(e.resource_id for e in dispatcher.dispatched()) == sorted(ids)  # each exactly once
    metrics = Metrics(redis_conn, "t:")
    assert metrics.counter_value("events", result="deduplicated") == 2
    assert metrics.counter_value("events", result="processed") == 3
    dedupe_keys = sorted(k.decode() for k in redis_conn.scan_iter("t:dedupe:*"))
    assert len(dedupe_keys) == 3 and all(k.startswith("t:dedupe:poll:Patient|Patient/") for k in dedupe_keys)


def test_appointment_status_change_fires_once_through_the_date_window(
    emulator, redis_url, redis_conn, key_file
) -> None:
    settings = make_settings(emulator, redis_url, key_file, types=["Appointment"])
    poller = build_poller(settings, redis_conn)
    puuid = emulator.add_patient("Doe", "Jane")
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    appt = emulator.add_appointment(puuid, tomorrow, status="*")  # booked
    emulator.add_appointment(puuid, datetime.now(UTC) + timedelta(days=90), status="*")  # outside the window
    assert poller.run_once()[0].queued == 1
    assert poller.run_once()[0].queued == 0  # nothing changed
    emulator.advance(3600)
    emulator.set_appointment_status(appt, "?")  # OpenEMR "no show"
    # The change is invisible to _lastUpdated (it follows pc_time, the creation time) ...
    token = backend_services(emulator, key_file.read_bytes(), "system/Appointment.rs").token()
    since = (datetime.now(UTC) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    found = requests.get(
        f"{emulator.fhir_base}/Appointment",
        params={"_lastUpdated": f"gt{since}"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    ).json()
    assert found["entry"] == []
    # ... but the date window sees it, once.
    assert poller.run_once()[0].queued == 1
    assert poller.run_once()[0].queued == 0
    statuses = [e.resource["status"] for e in run_worker(settings, redis_conn).dispatched()]
    assert statuses == ["booked", "noshow"]


def test_first_run_without_lookback_records_a_baseline_and_queues_nothing(
    emulator, redis_url, redis_conn, key_file
) -> None:
    settings = make_settings(emulator, redis_url, key_file, types=["Appointment", "Patient"], initial_lookback_hours=0)
    puuid = emulator.add_patient("Old", "Pat")
    emulator.add_appointment(puuid, datetime.now(UTC) + timedelta(days=2), status="*")
    poller = build_poller(settings, redis_conn)
    poller.clock = lambda: datetime.fromtimestamp(emulator.now(), UTC)  # the server's clock
    emulator.advance(60)
    assert [r.queued for r in poller.run_once()] == [0, 0]
    assert poller.watermark("Patient") is not None
    emulator.advance(60)
    emulator.add_patient("New", "Pat")
    assert [r.queued for r in poller.run_once()] == [0, 1]


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
scopes = "system/Patient.rs system/Appointment.rs"
[poll]
types = ["Patient", "Appointment"]
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
    assert results["Patient"]["queued"] == 1 and results["Appointment"]["strategy"] == "date-window"
    from click.testing import CliRunner

    from fhir_smartflow.cli import main

    text = CliRunner().invoke(main, ["--config", str(config), "poll", "--once"])
    assert text.exit_code == 0, text.output
    assert "strategy Patient: last-updated" in text.output and "strategy Appointment: date-window" in text.output
    assert "Patient: found 1, queued 1" in text.output  # the overlap window re-reads it; the worker dedupes


def test_unsorted_results_move_the_watermark_only_after_a_complete_pass(
    emulator, redis_url, redis_conn, key_file
) -> None:
    settings = make_settings(emulator, redis_url, key_file, types=["Patient"])
    a = emulator.add_patient("A", "Pat")
    emulator.advance(10)
    emulator.add_patient("B", "Pat")
    emulator.advance(10)
    c = emulator.add_patient("C", "Pat")
    emulator.advance(10)
    emulator.update_patient(a, lname="A2")  # A is now the newest but still first in OpenEMR's (pid) order
    from fhir_smartflow.queueing import enqueue_events, make_queue

    queue = make_queue(redis_conn, settings.redis.queue, "t:")
    pages = []

    def enqueue_second_page_crashes(events):
        pages.append([e.resource_id for e in events])
        if len(pages) == 2:
            raise SystemExit("killed while queueing page 2")
        return enqueue_events(queue, events)

    with pytest.raises(SystemExit):
        build_poller(settings, redis_conn, enqueue=enqueue_second_page_crashes).run_once()
    assert pages[1] == [c]
    # Page 1 held A (newest) before B: moving the mark to A's time would have skipped C for good.
    assert build_poller(settings, redis_conn).watermark("Patient") is None
    [result] = build_poller(settings, redis_conn).run_once()
    assert result.found == 3
    newest = max(p["updated"] for p in emulator.patients)
    assert build_poller(settings, redis_conn).watermark("Patient") == datetime.fromtimestamp(int(newest), UTC)
