"""What a doctor check gets and what it reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

import redis

from fhir_smartflow.config import Settings
from fhir_smartflow.engine.model import Engine
from fhir_smartflow.fhir.client import FhirClient

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``status check: detail`` and, unless ok, what to do about it."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorContext:
    """The installation under test; each part is built on first use so a check only costs what it reads."""

    settings: Settings
    make_client: Callable[[], FhirClient]
    make_redis: Callable[[], redis.Redis]
    load_engine: Callable[[], Engine]
    facts: dict[str, Any] = field(default_factory=dict)  # what one check learned that a later one reuses

    @cached_property
    def client(self) -> FhirClient:
        return self.make_client()

    @cached_property
    def redis(self) -> redis.Redis:
        return self.make_redis()

    @cached_property
    def engine(self) -> Engine:
        return self.load_engine()


class Check:
    """A doctor check. Subclasses set ``name`` / ``about`` and implement ``run``; an exception a check
    does not handle becomes a ``fail`` finding naming it (the doctor never dies of its patient)."""

    name: ClassVar[str]
    about: ClassVar[str]

    def run(self, ctx: DoctorContext) -> list[Finding]:
        raise NotImplementedError

    def ok(self, detail: str) -> Finding:
        return Finding(self.name, "ok", detail)

    def warn(self, detail: str, fix: str) -> Finding:
        return Finding(self.name, "warn", detail, fix)

    def fail(self, detail: str, fix: str) -> Finding:
        return Finding(self.name, "fail", detail, fix)

    def skip(self, detail: str) -> Finding:
        return Finding(self.name, "skip", detail)
