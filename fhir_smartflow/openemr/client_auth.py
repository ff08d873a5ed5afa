"""How the registered client authenticates for OpenEMR's user-context (write) token.

OpenEMR's dynamic registration accepts ``token_endpoint_auth_method`` ``client_secret_basic`` or
``client_secret_post`` only (src/RestControllers/AuthorizationController.php, clientRegistration: "Unsupported
token_endpoint_auth_method value : private_key_jwt") and answers a ``client_secret`` for a private app; its
``smart-configuration`` has no ``token_endpoint_auth_methods_supported`` (SMARTConfigurationController.php).
So for the authorization-code and refresh grants the client secret is the default (``client_secret_post``,
what the registration names); a key pair is used there only where the server advertises
``client-confidential-asymmetric`` (current releases) and a key is configured. The read token
(``client_credentials``) is always the JWT assertion: OpenEMR requires a JWKS for ``system/`` scopes.

``[openemr] client_auth = "auto"`` decides on the first token request, from the discovered configuration.
"""

from __future__ import annotations

from collections.abc import Callable

from fhir_smartflow.fhir.oauth import ClientAuth, ClientSecretBasic, ClientSecretPost, TokenRequest
from fhir_smartflow.fhir.smart import SmartConfiguration
from fhir_smartflow.openemr.errors import OpenEmrAuthUnavailable

ASYMMETRIC = "client-confidential-asymmetric"


def choose_client_auth(
    method: str,
    configuration: SmartConfiguration | None,
    client_id: str,
    secret: str | None,
    key_auth: Callable[[], ClientAuth] | None,
) -> ClientAuth:
    """The ClientAuth for ``method`` (or, for "auto", the one the server's configuration allows)."""
    if method == "auto":
        methods = set(configuration.token_endpoint_auth_methods) if configuration else set()
        asymmetric = configuration is not None and (
            ASYMMETRIC in configuration.capabilities or "private_key_jwt" in methods
        )
        if asymmetric and key_auth is not None:
            method = "private_key_jwt"
        elif methods == {"client_secret_basic"}:
            method = "client_secret_basic"
        else:
            method = "client_secret_post"
    if method == "private_key_jwt":
        if key_auth is None:
            raise OpenEmrAuthUnavailable("[openemr] client_auth = private_key_jwt needs a private_key_file")
        return key_auth()
    if not secret:
        raise OpenEmrAuthUnavailable(
            "no OpenEMR client secret: set the environment variable named by [openemr] client_secret_env to the "
            "client_secret the registration answered (`fhir-smartflow openemr register` prints it)"
        )
    secret_class = ClientSecretBasic if method == "client_secret_basic" else ClientSecretPost
    return secret_class(client_id, secret)


class DiscoveredClientAuth:
    """ClientAuth that picks the concrete method on first use (discovery needs the server)."""

    def __init__(self, client_id: str, resolve: Callable[[], ClientAuth]) -> None:
        self.client_id = client_id
        self._resolve = resolve
        self._chosen: ClientAuth | None = None

    @property
    def chosen(self) -> ClientAuth:
        if self._chosen is None:
            self._chosen = self._resolve()
        return self._chosen

    def authenticate(self, request: TokenRequest) -> None:
        self.chosen.authenticate(request)
