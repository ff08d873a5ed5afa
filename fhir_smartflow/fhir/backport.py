"""Subscriptions R4 Backport IG canonicals, and the project's SubscriptionTopics (served by the sandbox).

One place for the URLs that the sandbox notifier and `subscriptions print|sync` must agree on.
"""

from __future__ import annotations

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
EXT_FILTER = BACKPORT + "backport-filter-criteria"
EXT_PAYLOAD = BACKPORT + "backport-payload-content"
EXT_HEARTBEAT = BACKPORT + "backport-heartbeat-period"
EXT_TIMEOUT = BACKPORT + "backport-timeout"
PROFILE_SUBSCRIPTION = BACKPORT + "backport-subscription"
PROFILE_NOTIFICATION = BACKPORT + "backport-subscription-notification-r4"
PROFILE_STATUS = BACKPORT + "backport-subscription-status-r4"
PAYLOAD_CONTENTS = ("empty", "id-only", "full-resource")

TOPIC_BASE = "http://fhir-smartflow.example/SubscriptionTopic/"
GENERIC_TOPIC = TOPIC_BASE + "resource-changes"  # any resource type; the filter criteria name it
TOPIC_FOR_TYPE: dict[str, str] = {
    "Patient": TOPIC_BASE + "patient-changes",
    "Appointment": TOPIC_BASE + "appointment-changes",
    "QuestionnaireResponse": TOPIC_BASE + "questionnaire-response-changes",
    "Encounter": TOPIC_BASE + "encounter-changes",
    "Task": TOPIC_BASE + "task-changes",
    "CarePlan": TOPIC_BASE + "careplan-changes",
}
TYPE_FOR_TOPIC: dict[str, str] = {topic: rtype for rtype, topic in TOPIC_FOR_TYPE.items()}


def canonical_url(canonical: str) -> str:
    """A canonical without its ``|version`` suffix."""
    return canonical.split("|", 1)[0]
