"""A change saved in the console reaches a separate `worker` process within 5 s without SIGHUP, and a change
that does not load somewhere is reported while the running flows stay."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
import requests

from fhir_smartflow.config import load_settings
from fhir_smartflow.console.accounts import ConsoleUser
from fhir_smartflow.console.keys import ConsoleKeys
from fhir_smartflow.console.reload import ProcessStatus, ReloadBus, SavedChangeWatcher, saved_generation
from fhir_smartflow.console.store import FlowStore
from fhir_smartflow.sandbox.subscriptions import self_subscription
from fhir_smartflow.worker.runtime import ServiceRuntime, build_service_runtime, utc_now
from tests.support.console import CONSOLE_SECRET, Site, copy_site
from tests.support.fhir import search_all, wait_subscription
from tests.support.net import wait_for
from tests.support.service import SECRET_HEADER, start_service
from tests.support.toml import write_config

pytestmark = pytest.mark.integration

PREFIX = "reload:"
FHIR = {"Content-Type": "application/fhir+json"}
ALICE = ConsoleUser("alice", "admin")


def _copy_of_intake(site_flows: Path, flow_id: str) -> str:
    """A new flow: the intake flow under another id, on another trigger (so it is not duplicate automation)."""
    text = (site_flows / "intake-forms.toml").read_text()
    return text.replace('id = "intake-forms"', f'id = "{flow_id}"').replace(
        'trigger = "patient.registered"', 'trigger = "patient.updated"'
    )


def _config(tmp_path: Path, redis_url: str, site: Site) -> Path:
    sections = {"redis": {"url": redis_url, "key_prefix": PREFIX}, "engine": site.engine_section()}
    return write_config(tmp_path / "smartflow.toml", sections)


def _worker(bus: ReloadBus) -> ProcessStatus | None:
    return next((s for s in bus.status() if s.role == "worker"), None)


def test_a_saved_flow_reaches_a_separate_worker_within_5_seconds(
    processes, tmp_path: Path, redis_url: str, redis_conn: redis.Redis
) -> None:
    site = copy_site(tmp_path)
    service = start_service(
        processes,
        tmp_path,
        redis_url=redis_url,
        prefix=PREFIX,
        secret=("RELOAD_SECRET", "reload-secret"),
        sections={"engine": site.engine_section()},
        env={"SMARTFLOW_CONSOLE_SECRET": CONSOLE_SECRET},
    )
    worker = service.workers[0]
    bus = ReloadBus(redis_conn, ConsoleKeys(PREFIX), utc_now)
    started = wait_for(lambda: _worker(bus), "the worker's first status report", worker.output)
    assert started.ok and started.process.endswith(f":{worker.pid}")
    store = FlowStore(load_settings(service.config, env={}), site.flows, tmp_path / "history", bus=bus, clock=utc_now)

    saved_at = time.monotonic()
    store.save("intake-copy", _copy_of_intake(site.flows, "intake-copy"), None, ALICE)
    generation = bus.generation()
    loaded = wait_for(
        lambda: (s := _worker(bus)) is not None and s.generation == generation and s,
        "the worker to load the saved flow",
        worker.output,
        timeout=10,
    )
    elapsed = time.monotonic() - saved_at
    assert loaded.ok and loaded.flows == started.flows + 1, loaded
    assert elapsed < 5, f"the worker loaded the change after {elapsed:.1f} s"
    assert f"saved change {generation} loaded: {loaded.flows} flow(s)" in worker.output()
    assert worker.alive() and "SIGHUP" not in worker.output()

    # What the worker runs is the saved flow: a due date changed in the console gives version 2's Task.
    current = store.read("intake-forms")
    store.save("intake-forms", current.text.replace("amount = 3,", "amount = 4,"), current.etag, ALICE)
    generation = bus.generation()
    wait_for(lambda: (s := _worker(bus)) is not None and s.generation == generation, "reload", worker.output)
    sub = self_subscription("reload", service.notify, f"{SECRET_HEADER}: reload-secret", "Patient", "backport",
                            "full-resource", 0)  # fmt: skip
    assert requests.put(f"{service.store}/Subscription/reload", json=sub, headers=FHIR, timeout=10).status_code < 300
    wait_subscription(service.store, "reload")
    patient = {"resourceType": "Patient", "id": "reloaded", "birthDate": "1970-05-06"}
    assert requests.put(f"{service.store}/Patient/reloaded", json=patient, headers=FHIR, timeout=10).status_code == 201
    tasks = wait_for(
        lambda: search_all(service.store, "Task", {"patient": "Patient/reloaded"}), "the intake Tasks", service.logs
    )
    assert {t["instantiatesUri"].split("#")[0] for t in tasks} == {"urn:fhir-smartflow:flow:intake-forms:2"}


def test_a_change_that_does_not_load_is_reported_and_the_running_flows_stay(
    tmp_path: Path, redis_url: str, redis_conn: redis.Redis
) -> None:
    site = copy_site(tmp_path)
    config = _config(tmp_path, redis_url, site)
    rt = build_service_runtime(load_settings(config, env={}), redis_conn)
    assert isinstance(rt, ServiceRuntime)
    bus = ReloadBus(redis_conn, ConsoleKeys(PREFIX), utc_now)
    watcher = SavedChangeWatcher(rt, bus, "worker", interval=0.1)
    watcher.step()  # where things stand at start
    running = rt.engine

    # This host's copy of the files differs from the one the console checked (a file written beside it).
    (site.flows / "broken.toml").write_text(_copy_of_intake(site.flows, "broken").replace('"next-monday"', '"someday"'))
    bus.announce("flow", "broken", "alice")
    watcher.step()
    [status] = bus.failures()
    assert not status.ok and status.generation == bus.generation()
    assert any("broken.toml" in e and "weekend" in e for e in status.errors), status.errors
    assert rt.engine is running  # the flows loaded before run on

    (site.flows / "broken.toml").unlink()
    (site.flows / "fixed.toml").write_text(_copy_of_intake(site.flows, "fixed"))
    bus.announce("flow", "fixed", "alice")
    watcher.step()
    assert bus.failures() == [] and "fixed" in rt.engine.flows


def test_a_save_while_the_process_was_loading_is_caught_up_at_the_first_check(
    tmp_path: Path, redis_url: str, redis_conn: redis.Redis
) -> None:
    site = copy_site(tmp_path)
    config = _config(tmp_path, redis_url, site)
    settings = load_settings(config, env={})
    seen = saved_generation(settings, redis_conn)  # as `worker` reads it, before loading the files
    rt = build_service_runtime(settings, redis_conn)
    assert isinstance(rt, ServiceRuntime) and "late" not in rt.engine.flows
    bus = ReloadBus(redis_conn, ConsoleKeys(PREFIX), utc_now)
    store = FlowStore(settings, site.flows, tmp_path / "history", bus=bus, clock=utc_now)
    store.save("late", _copy_of_intake(site.flows, "late"), None, ALICE)  # lands after the load
    SavedChangeWatcher(rt, bus, "worker", interval=0.1, seen=seen).step()
    assert "late" in rt.engine.flows
