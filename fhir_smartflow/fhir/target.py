"""``WriteBackTarget``: where the executor writes resources, with the optional operations' defaults.

Subclasses: ``FhirWriteBack`` (fhir/writeback.py, the FHIR server), ``LocalFhirStore`` and
``OpenEmrWriteBack`` (openemr/: the local store + the OpenEMR mirror). A subclass implements the four
basic operations and overrides an optional one only when it can do better than the default.

``create`` is idempotent by business identifier (system ``identifier_system``, value ``identifier``):
a second call with the same identifier returns the existing resource and creates nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

Resource = dict[str, Any]
# (resource, business identifier, the entry's fullUrl) → (stored, created?), for create_all
BatchItem = tuple[Resource, str, str]


class TransactionsUnsupported(NotImplementedError):
    """``create_all`` on a target whose ``supports_transactions()`` is False."""


class WriteBackTarget(ABC):
    identifier_system: str  # the system of our business identifiers ([fhir] identifier_system)

    @abstractmethod
    def create(self, resource: Resource, identifier: str) -> Resource: ...

    @abstractmethod
    def read(self, reference: str) -> Resource | None: ...

    @abstractmethod
    def update(self, resource: Resource) -> Resource: ...

    @abstractmethod
    def search(self, resource_type: str, params: dict[str, str]) -> list[Resource]: ...

    # -- optional operations, with their defaults ------------------------------------------------------

    def create_with_status(self, resource: Resource, identifier: str) -> tuple[Resource, bool | None]:
        """``create`` and whether it created (True) or found (False) the resource; None: not known."""
        return self.create(resource, identifier), None

    def supports_transactions(self) -> bool:
        """Whether ``create_all`` can write many resources in one transaction."""
        return False

    def create_all(self, items: list[BatchItem]) -> list[tuple[Resource, bool]]:
        """Conditionally create every item in one transaction, all or nothing; (stored, created?) each."""
        raise TransactionsUnsupported(f"{type(self).__name__} writes no transactions")

    def find_by_identifier(self, resource_type: str, identifier: str) -> Resource | None:
        """The resource with our business identifier ``identifier`` (the first when several match)."""
        found = self.search(resource_type, {"identifier": f"{self.identifier_system}|{identifier}"})
        return found[0] if found else None
