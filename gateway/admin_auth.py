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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway.config import TokenConfig

IDENTITY_KEY = web.RequestKey("vitalgate.identity", object)
OPEN_PATHS = ("/metrics", "/healthz", "/readyz")


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    facilities: frozenset[str]

    def may_see(self, facility: str) -> bool:
        if self.role in ("sre", "engineer"):
            return True
        return facility in self.facilities


ANONYMOUS = Identity("anonymous", "sre", frozenset())
"""Who you are when no tokens are configured (the gateway warns at start)."""


class AdminAuth:
    def __init__(self, tokens: Sequence[TokenConfig], protect_metrics: bool = False) -> None:
        self._by_hash = {t.sha256: Identity(t.name, t.role, frozenset(t.facilities)) for t in tokens}
        self.enabled = bool(tokens)
        self.protect_metrics = protect_metrics

    def identify(self, authorization: str | None) -> Identity | None:
        if not self.enabled:
            return ANONYMOUS
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
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


def identity_of(request: web.Request) -> Identity:
    found = request.get(IDENTITY_KEY)
    return found if isinstance(found, Identity) else ANONYMOUS


def forbidden(facility: str) -> web.Response:
    return web.json_response(
        {"error": "forbidden", "detail": f"this token may not read facility {facility!r}"}, status=403
    )
