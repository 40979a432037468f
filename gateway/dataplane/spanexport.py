"""Span export: spans encoded as they end, POSTed in batches to the collector from the event
loop with the gateway's own upstream client.

Spans leave through a bounded queue. When the queue is full, or the collector is down and an
export fails, the spans are dropped and counted
(``vitalgate_telemetry_dropped_total{signal="span"}``); the proxy never waits for a
collector. It is part of the compiled request path because ``on_end`` (encoding) runs for
every sampled request, and the POSTs use the compiled upstream client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit

from gateway.dataplane.errors import GatewayError, UpstreamReset
from gateway.dataplane.otlp import OtlpEncoder
from gateway.dataplane.settings import Timeouts, UpstreamSettings
from gateway.dataplane.spans import Span
from gateway.dataplane.upstream import Upstream


class _OneShot:
    """A request body already in memory, as the upstream client reads bodies."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    async def readany(self) -> bytes:
        data, self._data = self._data, None
        return data or b""


class LoopExporter:
    """Encodes spans as they end; POSTs them in batches from the event loop.

    No export thread: a thread encoding a batch holds the GIL for milliseconds,
    and the event loop waits for it (that showed as p99 latency). A span is
    encoded when it ends (about 7 us) and waits as bytes; the loop wakes every
    ``interval_s`` and POSTs batches of up to ``batch_size`` spans with the
    gateway's own upstream client, one at a time, never waited on by a request.
    """

    def __init__(
        self,
        encoder: OtlpEncoder,
        endpoint: str,
        timeout_s: float,
        queue_size: int,
        on_drop: Callable[[int], None],
        batch_size: int = 512,
        interval_s: float = 0.1,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._encoder = encoder
        self._on_failure = on_failure
        parts = urlsplit(endpoint)
        self._path = parts.path.rstrip("/") + "/v1/traces"
        origin = f"{parts.scheme}://{parts.netloc}"
        self._client = Upstream(
            "otlp",
            # Waiting longer than the export timeout for one of its two connections is no use.
            UpstreamSettings(origin, Timeouts(timeout_s, None, timeout_s, timeout_s), None, 2, "upstream"),
            None,
        )
        # Spans are encoded when they end and wait as bytes: no span object outlives its
        # request, so none is left for the garbage collector to walk (its pauses were the
        # gateway's largest latency outliers).
        self._spans: collections.deque[bytes] = collections.deque()
        self._queue_size = queue_size
        self._on_drop = on_drop
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def on_end(self, span: Span) -> None:
        if len(self._spans) >= self._queue_size:
            self._on_drop(1)
            return
        try:
            encoded = self._encoder.span(span)
        except Exception:  # an encoding bug loses this span, counted, never the request
            self._on_drop(1)
            return
        self._spans.append(encoded)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.drain()

    async def drain(self) -> None:
        """Export everything ended so far."""
        spans = self._spans
        while spans:
            n = min(len(spans), self._batch_size)
            body = self._encoder.wrap(b"".join([spans.popleft() for _ in range(n)]))
            failure = await self._post(body)
            if failure is not None:
                self._on_drop(n)
                if self._on_failure is not None:
                    self._on_failure(failure)

    @property
    def depth(self) -> int:
        """Spans ended and not yet exported."""
        return len(self._spans)

    async def _post(self, body: bytes) -> str | None:
        """None once the collector took the batch, else why not (a bounded reason: the error
        type, or the status class the collector answered)."""
        headers = [("Content-Type", "application/x-protobuf"), ("Content-Length", str(len(body)))]
        for attempt in (0, 1):
            try:
                resp = await self._client.send("POST", self._path, headers, _OneShot(body))
                try:
                    while await resp.read():
                        pass
                finally:
                    resp.release()
                return None if 200 <= resp.status < 300 else f"http_{resp.status // 100}xx"
            except UpstreamReset as exc:
                # A kept-alive connection the collector had closed: once more, on a new one.
                if attempt or not getattr(exc, "before_response", False):
                    return exc.error_type
            except GatewayError as failed:  # (its own name: mypyc types a name once)
                return failed.error_type
            except OSError:
                return "os_error"
        return "upstream_reset"

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.drain(), timeout_s)
        except TimeoutError:
            # The collector did not take the rest in time: what is still queued is lost at exit,
            # so it is counted as dropped (the batch in flight was counted by drain()).
            self._on_drop(len(self._spans))
            self._spans.clear()
        await self._client.close()
