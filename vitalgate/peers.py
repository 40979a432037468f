"""Loopback peers the demo and the tests serve: an aiohttp application on a free port, and
the catch-all FHIR-like upstream both build their misbehaving servers on."""

from __future__ import annotations

import socket

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppPeer:
    """An aiohttp application served on a loopback port (``app()`` builds it)."""

    port = 0
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self, port: int | None = None) -> None:
        """Serve on ``port``, or on a free one (``self.port`` says which)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self.port = port if port is not None else free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class UpstreamPeer(AppPeer):
    """A FHIR-like upstream: every method and path goes to ``handle``."""

    max_body = 1024**3

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


def reset(request: web.Request) -> web.Response:
    """Close the connection without answering: the gateway sees a reset (and answers 502)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)  # never sent: the connection is gone


def operation_outcome(code: str, text: str) -> dict[str, object]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
