"""The real servers a test talks to: a clinical upstream with scripted faults, an OTLP/HTTP
receiver, an Alertmanager webhook; on the test's event loop or, for synchronous tests, on a
thread of their own (``BackgroundPeers``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from vitalgate.otlpsink import OtlpSink
from vitalgate.peers import UpstreamPeer, free_port, reset


class Upstream(UpstreamPeer):
    """A clinical upstream for tests. ``X-Test-Fault`` picks a misbehaviour:
    ``500``, ``reset`` (close without answering), ``slow`` (sleep past the gateway's
    timeout), ``midbody`` (headers, part of the body, then close), ``status:N``."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        fault = request.headers.get("X-Test-Fault", "")
        size = 0
        if request.can_read_body:
            async for chunk in request.content.iter_any():
                size += len(chunk)
        self.seen.append(
            {
                "method": request.method,
                "path_qs": request.path_qs,
                "headers": dict(request.headers),
                "body_size": size,
            }
        )
        if fault == "500":
            return web.json_response({"resourceType": "OperationOutcome"}, status=500)
        if fault == "reset":
            return reset(request)
        if fault == "slow":
            await asyncio.sleep(float(request.headers.get("X-Test-Sleep", "5")))
        if fault.startswith("status:"):
            return web.Response(status=int(fault.split(":")[1]))
        if fault == "redirect":
            return web.Response(status=302, headers={"Location": "/fhir/metadata"})
        if fault == "gzip":
            return web.Response(body=b"\x1f\x8b" + b"\x00" * 20, headers={"Content-Encoding": "gzip"})
        if fault == "midbody":
            resp = web.StreamResponse(headers={"Content-Length": "100000"})
            await resp.prepare(request)
            await resp.write(b"x" * 1000)
            assert request.transport is not None
            request.transport.close()
            return resp
        if "X-Test-Stream-Bytes" in request.headers:
            n = int(request.headers["X-Test-Stream-Bytes"])
            resp = web.StreamResponse(headers={"Content-Type": "application/fhir+json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            block = b"0" * 65536
            sent = 0
            while sent < n:
                part = block[: min(len(block), n - sent)]
                await resp.write(part)
                sent += len(part)
            await resp.write_eof()
            return resp
        if fault == "slow":
            return web.json_response({"slow": True})
        if fault == "searchset":  # two patients, and an Observation about a third
            return web.json_response(SEARCHSET, content_type="application/fhir+json")
        return web.json_response(
            {"resourceType": "Bundle", "received_bytes": size, "path": request.path},
            headers={"X-Upstream": "yes", "Set-Cookie": "a=1"},
        )


SEARCHSET = {
    "resourceType": "Bundle",
    "type": "searchset",
    "entry": [
        {"resource": {"resourceType": "Patient", "id": "p-smith-1", "name": [{"family": "Smithfield"}]}},
        {"resource": {"resourceType": "Patient", "id": "p-jones-2", "name": [{"family": "Jonesworth"}]}},
        {
            "resource": {
                "resourceType": "Observation",
                "id": "o1",
                "subject": {"reference": "Patient/p-lee-3"},
            }
        },
    ],
}
"""A FHIR search result naming three patients (``X-Test-Fault: searchset``)."""


async def start_sink(sink: OtlpSink) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(sink.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


class BackgroundPeers:
    """A test upstream and an OTLP sink on their own event loop thread, for synchronous tests."""

    def __init__(self) -> None:
        self.upstream = Upstream()
        self.sink = OtlpSink(keep_raw=True)
        self.sink_port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._sink_runner: web.AppRunner | None = None

    def __enter__(self) -> BackgroundPeers:
        self._thread.start()

        async def start() -> None:
            await self.upstream.start()
            self._sink_runner, self.sink_port = await start_sink(self.sink)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the peers' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self.upstream.stop()
            if self._sink_runner is not None:
                await self._sink_runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class Webhook:
    """Collects Alertmanager webhook notifications, on the BackgroundPeers loop."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{receiver}", self._post)
        return app

    async def _post(self, request: web.Request) -> web.Response:
        self.received.append((request.match_info["receiver"], await request.json()))
        return web.Response(text="ok")

    def alerts(self) -> list[tuple[str, dict[str, str]]]:
        """(receiver path, labels) of every firing alert delivered."""
        return [
            (r, a["labels"])
            for r, body in list(self.received)
            for a in body["alerts"]
            if a["status"] == "firing"
        ]
