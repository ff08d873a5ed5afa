"""Functions for real rq workers to run in tests (named by their import path, as rq jobs are)."""

from __future__ import annotations

from rq import get_current_job


def worker_state(worker_key: str) -> str:
    """The state the running job's worker has in Redis."""
    job = get_current_job()
    assert job is not None
    return (job.connection.hget(worker_key, "state") or b"").decode()
