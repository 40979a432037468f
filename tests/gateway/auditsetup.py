"""The audit trail's test set-up, shared by the gateway's audit tests: an identity provider
that signs real JWTs (RS256 and ES256) with its JWKS file, a gateway.yaml with an audit section,
and requests as a user or an admin token."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.cli import vitalgate
from tests.support.gateway import gateway_config
from tests.support.readers import fetch

ISSUER = "https://idp.example.org"
AUDIENCE = "vitalgate-fhir"


def jwk(key: Any, kid: str) -> dict[str, Any]:
    """The public half of an RSA or EC key as a JWKS entry."""
    if isinstance(key, rsa.RSAPrivateKey):
        doc = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        doc = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**doc, "kid": kid, "use": "sig"}


class Idp:
    """A test identity provider: an RSA and an EC key, their JWKS, and tokens signed by them."""

    def __init__(self, folder: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.jwks = folder / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [jwk(self.rsa, "r1"), jwk(self.ec, "e1")]}))

    def token(self, sub: str, *, alg: str = "RS256", exp_in: float = 300, **claims: Any) -> str:
        key, kid = (self.rsa, "r1") if alg == "RS256" else (self.ec, "e1")
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": int(time.time() + exp_in), **claims}
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def audit_config(
    tmp_path: Path, upstream_port: int, keygen: bool = True, otlp_port: int | None = None, **audit: Any
) -> Path:
    """A test gateway.yaml with an audit section trusting the ``Idp`` of ``tmp_path`` (and new
    keys from ``vitalgate audit keygen`` unless ``keygen`` is false)."""
    if keygen:
        vitalgate("audit", "keygen", "--out", str(tmp_path / "keys"))
    section = {
        "path": "audit",
        "key_file": "keys/audit.key",
        "signing_key_file": "keys/audit-signing.key",
        "identity": {"jwks_file": "jwks.json", "issuer": ISSUER, "audience": AUDIENCE},
        "flush_interval": "200ms",
        **audit,
    }
    return gateway_config(tmp_path, upstream_port, otlp_port, extra={"audit": section})


def get_as(base: str, path: str, token: str | None = None, **headers: str) -> int:
    """GET through the gateway at st-marys, as the bearer of ``token``; the status."""
    h = {"X-Facility-ID": "st-marys", **headers}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return fetch(base + path, h)


def admin_get(url: str, token: str | None) -> tuple[int, dict[str, Any]]:
    """GET an admin API URL with an admin token; the status and the JSON body."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
