"""Access to the admin listener's API and pages: bearer tokens, stored only as SHA-256.

Roles: ``sre`` (everything), ``engineer`` (read everything), ``account_manager``
(read only the facilities listed on the token), ``auditor`` (the audit trail
only). With tokens configured, ``/api/*`` and ``/ui*`` need ``Authorization:
Bearer``: 401 without a valid one, 403 outside the token's facilities. A
browser may instead sign in at ``/ui/sign-in`` and send the session cookie
(``gateway/admin/session.py``), which opens the pages (``/ui*``), the report
downloads and the latency page's read-only JSON (``/api/v1/latency/*``, which the
page links to), never the rest of the JSON API; a request that carries an
``Authorization`` header is judged by that header alone. A cookie-borne
request that changes state must come from the listener's own pages
(``same_origin``): with ``SameSite=Strict`` that is the CSRF defence, and the
only such requests are sign-out and the audit page's search and export.
``/metrics``, ``/healthz`` and ``/readyz`` stay open unless
``admin.protect_metrics`` is set. The token itself is never logged; accesses
are logged with the token's name, and so are refusals (``on_refused``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from gateway.admin.config import SessionsConfig, TokenConfig
from gateway.admin.session import Sessions, cookie_name

IDENTITY_KEY = web.RequestKey("vitalgate.identity", object)
OPEN_PATHS = ("/metrics", "/healthz", "/readyz")
SIGN_IN = "/ui/sign-in"
SIGN_OUT = "/ui/sign-out"
SAFE_METHODS = ("GET", "HEAD")


SESSION_READS = ("/api/v1/reports/", "/api/v1/latency/")
"""The API paths a browser session opens besides the pages: what the pages link to, all of
them GET only and scoped to the session's facilities as the pages are."""


def is_page(path: str) -> bool:
    """What a browser session opens: the pages, the report downloads and the latency JSON
    (not the rest of the JSON API)."""
    return path == "/ui" or path.startswith(("/ui/", *SESSION_READS))


def same_origin(request: web.Request) -> bool:
    """Whether a browser sent this request from the listener's own pages, decided as Go's
    ``http.CrossOriginProtection`` does: by ``Sec-Fetch-Site`` when the browser sends it, else
    by ``Origin`` against ``Host``. A request with neither is refused too: every browser that
    runs these pages sends one of them on a POST."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == request.host.lower()


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

OnRefused = Callable[[web.Request, Identity | None, int, str], None]
"""Told of each request the middleware refuses: the identity it is known by (None: none),
the status, and the reason (``unauthenticated``, ``cross_site``)."""


class AdminAuth:
    def __init__(
        self,
        tokens: Sequence[TokenConfig],
        protect_metrics: bool = False,
        sessions: SessionsConfig | None = None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        cfg = sessions or SessionsConfig()
        self.sessions = Sessions(cfg.max_age, cfg.max_count)
        self._trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self.on_refused: OnRefused | None = None
        """Set by the admin API: writes each refusal to the access log (and the audit trail)."""
        self.set_tokens(tokens, protect_metrics)
        self.set_sessions(cfg, trusted_proxies)

    def set_sessions(self, sessions: SessionsConfig, trusted_proxies: Sequence[str]) -> None:
        """The session limits and the proxies believed about TLS (again after a reload)."""
        self.sessions.configure(sessions.max_age, sessions.max_count)
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)

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
        if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 6750)
            return None
        found = self.token(token)
        return None if found is None else found[1]

    def token(self, token: str) -> tuple[str, Identity] | None:
        """The configured token that ``token`` is: its hash and identity (None: none is)."""
        if not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for known, identity in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return known, identity
        return None

    def secure(self, request: web.Request) -> bool:
        """Whether the browser reached the listener over TLS: directly, or through a trusted
        proxy (``trusted_proxies``) that says so in ``X-Forwarded-Proto``."""
        if request.secure:
            return True
        try:
            peer = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        forwarded = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        return forwarded == "https" and any(peer in n for n in self._trusted)

    def session_id(self, request: web.Request) -> str | None:
        return request.cookies.get(cookie_name(self.secure(request)))

    def session_identity(self, request: web.Request) -> Identity | None:
        """The identity of the request's session, as its token is configured now (a token
        removed by a reload ends its sessions)."""
        session_id = self.session_id(request)
        if session_id is None:
            return None
        session = self.sessions.find(session_id, time.time())
        return None if session is None else self._by_hash.get(session.token_sha256)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in OPEN_PATHS and not self.protect_metrics:
            return await handler(request)
        if request.path == SIGN_IN:  # (its handler judges the token it is given)
            return await handler(request)
        authorization = request.headers.get("Authorization")
        if authorization is None and self.enabled and is_page(request.path):
            # Refused whether or not a cookie came with it (SameSite=Strict withholds it from
            # another site's request): another site's page learns nothing and changes nothing.
            identity = self.session_identity(request)
            if request.method not in SAFE_METHODS and not same_origin(request):
                if identity is not None:  # (the refusal page knows who is signed in)
                    request[IDENTITY_KEY] = identity
                self._refused(request, identity, 403, "cross_site")
                return cross_site()
        else:
            identity = self.identify(authorization)
        if identity is None:
            self._refused(request, None, 401, "unauthenticated")
            return web.json_response(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <admin token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="vitalgate admin"'},
            )
        request[IDENTITY_KEY] = identity
        return await handler(request)

    def _refused(self, request: web.Request, identity: Identity | None, status: int, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(request, identity, status, reason)


SECURITY_HEADERS = {
    # Pages and reports are self-contained (inline styles, images as data: URLs, no scripts);
    # their only forms (sign-in, sign-out, the audit search) post to this listener.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none';"
        " base-uri 'none'; form-action 'self'"
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


def cross_site() -> web.Response:
    return web.json_response(
        {"error": "cross_site", "detail": "a request from another site's page may not change anything here"},
        status=403,
    )


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
