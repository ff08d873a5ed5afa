"""Sends interrupted mid-way (a worker killed while its channel call was in flight) become visible and
final: each worker's liveness thread looks, every few seconds, for send claims still ``sending`` after
``[delivery] stuck_after_seconds`` and enqueues one sweep job (one per period across all workers),
which `PlanExecutor.resolve_stuck` runs: not-done with reason code ``unknown``, on the claim and the
Communication, counted in ``stuck_deliveries``. `doctor` shows the ones not resolved yet."""

from __future__ import annotations

import logging
from datetime import timedelta

from fhir_smartflow.delivery.claims import DeliveryClaims
from fhir_smartflow.worker.runtime import Runtime, ServiceRuntime, current_service

log = logging.getLogger(__name__)

RESOLVE_STUCK = "fhir_smartflow.worker.stuck.resolve_stuck_deliveries"
SWEEP_PERIOD_SECONDS = 3


def resolve_stuck_deliveries() -> int:
    """rq job: resolve every stuck send (returns how many)."""
    rt = current_service()
    return rt.executor.resolve_stuck(rt.clock())


def enqueue_stuck_sweep(rt: Runtime) -> bool:
    """Called periodically by each worker: enqueue a sweep when some send is overdue. True if enqueued."""
    if not isinstance(rt, ServiceRuntime):
        return False  # the ingest-only core sends nothing
    claims: DeliveryClaims = rt.executor.claims
    cutoff = rt.clock() - timedelta(seconds=rt.settings.delivery.stuck_after_seconds)
    if not claims.stuck_count(cutoff):
        return False
    if not rt.redis.set(rt.keys.lock("stuck-sweep"), 1, nx=True, ex=SWEEP_PERIOD_SECONDS):
        return False
    rt.queue.enqueue(RESOLVE_STUCK, description="resolve stuck deliveries", result_ttl=60, failure_ttl=3600)
    log.info("stuck deliveries found: sweep enqueued")
    return True
