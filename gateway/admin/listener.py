"""The admin listener's HTTP server: aiohttp's, without its habit of echoing requests.

aiohttp answers a malformed request with its parser's message as the body and logs it with
a traceback; both quote the offending bytes (an ``Authorization`` header with a stray byte,
a patient's name in a URL). Here a refused request gets a fixed JSON body and one log line
with the peer and status only; a handler's own failure (500) is logged with its traceback
frames but not the exception's message, which may carry request data.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.admin.auth import SECURITY_HEADERS

log = logging.getLogger("vitalgate.admin")


class _Handler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 and exc is not None:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("admin listener: %s in a handler\n%s", type(exc).__name__, frames)
            body: dict[str, str] = {"error": "internal", "detail": "the admin listener failed"}
        else:
            log.warning("admin listener: refused a malformed request from %s (%d)", request.remote, status)
            body = {"error": "bad_request", "detail": "malformed request"}
        resp = web.json_response(body, status=status, headers=SECURITY_HEADERS)
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class AdminRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are handled by ``_Handler``."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        kwargs: dict[str, Any] = dict(made._kwargs)
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **kwargs,
        )
