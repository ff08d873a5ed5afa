"""Server behaviours the sandbox can take on: ``lenient`` (quick experiments) or the strict servers clinics run.

Each profile is a set of behaviour switches, each taken from that server's documented behaviour (the
sources are listed per behaviour in docs/sandbox.md). Code asks the profile's fields, never its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fhir_smartflow.config import ConfigError

DEFAULT_PROFILE = "lenient"

# What a Subscription's status does (Profile.activation):
#   "sandbox": every client write starts as `requested`; the sandbox activates it; requested and active deliver.
#   "client":  the status is what the client writes; only `active` delivers; nobody activates `requested`.
#   "server":  the status is what the client writes; the server activates `requested` (or sets `error` with
#              the reason when it cannot serve its channel); only `active` delivers.
ACTIVATIONS = frozenset({"sandbox", "client", "server"})


def any_client_id(_rid: str) -> str | None:
    return None


def no_client_id(rid: str) -> str | None:
    return f"Invalid id: {rid!r} (this server assigns ids; create with POST)"


def not_numeric_client_id(rid: str) -> str | None:
    if rid.isdigit():
        return f"Invalid id: {rid!r} (purely numeric ids are reserved for server-assigned ids; use at least one letter)"
    return None


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    # A refusal text for a client-chosen id on create-by-PUT of a new resource, or None when allowed.
    client_id: Callable[[str], str | None]
    check_references: bool  # a literal reference must resolve to a live resource (400 otherwise)
    check_reference_types: bool  # the target type must be one the R4 element allows
    activation: str  # see ACTIVATIONS
    secret_extension: bool  # sign notifications (X-Signature) with the subscription-secret extension
    topic_subscriptions: bool  # R4 Backport topic-based Subscriptions are served (else stored, never notified)
    enforce_scopes: bool  # with registered OAuth clients: each interaction needs a token whose scopes cover it
    event_numbers_survive_restart: bool  # topic event numbers continue after a restart (else start again at 1)
    # Interactions a classic Subscription notifies when it names none (Medplum's supported-interaction
    # extension names them).
    classic_interactions: frozenset[str] = frozenset({"create", "update", "delete"})
    # Medplum's delivery headers (X-Medplum-Subscription, X-Medplum-Interaction; on a delete
    # X-Medplum-Deleted-Resource with the body ``{}``).
    interaction_headers: bool = False
    # A transaction-response entry carries the stored resource when the client sent no ``Prefer: return``
    # (HAPI puts it in only for ``return=representation``; without it, only status, location and etag).
    transaction_resources_by_default: bool = True

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"profile {self.name}: activation must be one of {sorted(ACTIVATIONS)}")

    @property
    def deliverable(self) -> frozenset[str]:
        """The Subscription statuses whose matches are notified."""
        return frozenset({"requested", "active"}) if self.activation == "sandbox" else frozenset({"active"})


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="lenient",
            summary="accepts what it can validate; activates every Subscription itself (quick experiments)",
            client_id=any_client_id,
            check_references=False,
            check_reference_types=False,
            activation="sandbox",
            secret_extension=True,
            topic_subscriptions=True,
            enforce_scopes=False,
            event_numbers_survive_restart=True,
        ),
        Profile(
            name="medplum",
            summary="server-assigned ids, references checked on write, only active Subscriptions notify",
            client_id=no_client_id,
            check_references=True,
            check_reference_types=True,
            activation="client",
            secret_extension=True,
            topic_subscriptions=False,
            enforce_scopes=True,
            event_numbers_survive_restart=True,
            classic_interactions=frozenset({"create", "update"}),
            interaction_headers=True,
        ),
        Profile(
            name="hapi",
            summary="HAPI FHIR JPA: no numeric client ids, referential integrity, activates requested Subscriptions",
            client_id=not_numeric_client_id,
            check_references=True,
            check_reference_types=True,
            activation="server",
            secret_extension=False,
            topic_subscriptions=True,
            enforce_scopes=True,
            event_numbers_survive_restart=False,
            transaction_resources_by_default=False,
        ),
    )
}


def profile_named(name: str) -> Profile:
    """The registered profile; ConfigError naming the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        choices = ", ".join(PROFILES)
        raise ConfigError("[sandbox] profile", f"unknown profile {name!r}; choose one of {choices}") from None
