"""Access to the admin listener's API and pages: bearer tokens, stored only as SHA-256.

Roles: ``sre`` (everything), ``engineer`` (read everything), ``account_manager``
(read only the facilities listed on the token). With tokens configured,
``/api/*`` and ``/ui*`` need ``Authorization: Bearer``: 401 without a valid
one, 403 outside the token's facilities. ``/metrics``, ``/healthz`` and
``/readyz`` stay open unless ``admin.protect_metrics`` is set. The token
itself is never logged; accesses are logged with the token's name.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway.admin.config import TokenConfig

IDENTITY_KEY = web.RequestKey("vitalgate.identity", object)
OPEN_PATHS = ("/metrics", "/healthz", "/readyz")


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    facilities: frozenset[str]

    @property
    def sees_all(self) -> bool:
        return self.role in ("sre", "engineer")

    def may_see(self, facility: str) -> bool:
        return self.sees_all or facility in self.facilities


ANONYMOUS = Identity("anonymous", "sre", frozenset())
"""Who you are when no tokens are configured (the gateway warns at start)."""


class AdminAuth:
    def __init__(self, tokens: Sequence[TokenConfig], protect_metrics: bool = False) -> None:
        self.set_tokens(tokens, protect_metrics)

    def set_tokens(self, tokens: Sequence[TokenConfig], protect_metrics: bool) -> None:
        """The tokens in force (again after a reload: a revoked token is refused from the next
        request)."""
        self._by_hash = {t.sha256: Identity(t.name, t.role, frozenset(t.facilities)) for t in tokens}
        self.enabled = bool(tokens)
        self.protect_metrics = protect_metrics

    def identify(self, authorization: str | None) -> Identity | None:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():  # the scheme is case-insensitive (RFC 6750)
            return None
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for known, identity in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return identity
        return None

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in OPEN_PATHS and not self.protect_metrics:
            return await handler(request)
        identity = self.identify(request.headers.get("Authorization"))
        if identity is None:
            return web.json_response(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <admin token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="vitalgate admin"'},
            )
        request[IDENTITY_KEY] = identity
        return await handler(request)


SECURITY_HEADERS = {
    # Pages and reports are self-contained (inline styles, images as data: URLs, no scripts).
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none';"
        " base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",  # SLO numbers and contract reports: never cached on the way
    "Referrer-Policy": "no-referrer",
    "Server": "vitalgate",  # (no framework or version)
}


async def add_security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """On every admin response, before its headers are sent (``on_response_prepare``)."""
    response.headers.update(SECURITY_HEADERS)


def identity_of(request: web.Request) -> Identity:
    found = request.get(IDENTITY_KEY)
    return found if isinstance(found, Identity) else ANONYMOUS


def forbidden() -> web.Response:
    # (the id is not echoed: nothing of a request comes back in an error)
    return web.json_response(
        {"error": "forbidden", "detail": "this token may not read that facility"}, status=403
    )


def refuse_facility(identity: Identity, facility: str, known: Collection[str]) -> web.Response | None:
    """The answer when ``identity`` may not have ``facility`` (None: it may). A token limited
    to some facilities gets the same 403 for an id that exists and one that does not, so it
    cannot learn which facilities there are; a token that sees all gets 404 for an unknown id."""
    if identity.may_see(facility) and facility in known:
        return None
    if facility not in known and identity.sees_all:
        return web.json_response({"error": "unknown facility"}, status=404)
    return forbidden()
