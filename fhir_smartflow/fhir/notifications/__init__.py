"""Notification parsing: (method, path, headers, raw body) → a `Notification` of `ResourceEvent`s.

Pure: no I/O, no clock (the caller passes ``received_at``). One module per shape:

- `status`: Subscriptions R4 Backport IG (``Bundle`` type ``history``, first entry a ``Parameters``
  status), R4B (``history`` + ``SubscriptionStatus``), R5 (``subscription-notification`` + ``SubscriptionStatus``);
- `resthook`: classic R4 rest-hook: empty body, the changed resource, a ``history`` / ``collection`` Bundle;
- `servers`: HAPI FHIR's ``PUT|DELETE <endpoint>/<Type>/<id>`` and Medplum's ``X-Medplum-*`` headers;
- `body` (content type, JSON, nesting and text limits), `entries` (Bundle entries), `model` (the
  `Notification`, `NotificationError`, the per-delivery `ParseContext`), `parse` (which shape it is).

Anything else raises `NotificationError` with the HTTP status (400 / 413 / 415) and what was wrong.
"""

from fhir_smartflow.fhir.notifications.body import ACCEPTED_CONTENT_TYPES, MAX_JSON_DEPTH, check_content_type
from fhir_smartflow.fhir.notifications.model import (
    NOTIFICATION_TYPES,
    REST_HOOK,
    Notification,
    NotificationError,
    is_resource_type,
)
from fhir_smartflow.fhir.notifications.parse import parse_notification

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "MAX_JSON_DEPTH",
    "NOTIFICATION_TYPES",
    "REST_HOOK",
    "Notification",
    "NotificationError",
    "check_content_type",
    "is_resource_type",
    "parse_notification",
]
