"""Sends subscription notifications from background threads, never from the request that caused them.

Each subscription is pinned to one delivery thread (by id), so its notifications go out in event-number
order. Queues are bounded: when one is full the event is dropped and counted, and the receiver sees a
gap in event numbers (what a real server does under overload), which it recovers with a search.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from fhir_smartflow.retry import RETRYABLE_STATUS, RetryPolicy
from fhir_smartflow.sandbox import search
from fhir_smartflow.sandbox.errors import SandboxError
from fhir_smartflow.sandbox.profiles import DEFAULT_PROFILE, PROFILES, Profile
from fhir_smartflow.sandbox.secrets import without_secrets
from fhir_smartflow.sandbox.store import Change, Store
from fhir_smartflow.sandbox.subscriptions import (
    HAPI_PUT,
    SubscriptionSpec,
    event_bundle,
    parse_subscription,
    status_bundle,
)

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
SIGNATURE_HEADER = "X-Signature"  # Medplum: hex HMAC-SHA256 of the body, keyed by the subscription-secret


@dataclass(frozen=True)
class Job:
    kind: str  # activate | event | heartbeat
    subscription_id: str
    change: Change | None = None
    event_number: int = 0


@dataclass
class NotifierStats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    attempts: int = 0
    by_subscription: dict[str, int] = field(default_factory=dict)


class Notifier:
    def __init__(
        self,
        store: Store,
        base_url: str,
        *,
        workers: int = 2,
        queue_size: int = 10_000,
        retry: RetryPolicy | None = None,
        handshake_retry: RetryPolicy | None = None,
        tick_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        profile: Profile = PROFILES[DEFAULT_PROFILE],
    ) -> None:
        self.store = store
        self.profile = profile
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy(max_retries=3, base_seconds=0.25, max_seconds=5.0)
        # Longer for handshakes: `serve` subscribes itself before its own listener is up (~20 s of tries).
        self.handshake_retry = handshake_retry or RetryPolicy(max_retries=8, base_seconds=0.25, max_seconds=4.0)
        self.tick_seconds = tick_seconds
        self.stats = NotifierStats()
        self._clock = clock
        self._lock = threading.Lock()
        self._subs: dict[str, SubscriptionSpec] = {}
        self._last_activity: dict[str, float] = {}
        self._queues: list[queue.Queue[Job | None]] = [queue.Queue(maxsize=queue_size) for _ in range(workers)]
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        store.add_listener(self.on_change)

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Load the stored subscriptions (activating the requested ones) and start the threads."""
        if not self.profile.event_numbers_survive_restart:
            self.store.forget_event_numbers()  # a server that counts in memory starts again at 1
        for resource in self.store.all_of_type("Subscription"):
            self._register(resource)
        for i, q in enumerate(self._queues):
            t = threading.Thread(target=self._work, args=(q,), name=f"sandbox-notifier-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        hb = threading.Thread(target=self._heartbeats, name="sandbox-heartbeat", daemon=True)
        hb.start()
        self._threads.append(hb)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for q in self._queues:
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)
        for t in self._threads:
            t.join(timeout)

    def subscription(self, subscription_id: str) -> SubscriptionSpec | None:
        with self._lock:
            return self._subs.get(subscription_id)

    # ---- from the store (runs in the writing thread, must be quick) -------------------------------

    def on_change(self, change: Change) -> None:
        if change.resource_type == "Subscription":
            if change.interaction == "delete":
                with self._lock:
                    self._subs.pop(change.id, None)
            else:
                self._register(change.resource)
        with self._lock:
            targets = [s for s in self._subs.values() if self._notifies(s, change)]
        shown = without_secrets(change)
        for spec in targets:
            number = self.store.record_event(spec.id, change) if spec.style == "backport" else 0
            self._enqueue(Job("event", spec.id, shown, number))

    def _register(self, resource: dict[str, Any]) -> None:
        try:
            spec = parse_subscription(resource)
        except SandboxError as exc:
            log.warning("sandbox: Subscription/%s cannot be served: %s", resource.get("id"), exc.message)
            return
        with self._lock:
            self._subs[spec.id] = spec
            self._last_activity.setdefault(spec.id, self._clock())
        if spec.status == "requested" and self.profile.activation != "client":
            self._enqueue(Job("activate", spec.id))

    def _notifies(self, spec: SubscriptionSpec, change: Change) -> bool:
        if not self._deliverable(spec):
            return False
        interactions = spec.interactions or self.profile.classic_interactions
        if spec.style != "backport" and change.interaction not in interactions:
            return False
        return spec.matches(change)

    def _deliverable(self, spec: SubscriptionSpec) -> bool:
        # A server without topic-based subscriptions stores a Backport Subscription and never notifies it.
        served = spec.style != "backport" or self.profile.topic_subscriptions
        return served and spec.status in self.profile.deliverable

    def _enqueue(self, job: Job) -> None:
        q = self._queues[zlib.crc32(job.subscription_id.encode()) % len(self._queues)]
        try:
            q.put_nowait(job)
        except queue.Full:
            self.stats.dropped += 1
            log.warning(
                "sandbox: notification queue full, dropped %s for Subscription/%s", job.kind, job.subscription_id
            )

    # ---- delivery threads ----------------------------------------------------------------------

    def _work(self, q: queue.Queue[Job | None]) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            job = q.get()
            if job is None:
                break
            try:
                self._run(session, job)
            except Exception:
                log.exception("sandbox: notification job failed for Subscription/%s", job.subscription_id)
        session.close()

    def _run(self, session: requests.Session, job: Job) -> None:
        spec = self.subscription(job.subscription_id)
        if spec is None:
            return
        activating = job.kind == "activate" and spec.status == "requested"
        if not activating and not self._deliverable(spec):
            return
        now = search.instant_key(datetime.now(UTC))
        if job.kind == "activate":
            if spec.style == "backport":
                body = status_bundle(
                    spec, self.base_url, "handshake", self.store.events_count(spec.id), now, "requested"
                )
                if not self._send(session, spec, "POST", spec.endpoint, body, self.handshake_retry):
                    self._set_status(spec.id, "error", "handshake failed")
                    return
            self._set_status(spec.id, "active", None)
            return
        if job.kind == "heartbeat":
            body = status_bundle(spec, self.base_url, "heartbeat", self.store.events_count(spec.id), now)
            self._send(session, spec, "POST", spec.endpoint, body)
            return
        assert job.change is not None
        method, url, payload = self._event_request(spec, job.change, job.event_number)
        extra = self._interaction_headers(spec, job.change)
        if extra and job.change.interaction == "delete":
            payload = {}
        if not self._send(session, spec, method, url, payload, extra=extra):
            self._set_status(spec.id, "error", f"delivery of event {job.event_number or job.change.id} failed")

    def _interaction_headers(self, spec: SubscriptionSpec, change: Change) -> dict[str, str]:
        if not self.profile.interaction_headers or spec.style == "backport":
            return {}
        headers = {"X-Medplum-Subscription": spec.id, "X-Medplum-Interaction": change.interaction}
        if change.interaction == "delete":
            headers["X-Medplum-Deleted-Resource"] = f"{change.resource_type}/{change.id}"
        return headers

    def _event_request(self, spec: SubscriptionSpec, change: Change, number: int) -> tuple[str, str, Any]:
        if spec.style == "backport":
            return "POST", spec.endpoint, event_bundle(spec, self.base_url, change, number, change.last_updated)
        resource = change.resource if spec.mime and change.interaction != "delete" else None
        if spec.delivery_style == HAPI_PUT:
            url = f"{spec.endpoint}/{change.resource_type}/{change.id}"
            return ("DELETE" if change.interaction == "delete" else "PUT"), url, resource
        return "POST", spec.endpoint, resource

    def _send(
        self,
        session: requests.Session,
        spec: SubscriptionSpec,
        method: str,
        url: str,
        body: Any,
        policy: RetryPolicy | None = None,
        extra: dict[str, str] | None = None,
    ) -> bool:
        policy = policy or self.retry
        headers = {**(extra or {}), **dict(spec.headers)}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = FHIR_JSON
        if self.profile.secret_extension and spec.secret:
            headers[SIGNATURE_HEADER] = hmac.new(spec.secret.encode(), data or b"", hashlib.sha256).hexdigest()
        attempt = 0
        while True:
            attempt += 1
            self.stats.attempts += 1
            retry_after = None
            try:
                response = session.request(method, url, data=data, headers=headers, timeout=spec.timeout_seconds)
                if response.status_code < 300:
                    with self._lock:
                        self.stats.sent += 1
                        self._last_activity[spec.id] = self._clock()
                        self.stats.by_subscription[spec.id] = self.stats.by_subscription.get(spec.id, 0) + 1
                    return True
                problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("Retry-After")
                retryable = response.status_code in RETRYABLE_STATUS
            except requests.RequestException as exc:
                problem, retryable = type(exc).__name__, True
            if not retryable or not policy.should_retry(attempt) or self._stop.is_set():
                self.stats.failed += 1
                log.warning("sandbox: notification to Subscription/%s failed: %s", spec.id, problem)
                return False
            self._stop.wait(policy.delay(attempt, retry_after))

    def _set_status(self, subscription_id: str, status: str, error: str | None) -> None:
        try:
            current = self.store.read("Subscription", subscription_id)
        except SandboxError:
            return
        if current.get("status") == status:
            return
        current["status"] = status
        if error:
            current["error"] = error
        else:
            current.pop("error", None)
        self.store.update("Subscription", subscription_id, current)
        log.info("sandbox: Subscription/%s is now %s", subscription_id, status)

    # ---- heartbeats ----------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            now = self._clock()
            due = []
            with self._lock:
                for spec in self._subs.values():
                    if not self._deliverable(spec) or spec.style != "backport" or spec.status != "active":
                        continue
                    if spec.heartbeat_seconds <= 0:
                        continue
                    if now - self._last_activity.get(spec.id, now) >= spec.heartbeat_seconds:
                        self._last_activity[spec.id] = now
                        due.append(spec.id)
            for sid in due:
                self._enqueue(Job("heartbeat", sid))
