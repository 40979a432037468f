"""How long ``vitalgate audit verify`` takes: a store of ``--records`` AuditEvents (default a
million, realistic BALP reads over several days, a checkpoint every 10,000), then the check of
every record (chain, decryption, seals, checkpoints), timed.

    python -m bench.audit_verify [--records 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from gateway.audit import events
from gateway.audit.keys import Keyring, keygen, read_signing_key
from gateway.audit.store import Appender, segment_name
from gateway.audit.verify import verify

PER_DAY = 250_000


def _request(i: int, t_s: float) -> events.Request:
    return events.Request(
        recorded_s=t_s,
        method="GET",
        path=f"/fhir/Patient/mrn-{i % 50_000:06d}",
        query="",
        prefix="/fhir/",
        route="/fhir/Patient/{id}",
        status=200,
        error_type=None,
        facility="st-marys",
        service="fhir",
        upstream="fhir",
        upstream_address="https://fhir.internal.example.org",
        peer="10.1.2.3",
        forwarded_for=None,
        trace_id=f"{i:032x}",
        request_id=f"req-{i}",
    )


def build(folder: Path, n: int) -> tuple[Path, float]:
    keygen(folder / "keys")
    keyring = Keyring.load([folder / "keys" / "audit.key"])
    signer = read_signing_key(folder / "keys" / "audit-signing.key")
    app = Appender(folder / "audit", keyring, signer)
    who = events.Who("dr-house", "https://idp.example.org", "ehr-web", True, None)
    start_s = time.time() - (n // PER_DAY + 1) * 86400
    t0 = time.perf_counter()
    lines: list[bytes] = []
    for i in range(n):
        t_s = start_s + i * (86400 / PER_DAY)
        (record,) = events.facts(_request(i, t_s), who)
        t_ms = int(t_s * 1000)
        if app.head.segment is not None and app.head.segment != segment_name(t_ms):
            app.write(lines)
            lines = []
        app.segment_for(t_ms)
        lines.append(app.encode(json.dumps(record, separators=(",", ":")).encode(), t_ms))
        if len(lines) >= 10_000:
            app.write(lines)
            app.sync()
            lines = []
            app.checkpoint(None)
    app.write(lines)
    app.sync()
    app.checkpoint(None)
    app.close()
    return folder / "audit", time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="build the store here and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="vitalgate-audit-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        store, build_s = build(folder, args.records)
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        print(f"built {args.records:,} records in {build_s:.1f} s ({size / 1e6:.0f} MB on disk)")
        keyring = Keyring.load([folder / "keys" / "audit.key"])
        public = read_signing_key(folder / "keys" / "audit-signing.key").public_key()
        t0 = time.perf_counter()
        report = verify(store, keyring, public, [])
        took = time.perf_counter() - t0
        assert report.problem is None, report.problem
        print(
            f"verify: {report.records:,} records, {report.segments} segments, {report.checkpoints} checkpoints"
            f" in {took:.1f} s ({took / max(report.records, 1) * 1e6:.1f} us a record)"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
