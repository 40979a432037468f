"""Who made a request, for the audit trail: a bearer JWT verified against a JWKS (RS256 or
ES256; signature, expiry, issuer, audience, with PyJWT), or a header an authenticating proxy
in front sets, believed only from its configured addresses. What cannot be established is
recorded as unverified, with the token's SHA-256, never the token.

Runs in the audit writer's process, never on the request path: a token is judged when its
record is written (within ``flush_interval``), its expiry against the time of the request, and
its signature against the JWKS as the writer finds it then (an unknown key id fetches a
``jwks_url`` again).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from gateway.audit.events import Who

ALGORITHMS = ["RS256", "ES256"]
CACHE_MAX = 10_000
NBF_LEEWAY_S = 30.0
"""Clock skew allowed between the identity provider and the gateway for ``nbf``."""


_UNSEEN = ""
"""``Identities.digest``'s marker for a header value not seen yet (no digest is empty)."""


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Identities:
    """Resolves the user of a request (``resolve``), caching verified tokens until they expire."""

    def __init__(self) -> None:
        self._digests: dict[str, str | None] = {}

    def digest(self, authorization: str | None) -> str | None:
        """The SHA-256 of a request's bearer token, None without one. Kept per header value: a
        client sends the same token with every request of its session."""
        if not authorization:
            return None
        digest = self._digests.get(authorization, _UNSEEN)
        if digest is _UNSEEN:
            token = _bearer(authorization)
            digest = _sha256(token) if token else None
            if len(self._digests) >= CACHE_MAX:
                self._digests.clear()
            self._digests[authorization] = digest
        return digest

    def resolve(
        self, authorization: str | None, user_header: str | None, peer: str | None, at_s: float
    ) -> Who:
        raise NotImplementedError


NOBODY = Who(None, None, None, False, None, "no identity configured")


class NoIdentity(Identities):
    """No ``audit.identity`` configured: every user is unverified (the token's hash kept)."""

    def __init__(self) -> None:
        super().__init__()
        self._who: dict[str | None, Who] = {}

    def resolve(
        self, authorization: str | None, user_header: str | None, peer: str | None, at_s: float
    ) -> Who:
        who = self._who.get(authorization)
        if who is None:
            digest = self.digest(authorization)
            who = NOBODY if digest is None else Who(None, None, None, False, digest, "no identity configured")
            if len(self._who) >= CACHE_MAX:
                self._who.clear()
            self._who[authorization] = who
        return who


class HeaderIdentity(Identities):
    def __init__(self, trusted_sources: Sequence[str]) -> None:
        super().__init__()
        self._networks = [ipaddress.ip_network(s, strict=False) for s in trusted_sources]
        self._trusted: dict[str, bool] = {}

    def _is_trusted(self, peer: str | None) -> bool:
        if peer is None:
            return False
        known = self._trusted.get(peer)
        if known is None:
            try:
                addr = ipaddress.ip_address(peer)
            except ValueError:
                return False
            known = any(addr in n for n in self._networks)
            if len(self._trusted) < CACHE_MAX:
                self._trusted[peer] = known
        return known

    def resolve(
        self, authorization: str | None, user_header: str | None, peer: str | None, at_s: float
    ) -> Who:
        digest = self.digest(authorization)
        if not user_header:
            return Who(None, None, None, False, digest, "no identity header")
        if not self._is_trusted(peer):
            return Who(None, None, None, False, digest, "identity header from an untrusted address")
        return Who(user_header, None, None, True, None)


class JwksIdentity(Identities):
    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_file: Path | None,
        jwks_url: str | None,
        refresh_s: float,
    ) -> None:
        super().__init__()
        self.issuer = issuer
        self.audience = audience
        self._file = jwks_file
        # An unknown key id fetches the set again, at most once per refresh period (PyJWT's
        # cooldown: tokens with made-up key ids cannot make the gateway hammer the provider).
        self._client = (
            jwt.PyJWKClient(jwks_url, lifespan=refresh_s, cooldown_duration=min(30.0, refresh_s))
            if jwks_url
            else None
        )
        self._refresh_s = refresh_s
        self._keys: dict[str, Any] = {}
        self._loaded_at = 0.0
        self._mtime = 0.0
        self._cache: dict[str, tuple[Who, float]] = {}

    def _file_key(self, kid: str | None) -> Any:
        assert self._file is not None
        now = time.monotonic()
        if now - self._loaded_at > self._refresh_s or (kid is not None and kid not in self._keys):
            mtime = self._file.stat().st_mtime
            if mtime != self._mtime or not self._keys:
                keyset = jwt.PyJWKSet.from_dict(json.loads(self._file.read_text()))
                self._keys = {k.key_id or "": k for k in keyset.keys}
                self._mtime = mtime
            self._loaded_at = now
        key = self._keys.get(kid or "") or (next(iter(self._keys.values())) if len(self._keys) == 1 else None)
        if key is None:
            raise jwt.InvalidKeyError(f"no key {kid!r} in the JWKS")
        return key

    def _verify(self, token: str, at_s: float) -> dict[str, Any]:
        if self._client is not None:
            key: Any = self._client.get_signing_key_from_jwt(token)
        else:
            key = self._file_key(jwt.get_unverified_header(token).get("kid"))
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            audience=self.audience,
            issuer=self.issuer,
            # Expiry and not-before are judged at the request's time, below, not the writer's.
            options={"require": ["exp", "iss", "aud", "sub"], "verify_exp": False, "verify_nbf": False},
        )
        if float(claims["exp"]) <= at_s:
            raise jwt.ExpiredSignatureError("expired before the request")
        if "nbf" in claims and float(claims["nbf"]) > at_s + NBF_LEEWAY_S:
            raise jwt.ImmatureSignatureError("not yet valid at the request")
        return claims

    def resolve(
        self, authorization: str | None, user_header: str | None, peer: str | None, at_s: float
    ) -> Who:
        token = _bearer(authorization)
        if token is None:
            return Who(None, None, None, False, None, "no bearer token")
        digest = self.digest(authorization) or _sha256(token)
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > at_s:
            return cached[0]
        try:
            claims = self._verify(token, at_s)
        except jwt.ExpiredSignatureError:
            return Who(None, None, None, False, digest, "expired")
        except jwt.InvalidSignatureError:
            return Who(None, None, None, False, digest, "bad_signature")
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            return Who(None, None, None, False, digest, "wrong_issuer_or_audience")
        except (jwt.PyJWTError, OSError, ValueError) as exc:
            # A malformed token, an unknown key, an unreadable or unreachable JWKS: the user is
            # not established, and the record says why (the reason is a fixed class name).
            return Who(None, None, None, False, digest, type(exc).__name__)
        client = claims.get("azp") or claims.get("client_id")
        who = Who(str(claims["sub"]), self.issuer, str(client) if client else None, True, None)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (who, float(claims["exp"]))
        return who


@dataclass(frozen=True)
class IdentitySettings:
    """``audit.identity`` as the writer process builds it (``build``): plain data, since it
    crosses to that process."""

    header: bool = False
    trusted_sources: tuple[str, ...] = ()
    issuer: str | None = None
    audience: str | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    refresh_s: float = 300.0


def build(settings: IdentitySettings | None) -> Identities:
    """The identities ``settings`` describe; None (no ``audit.identity``) is ``NoIdentity``."""
    if settings is None:
        return NoIdentity()
    if settings.header:
        return HeaderIdentity(settings.trusted_sources)
    assert settings.issuer is not None and settings.audience is not None  # the schema requires both
    return JwksIdentity(
        settings.issuer, settings.audience, settings.jwks_file, settings.jwks_url, settings.refresh_s
    )
