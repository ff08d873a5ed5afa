"""An OpenID Connect provider for tests, as an EHR's login server behaves (authorization code + PKCE,
RS256-signed id_tokens, JWKS): ``/authorize`` logs in ``provider.user`` at once (the user already has a
session at the EHR) and sends them back with a code; ``/token`` checks the client, the redirect URI and the
PKCE verifier before answering with an id_token carrying the nonce."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, abort, jsonify, redirect, request


@dataclass
class OidcProvider:
    client_id: str
    client_secret: str
    user: str = "Practitioner/123"
    issuer: str = ""  # set once served
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def app(self) -> Flask:
        app = Flask("oidc-provider")

        @app.get("/.well-known/openid-configuration")
        def configuration() -> Any:
            return jsonify(
                issuer=self.issuer,
                authorization_endpoint=f"{self.issuer}/authorize",
                token_endpoint=f"{self.issuer}/token",
                jwks_uri=f"{self.issuer}/jwks",
                response_types_supported=["code"],
                code_challenge_methods_supported=["S256"],
                id_token_signing_alg_values_supported=["RS256"],
            )

        @app.get("/jwks")
        def jwks() -> Any:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            return jsonify(keys=[{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}])

        @app.get("/authorize")
        def authorize() -> Any:
            args = request.args
            if args.get("client_id") != self.client_id or args.get("code_challenge_method") != "S256":
                abort(400)
            code = secrets.token_urlsafe(16)
            self.codes[code] = {**args, "user": self.user}
            return redirect(f"{args['redirect_uri']}?{urlencode({'code': code, 'state': args['state']})}")

        @app.post("/token")
        def token() -> Any:
            form = request.form
            auth = request.authorization
            if auth is None or (auth.username, auth.password) != (self.client_id, self.client_secret):
                return jsonify(error="invalid_client"), 401
            grant = self.codes.pop(form.get("code", ""), None)
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                return jsonify(error="invalid_grant"), 400
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["code_challenge"]:
                return jsonify(error="invalid_grant", error_description="PKCE"), 400
            now = int(time.time())
            claims = {
                "iss": self.issuer,
                "aud": self.client_id,
                "sub": grant["user"].replace("/", "-"),
                "fhirUser": grant["user"],
                "nonce": grant["nonce"],
                "iat": now,
                "exp": now + 300,
            }
            id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})
            return jsonify(access_token=secrets.token_urlsafe(16), token_type="Bearer", id_token=id_token)

        return app
