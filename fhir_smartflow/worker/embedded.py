"""Worker processes and dead letters: rq workers (separate or in-process) and failed-job replay."""

from __future__ import annotations

import logging
import threading

import redis
import rq
from rq.defaults import DEFAULT_WORKER_TTL
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.scheduler import RQScheduler
from rq.timeouts import TimerDeathPenalty

from fhir_smartflow.batch_queueing import replay_failed_job
from fhir_smartflow.config import Settings
from fhir_smartflow.connections import ClientOptions, connect
from fhir_smartflow.worker.runtime import Runtime

log = logging.getLogger(__name__)

WORKER_LOG_LEVEL = "WARNING"  # rq logs job arguments (payloads, PHI) at INFO


# rq's blocking dequeue (BLMOVE) waits up to worker_ttl - 15 s. rq raises the pool's read timeout to cover
# it, but only for connections made after the Worker exists; ours are made before (the ping, the runtime),
# and redis-py 8 gives them a 5 s default, so an idle worker's dequeue timed out every 5 s ("could not
# connect to Redis instance: Timeout reading from socket"). An explicit timeout above rq's, for all.
WORKER_SOCKET_TIMEOUT_SECONDS = DEFAULT_WORKER_TTL + 10


def worker_connection(settings: Settings) -> redis.Redis:
    """A client whose reads outlast rq's blocking dequeue (the service's usual 10 s would not)."""
    return connect(settings, ClientOptions(socket_timeout=WORKER_SOCKET_TIMEOUT_SECONDS))


class ThreadWorker(rq.SimpleWorker):
    """A SimpleWorker that can run outside the main thread (embedded mode inside ``serve``).

    Only the main thread may install signal handlers, and SIGALRM job timeouts need them: use rq's
    timer-based timeouts and leave signals to the server.
    """

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def run_embedded_worker(rt: Runtime, stop: threading.Event, idle_sleep: float = 0.1) -> None:
    """Drain the queue in bursts until ``stop`` is set; also moves due retries into the queue."""
    worker = ThreadWorker([rt.queue], connection=rt.redis)
    scheduler = RQScheduler([rt.queue], connection=rt.redis)
    scheduler.prepare_registries([rt.queue.name])
    while not stop.is_set():
        worked = False
        try:
            scheduler.enqueue_scheduled_jobs()
            worked = worker.work(burst=True, logging_level=WORKER_LOG_LEVEL)
        except Exception:  # keep the embedded worker alive; the job itself is in rq's registries
            log.exception("embedded worker loop error")
        if not worked:
            stop.wait(idle_sleep)


def replay_failed(rt: Runtime) -> list[dict[str, str]]:
    """Event jobs (one event or a batch) go back through `enqueue_events` (source ``replay``, one job per
    unfinished event); other jobs are requeued as they are. ``new_job_id``: the new ids, comma-separated."""
    registry = FailedJobRegistry(queue=rt.queue)
    done: list[dict[str, str]] = []
    for job_id in registry.get_job_ids():
        job = Job.fetch(job_id, connection=rt.redis)
        reason = (job.latest_result().exc_string if job.latest_result() else "") or ""
        reason = reason.strip().splitlines()[-1] if reason.strip() else "unknown"
        new_ids = replay_failed_job(rt.queue, job, metrics=rt.metrics)
        done.append(
            {"job_id": job_id, "new_job_id": ", ".join(new_ids), "description": job.description or "", "reason": reason}
        )
    return done
