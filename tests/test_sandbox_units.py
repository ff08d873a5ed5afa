"""Unit tests of the sandbox's pure parts: dates, references, query parsing, matching, the store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fhir_smartflow.sandbox import search
from fhir_smartflow.sandbox.errors import BadRequest, Gone, NotFound, Unprocessable
from fhir_smartflow.sandbox.store import Change, Store


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2026", "2026-01-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z"),
        ("2026-12", "2026-12-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z"),
        ("2026-02-28", "2026-02-28T00:00:00.000000Z", "2026-03-01T00:00:00.000000Z"),
        ("2026-03-08T09:30-05:00", "2026-03-08T14:30:00.000000Z", "2026-03-08T14:31:00.000000Z"),
        ("2026-03-08T09:30:05Z", "2026-03-08T09:30:05.000000Z", "2026-03-08T09:30:06.000000Z"),
        ("2026-03-08T09:30:05.25Z", "2026-03-08T09:30:05.250000Z", "2026-03-08T09:30:05.250001Z"),
    ],
)
def test_date_range_follows_precision(value: str, start: str, end: str) -> None:
    assert search.date_range(value) == (start, end)


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "2026-02-30", "26-01-01"])
def test_date_range_rejects_non_dates(value: str) -> None:
    assert search.date_range(value) is None


def test_split_reference() -> None:
    assert search.split_reference("Patient/1") == ("Patient", "1")
    assert search.split_reference("http://x/fhir/Patient/1/_history/3") == ("Patient", "1")
    assert search.split_reference("abc-1") == (None, "abc-1")
    assert search.split_reference("urn:uuid:not a ref") is None


def test_parse_query_sorts_params_into_criteria_controls_and_ignored() -> None:
    q = search.parse_query(
        "Task",
        [("patient", "Patient/1"), ("_count", "5"), ("_sort", "-_lastUpdated"), ("name", "x"), ("recipient", "P/1")],
    )
    assert [c.name for c in q.criteria] == ["patient"]
    assert (q.count, q.sort, q.ignored) == (5, "DESC", ("name", "recipient"))  # recipient is not a Task param
    with pytest.raises(BadRequest, match="_count must be a whole number"):
        search.parse_query("Task", [("_count", "many")])
    with pytest.raises(BadRequest, match="_sort"):
        search.parse_query("Task", [("_sort", "name")])
    assert search.decode_page(search.encode_page(150)) == 150


def test_matches_on_one_resource() -> None:
    task = {
        "resourceType": "Task",
        "id": "t",
        "status": "requested",
        "for": {"reference": "Patient/p"},
        "identifier": [{"system": "urn:s", "value": "v"}],
    }
    key = "2026-01-01T00:00:00.000000Z"

    def check(*params: tuple[str, str]) -> bool:
        return search.matches("Task", task, key, search.parse_query("Task", list(params)))

    assert check(("patient", "p"), ("status", "requested,completed"), ("identifier", "urn:s|v"))
    assert not check(("patient", "Patient/q"))
    assert not check(("identifier", "urn:other|v"))
    assert check(("_lastUpdated", "ge2026-01-01")) and not check(("_lastUpdated", "gt2026-01-01"))
    assert check(("_id", "t"))


def test_store_versions_history_and_listeners(tmp_path: Path) -> None:
    ticks = iter([datetime(2026, 1, 1, tzinfo=UTC)] * 5)  # a stuck clock: lastUpdated must still increase
    store = Store(str(tmp_path / "s.db"), clock=lambda: next(ticks))
    seen: list[Change] = []
    store.add_listener(seen.append)
    made = store.create({"resourceType": "Patient"})
    store.update("Patient", made["id"], {"resourceType": "Patient", "active": True})
    assert store.delete("Patient", made["id"]) is True
    assert store.delete("Patient", made["id"]) is False
    assert [(c.interaction, c.version) for c in seen] == [("create", 1), ("update", 2), ("delete", 3)]
    assert len({c.last_updated for c in seen}) == 3 and sorted(c.last_updated for c in seen) == [
        c.last_updated for c in seen
    ]
    with pytest.raises(Gone):
        store.read("Patient", made["id"])
    with pytest.raises(NotFound):
        store.read("Patient", "nope")
    with pytest.raises(Unprocessable):
        store.create({"resourceType": "Patient", "birthDate": "x"})
    # a failing transaction leaves nothing behind and tells no listener
    with pytest.raises(Unprocessable), store.transaction():
        store.create({"resourceType": "Patient"})
        store.create({"resourceType": "Patient", "gender": 5})
    assert store.search("Patient", []).total == 0 and len(seen) == 3
    assert [store.record_event("s1", seen[i]) for i in (0, 1)] == [1, 2]
    store.close()
    reopened = Store(str(tmp_path / "s.db"))
    assert reopened.events_count("s1") == 2
    logged = reopened.logged_events("s1", 2, 5)
    assert [(n, c.interaction, c.resource.get("active")) for n, c in logged] == [(2, "update", True)]
    assert [v for v, *_ in reopened.history("Patient", made["id"])] == [3, 2, 1]
    reopened.close()
