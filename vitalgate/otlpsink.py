"""A small OTLP/HTTP trace receiver: decodes protobuf exports and keeps the spans.

The demo uses it so its traces can be read without a collector; the tests use
it to assert on the spans the gateway really exported. Run on its own, it
writes each span as a JSON line (to a file, or stdout) until SIGINT/SIGTERM:

    python -m vitalgate.otlpsink --port 4318 --out traces.jsonl

and the gateway's ``telemetry.traces.otlp_endpoint`` is ``http://127.0.0.1:4318``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]
    start_ns: int
    end_ns: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), default=str)


@dataclass
class OtlpSink:
    """Collects spans in memory; optionally appends them to a JSON-lines file."""

    out_file: Path | None = None
    spans: list[ReceivedSpan] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)
    requests: int = 0
    keep_raw: bool = False
    keep_spans: bool = True
    stdout: bool = False
    """Without ``out_file``, write the spans to stdout."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="expected application/x-protobuf")
        body = await request.read()
        self.requests += 1
        if self.keep_raw:
            self.raw_bodies.append(body)
        msg = ExportTraceServiceRequest()
        try:
            msg.ParseFromString(body)
        except Exception:  # protobuf raises its own DecodeError
            return web.Response(status=400, text="invalid protobuf")
        received = []
        for rs in msg.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    received.append(
                        ReceivedSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=_KINDS.get(s.kind, str(s.kind)),
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                            status_code=s.status.code,
                            resource=resource,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        if self.keep_spans:
            self.spans.extend(received)
        if received and self.out_file is not None:
            with self.out_file.open("a", encoding="utf-8") as f:
                f.write("".join(s.to_json() + "\n" for s in received))
        elif received and self.stdout:
            sys.stdout.write("".join(s.to_json() + "\n" for s in received))
            sys.stdout.flush()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


async def _serve(host: str, port: int, out: Path | None) -> None:
    sink = OtlpSink(out_file=out, keep_spans=False, stdout=out is None)
    runner = web.AppRunner(sink.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(
        f"otlpsink: receiving OTLP/HTTP traces on http://{host}:{port}/v1/traces, spans to {out or 'stdout'}",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    print(f"otlpsink: stopped after {sink.requests} exports", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vitalgate.otlpsink", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4318)
    p.add_argument("--out", type=Path, default=None, help="append spans as JSON lines here (default stdout)")
    args = p.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.port, args.out))
    except OSError as exc:
        print(f"otlpsink: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
