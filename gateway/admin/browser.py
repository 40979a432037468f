"""The admin listener for people with a browser: sign-in, sign-out, and pages for errors.

The JSON API stays as it is for scripts (``Authorization: Bearer``). A browser, which cannot
send that header from a link, signs in once at ``/ui/sign-in`` with its token and is given a
session cookie (``gateway/admin/session.py``; the token itself goes into the form's body,
never into a URL, a log or the cookie). A browser's refused or failed request to a page is
answered with a page saying why and what to do, with the same status the API would give.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from html import escape
from typing import Any

from aiohttp import web

from gateway.admin.auth import SIGN_IN, SIGN_OUT, AdminAuth, identity_of, is_page, same_origin
from gateway.admin.session import cookie_name

log = logging.getLogger("vitalgate.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LogEvent = Callable[[str, dict[str, Any]], None]
"""Writes one event to the access log (``admin_sign_in``, ``admin_sign_out``)."""

AUDIT_PAGE = "/ui/audit"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2633;
   background: #f6f7f9; }
header { background: #1d2633; color: white; padding: 12px 16px; display: flex; flex-wrap: wrap;
   gap: 8px 16px; align-items: center; }
header a { color: #cfe0ff; } header h1 { font-size: 1.3rem; margin: 0; flex: 1 1 auto; }
header form { margin: 0; }
header button { background: none; border: 1px solid #cfe0ff; color: #cfe0ff; border-radius: 4px;
   padding: 3px 10px; font: inherit; cursor: pointer; }
main { padding: 12px 16px; max-width: 1100px; margin: auto; }
h2 { font-size: 1.05rem; margin-top: 1.4rem; }
.card { background: white; border: 1px solid #e2e5ea; border-radius: 6px; padding: 16px;
   max-width: 420px; margin: 24px auto; }
label { display: block; font-weight: 600; margin: 10px 0 4px; font-size: 0.9rem; }
input, select { font: inherit; padding: 7px 8px; border: 1px solid #b8c0cc; border-radius: 4px;
   width: 100%; box-sizing: border-box; background: white; }
button.primary { margin-top: 14px; background: #1d4ed8; color: white; border: 0;
   border-radius: 4px; padding: 9px 16px; font: inherit; font-weight: 600; cursor: pointer; }
button.secondary { margin-top: 14px; background: white; color: #1d4ed8; border: 1px solid #1d4ed8;
   border-radius: 4px; padding: 8px 14px; font: inherit; cursor: pointer; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 0 14px; }
.note { color: #555; font-size: 0.9rem; }
.error { background: #fdecea; color: #8c1d18; border: 1px solid #f3b8b3; border-radius: 4px;
   padding: 8px 10px; }
.okbox { background: #e8f5ec; color: #17733a; border: 1px solid #b5dfc2; border-radius: 4px;
   padding: 8px 10px; }
.warnbox { background: #fff8e1; color: #6b4e00; border: 1px solid #f0d98a; border-radius: 4px;
  padding: 8px 10px; }
.scroll { overflow-x: auto; }
@media (max-width: 640px) {
  table.events thead { display: none; }
  table.events tr { display: block; border-bottom: 2px solid #c9ced6; padding: 4px 0; }
  table.events td { display: flex; gap: 10px; border: 0; padding: 2px 8px; white-space: normal;
    overflow-wrap: anywhere; }
  table.events td::before { content: attr(data-label); flex: 0 0 6.5rem; color: #555; font-weight: 600; }
}
table { border-collapse: collapse; width: 100%; background: white; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #e2e5ea; padding: 6px 8px; text-align: left; white-space: nowrap; }
th { background: #eef1f5; }
"""

SIGN_OUT_FORM = f'<form method="post" action="{SIGN_OUT}"><button type="submit">Sign out</button></form>'


def has_session(request: web.Request) -> bool:
    """Whether this request came with a browser session (so a page offers "Sign out"): not
    with no tokens configured (nobody signs in) nor for a bearer token (nothing to end)."""
    return "Authorization" not in request.headers and identity_of(request).name != "anonymous"


def page(title: str, body: str, *, nav: str = "") -> str:
    """A whole page in the listener's look (the status pages' own are ``reports/pages.py``'s)."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1>{nav}</header><main>{body}</main></body></html>"
    )


def html_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=headers)


def wants_page(request: web.Request) -> bool:
    """A browser (it asks for HTML and sends no ``Authorization``), on a page's path."""
    return (
        "Authorization" not in request.headers
        and "text/html" in request.headers.get("Accept", "")
        and is_page(request.path)
    )


def home_of(role: str) -> str:
    return AUDIT_PAGE if role == "auditor" else "/ui"


def _next_path(value: str | None) -> str | None:
    """Where to go after signing in: a page of this listener only (never another site)."""
    if value is None or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    return value if is_page(value.partition("?")[0]) and value != SIGN_IN else None


def sign_in_page(next_path: str | None, message: str | None = None, notice: str | None = None) -> str:
    parts = ['<div class="card"><form method="post" action="/ui/sign-in">']
    if message:
        parts.append(f'<p class="error" role="alert">{escape(message)}</p>')
    if notice:
        parts.append(f'<p class="okbox">{escape(notice)}</p>')
    parts.append(
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password"'
        ' required autofocus spellcheck="false">'
    )
    if next_path:
        parts.append(f'<input type="hidden" name="next" value="{escape(next_path)}">')
    parts.append(
        '<button class="primary" type="submit">Sign in</button></form>'
        '<p class="note">The token your administrator gave you (the one scripts send as'
        " <code>Authorization: Bearer</code>). It is exchanged for a session cookie, a random id"
        " that ends when you sign out or after some hours; the cookie does not hold the token.</p></div>"
    )
    return page("vitalgate: sign in", "".join(parts))


ERROR_TEXT = {
    400: ("Bad request", "The request could not be read."),
    403: ("Not allowed", "Your sign-in does not give access to this page."),
    404: ("Not found", "There is no such page."),
    405: ("Not allowed", "This page does not take that kind of request."),
    500: ("Failed", "The admin listener failed to answer."),
    503: ("Unavailable", "The figures cannot be read just now."),
}

DETAILS = {
    "cross_site": "This request did not come from these pages (a page of another site may not"
    " change anything here). Go back to the page and use its own button.",
    "forbidden": "Your sign-in does not give access to this page.",
}


def error_page(status: int, body: dict[str, Any], signed_in: bool) -> str:
    title, text = ERROR_TEXT.get(status, ("Error", "The request failed."))
    error = str(body.get("error", ""))
    detail = DETAILS.get(error) or str(body.get("detail") or body.get("error") or text)
    links = '<p><a href="/ui">Back to the start page</a></p>'
    nav = SIGN_OUT_FORM if signed_in else '<a href="/ui/sign-in">Sign in</a>'
    return page(f"vitalgate: {title.lower()}", f"<p class=error>{escape(detail)}</p>{links}", nav=nav)


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A browser's failed request to a page gets a page (with the API's status); a 401 there
    is the sign-in form, which comes back to the page asked for."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if not wants_page(request) or exc.status < 400:
            raise
        response = exc
    if (
        not isinstance(response, web.Response)
        or response.status < 400
        or response.content_type not in ("application/json", "text/plain")
        or not wants_page(request)
    ):
        return response  # (a page already, or a success)
    body: dict[str, Any] = {}
    if response.content_type == "application/json":  # the listener's own errors: say why
        raw = response.body if isinstance(response.body, bytes) else b"{}"
        try:
            parsed = json.loads(raw)
        except ValueError:
            return response  # (not one of the listener's own: passed on as it is)
        body = parsed if isinstance(parsed, dict) else {}
    headers = {k: v for k, v in response.headers.items() if k == "WWW-Authenticate"}
    if response.status == 401:
        wanted = request.path_qs if request.method in ("GET", "HEAD") else None
        return html_response(sign_in_page(_next_path(wanted)), 401, headers)
    return html_response(error_page(response.status, body, has_session(request)), response.status, headers)


@web.middleware
async def auditor_home(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The auditor reads the audit trail, not the SLOs: its ``/ui`` is the audit page."""
    if request.path == "/ui" and identity_of(request).role == "auditor":
        raise web.HTTPSeeOther(AUDIT_PAGE)
    return await handler(request)


class SignIn:
    """``/ui/sign-in`` (GET: the form; POST: token for cookie) and ``/ui/sign-out`` (POST)."""

    def __init__(self, auth: AdminAuth, event: LogEvent) -> None:
        self.auth = auth
        self._event = event

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(SIGN_IN, self.form)
        app.router.add_post(SIGN_IN, self.sign_in)
        app.router.add_post(SIGN_OUT, self.sign_out)

    async def form(self, request: web.Request) -> web.Response:
        if not self.auth.enabled:
            return html_response(
                page(
                    "vitalgate: sign in",
                    '<div class="card"><p>No admin tokens are configured: the pages are open to'
                    ' whoever reaches this listener.</p><p><a href="/ui">Go to the pages</a></p></div>',
                )
            )
        identity = self.auth.session_identity(request)
        if identity is not None:
            raise web.HTTPSeeOther(home_of(identity.role))
        notice = "You are signed out." if request.query.get("signed-out") == "1" else None
        return html_response(sign_in_page(_next_path(request.query.get("next")), notice=notice))

    async def sign_in(self, request: web.Request) -> web.Response:
        if not same_origin(request):
            self.auth.sessions.count_sign_in("refused")
            self._event("admin_sign_in", {"token": None, "result": "refused", "reason": "cross_site"})
            log.warning(
                "admin listener: a sign-in not posted from the sign-in page was refused",
                extra={"event": "admin_sign_in", "result": "refused", "reason": "cross_site"},
            )
            signed_in = self.auth.session_identity(request) is not None
            return html_response(error_page(403, {"error": "cross_site"}, signed_in), 403)
        form = await request.post()
        token, wanted = form.get("token"), form.get("next")
        next_path = _next_path(wanted if isinstance(wanted, str) else None)
        found = self.auth.token(token) if isinstance(token, str) and self.auth.enabled else None
        if found is None:
            self.auth.sessions.count_sign_in("refused")
            # (nothing of the refused token is logged, not even a part or its hash)
            self._event("admin_sign_in", {"token": None, "result": "refused", "reason": "unknown_token"})
            log.warning(
                "admin listener: a sign-in with an unknown token was refused",
                extra={"event": "admin_sign_in", "result": "refused", "reason": "unknown_token"},
            )
            return html_response(sign_in_page(next_path, "That is not a valid admin token."), 401)
        token_sha256, identity = found
        secure = self.auth.secure(request)
        session_id = self.auth.sessions.open(token_sha256, time.time())
        self.auth.sessions.count_sign_in("ok")
        self._event("admin_sign_in", {"token": identity.name, "result": "ok"})
        response = web.HTTPSeeOther(next_path or home_of(identity.role))
        response.set_cookie(
            cookie_name(secure),
            session_id,
            max_age=int(self.auth.sessions.max_age_s),
            path="/",
            secure=secure,
            httponly=True,
            samesite="Strict",
        )
        raise response

    async def sign_out(self, request: web.Request) -> web.Response:
        """Ends the session (the auth middleware has checked it came from these pages)."""
        secure = self.auth.secure(request)
        session_id = self.auth.session_id(request)
        if session_id is not None and self.auth.sessions.close(session_id) is not None:
            self._event("admin_sign_out", {"token": identity_of(request).name})
        response = web.HTTPSeeOther(f"{SIGN_IN}?signed-out=1")
        response.del_cookie(cookie_name(secure), path="/", secure=secure, httponly=True, samesite="Strict")
        raise response
