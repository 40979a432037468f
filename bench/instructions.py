"""Instructions per proxied request: vitalgate under callgrind, a fixed number of requests.

Wall-clock throughput on a shared 2-core machine moves by 15% or more between
runs; the count of instructions the gateway's process executes per request
does not (valgrind counts them, whatever else the machine does), so this is
the benchmark that tells whether a change to the request path made it
cheaper. It counts user-space instructions only (kernel work, such as the
socket calls, is not in it) and includes the gateway's other threads.

The gateway runs under ``valgrind --tool=callgrind`` with counting off; after
a warm-up, counting is switched on for ``--requests`` GET requests over 20
keep-alive connections (to the same nginx upstream and FHIR body as
``bench/proxy.py``), then off, and the total is divided by the requests.

    python -m bench.instructions [--requests 2000] [--ratio 1.0 --ratio 0.1] [--keep DIR] [--audit MODE]
                                 [--body patient|bundle|nested]

``--body bundle`` answers every request with a 100-entry searchset Bundle whose
links and ``fullUrl``s name the upstream's own address, so each response is
inspected and rewritten (the cost of keeping paging inside the gateway). ``--body nested``
answers with a batch-response whose 10 entries are each a 10-entry searchset Bundle (the same
100 patients, every inner link and ``fullUrl`` naming the upstream): the rewrite at depth.

``--keep DIR`` keeps the callgrind files for ``callgrind_annotate``. With the
request path compiled (the default install) or pure (``make pure``), whichever
is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.proxy import (
    LOAD_CORE,
    PATIENT,
    SINK,
    free_port,
    nginx_conf,
    start,
    stop_all,
    vitalgate_config,
    wait_port,
)

CONNECTIONS = 20
REQUEST = (
    b"GET /fhir/Patient/123 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Facility-ID: st-marys\r\n"
    b"Accept: application/fhir+json\r\nUser-Agent: bench\r\n\r\n"
)


async def _client(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        if not head.startswith(b"HTTP/1.1 200") or match is None:
            raise RuntimeError(f"unexpected response: {head[:200]!r}")
        await reader.readexactly(int(match.group(1)))
    writer.close()


async def _drive(port: int, total: int) -> None:
    await asyncio.gather(*(_client(port, total // CONNECTIONS) for _ in range(CONNECTIONS)))


def _total_instructions(files: list[Path]) -> int:
    total = 0
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


def bundle(origin: str, entries: int = 100) -> dict[str, object]:
    """A searchset page as a server with a fixed base writes it: every URL names ``origin``."""
    base = f"{origin}/fhir"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1000,
        "link": [
            {"relation": "self", "url": f"{base}/Patient?_count={entries}"},
            {"relation": "next", "url": f"{base}/Patient?_count={entries}&_getpagesoffset={entries}"},
        ],
        "entry": [
            {
                "fullUrl": f"{base}/Patient/example-{i}",
                "resource": {**PATIENT, "id": f"example-{i}"},
                "search": {"mode": "match"},
            }
            for i in range(entries)
        ],
    }


def nested(origin: str, searches: int = 10, entries: int = 10) -> dict[str, object]:
    """A batch-response whose entries are searches: each entry's resource a searchset page."""
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": bundle(origin, entries), "response": {"status": "200 OK"}} for _ in range(searches)
        ],
    }


def measure(
    ratio: float,
    requests: int,
    keep: Path | None,
    body: str = "patient",
    inspect: bool = True,
    audit: str | None = None,
) -> float:
    work = Path(tempfile.mkdtemp(prefix="vitalgate-instr-"))
    os.chmod(work, 0o755)  # noqa: S103  nginx workers (user root) read it
    up, sink = free_port(), free_port()
    origin = f"http://127.0.0.1:{up}"
    doc = PATIENT if body == "patient" else bundle(origin) if body == "bundle" else nested(origin)
    (work / "patient.json").write_bytes(json.dumps(doc, indent=1).encode())
    procs = []
    try:
        conf = nginx_conf(
            work,
            f"server {{ listen 127.0.0.1:{up}; root {work}; location / {{"
            " default_type application/fhir+json; try_files /patient.json =404; } }",
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(start([nginx, "-p", str(work), "-c", str(conf)], LOAD_CORE))
        (work / "sink.py").write_text(SINK)
        procs.append(start([sys.executable, str(work / "sink.py"), str(sink)], LOAD_CORE))
        # Under callgrind the gateway runs some 50 times slower: a request (or a new upstream
        # connection) waits its turn behind 19 others' Bundles, so the upstream timeouts are
        # lifted well clear of it.
        cfg, port = vitalgate_config(
            work, "instr", up, sink, ratio, inspect, total_timeout_s=600, connect_timeout_s=120, audit=audit
        )
        out = work / "callgrind.out"
        gateway = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "vitalgate",
                "serve",
                "--config",
                str(cfg),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(gateway)
        wait_port(port, 300)
        wait_port(up)
        asyncio.run(_drive(port, 400))  # warm-up: connection pools, caches, first-use paths
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(gateway.pid)], check=True, capture_output=True)
        asyncio.run(_drive(port, requests))
        subprocess.run([*control, "-i", "off", str(gateway.pid)], check=True, capture_output=True)
        subprocess.run([*control, "-d", str(gateway.pid)], check=True, capture_output=True)
        time.sleep(1)
        files = sorted(work.glob("callgrind.out*"))
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, keep / f"{f.name}.ratio-{ratio}")
        return _total_instructions(files) / requests
    finally:
        stop_all(procs, 60)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--ratio", type=float, action="append", help="trace sample ratio (repeatable)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the callgrind files here")
    parser.add_argument(
        "--body", choices=["patient", "bundle", "nested"], default="patient", help="the upstream's answer"
    )
    parser.add_argument(
        "--no-inspect", action="store_true", help="FHIR JSON passes uninspected (rewrite_max_bytes: 0)"
    )
    parser.add_argument(
        "--audit", choices=["batched", "strict"], default=None, help="with the audit trail (default: none)"
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required: scripts/install-system-deps bench")
    from gateway.native import build

    print(f"vitalgate request path: {build().describe()}")
    for ratio in args.ratio or [1.0, 0.1]:
        per_request = measure(ratio, args.requests, args.keep, args.body, not args.no_inspect, args.audit)
        audit = f", audit {args.audit}" if args.audit else ""
        print(
            f"sample ratio {ratio}: {per_request:,.0f} instructions per request "
            f"({args.requests} requests, {args.body} body{', not inspected' if args.no_inspect else ''}{audit})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
