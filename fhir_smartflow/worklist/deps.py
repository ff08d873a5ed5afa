"""What the worklist app needs, built once by `serve`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from fhir_smartflow.config import WorklistConfig
from fhir_smartflow.worklist.sessions import SessionStore
from fhir_smartflow.worklist.smart_client import Client


@dataclass
class WorklistDeps:
    config: WorklistConfig
    client: Client
    sessions: SessionStore
    clock: Callable[[], datetime]
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))  # due dates shown in the clinic's time
    secure_cookie: bool = True  # also Secure whenever the request came over HTTPS
