"""The audit trail through its real interfaces: a gateway process with real signed JWTs in
front of the test upstream, then ``vitalgate audit verify|search|export`` on what it wrote."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from fhir.resources.R4B.auditevent import AuditEvent

from tests.gateway.auditsetup import AUDIENCE, ISSUER, Idp, admin_get, audit_config, get_as, jwk
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess
from tests.support.peers import BackgroundPeers
from tests.support.readers import counter_value, read_log
from tests.support.waiting import wait_until
from vitalgate.peers import UpstreamPeer, operation_outcome

# Synthetic PHI: none of it may be readable anywhere but through the audit commands.
PATIENT = "mrn-778812"
SECRET_NAMES = (b"Smithfield", b"Jonesworth")


def test_keygen_writes_private_keys_and_never_overwrites(tmp_path: Path) -> None:
    out = vitalgate("audit", "keygen", "--out", str(tmp_path / "k")).stdout.split()
    assert [Path(p).name for p in out] == ["audit.key", "audit-signing.key", "audit-signing.pub"]
    for name in ("audit.key", "audit-signing.key"):
        assert stat.S_IMODE((tmp_path / "k" / name).stat().st_mode) == 0o600
    again = vitalgate("audit", "keygen", "--out", str(tmp_path / "k"), check=False)
    assert again.returncode == 1 and "never overwritten" in again.stderr


def test_check_reports_audit_problems_with_positions(tmp_path: Path, peers: BackgroundPeers) -> None:
    cfg = audit_config(tmp_path, peers.upstream.port)
    (tmp_path / "keys" / "audit.key").chmod(0o644)
    text = cfg.read_text().replace(
        "signing_key_file: keys/audit-signing.key", "signing_key_file: keys/nope.key"
    )
    cfg.write_text(text)
    res = vitalgate("check", "--config", str(cfg), check=False)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert any(" audit.key_file: " in line and "chmod 600" in line for line in lines), lines
    assert any(" audit.signing_key_file: " in line and "keys/nope.key" in line for line in lines), lines
    assert all(line.count(":") >= 3 for line in lines[:-1])  # file:line:column: field: message


def test_requests_are_recorded_verified_and_exported_as_balp_audit_events(
    tmp_path: Path, peers: BackgroundPeers, idp: Idp
) -> None:
    cfg = audit_config(tmp_path, peers.upstream.port, otlp_port=peers.sink_port)
    gw = GatewayProcess(cfg)
    try:
        good = idp.token("dr-house", azp="ehr-web")
        assert get_as(gw.proxy, f"/fhir/Patient/{PATIENT}", good, **{"X-Request-Id": "req-1"}) == 200
        assert (
            get_as(gw.proxy, f"/fhir/Observation?patient={PATIENT}&_count=5", idp.token("nurse", alg="ES256"))
            == 200
        )
        expired = idp.token("dr-house", exp_in=-60)
        assert get_as(gw.proxy, f"/fhir/Patient/{PATIENT}", expired) == 200
        assert get_as(gw.proxy, "/fhir/Patient?name=smith", good, **{"X-Test-Fault": "searchset"}) == 200
        assert get_as(gw.proxy, "/fhir/Patient/p-2", good, **{"X-Test-Fault": "500"}) == 500
        assert get_as(gw.proxy, "/scheduling/appointments/9", good) == 200  # not a FHIR route: not audited
    finally:
        assert gw.terminate() == 0

    out = vitalgate("audit", "verify", "--config", str(cfg)).stdout
    # 1 read + 1 search + 1 read + 3 patients found + 1 failed read
    assert out.startswith("audit trail: OK: 7 records in 1 segment,") and "anchored at 7 records" in out

    found = json.loads(
        vitalgate("audit", "search", "--config", str(cfg), "--patient", PATIENT, "--format", "json").stdout
    )
    assert len(found) == 3
    read, search, unverified = found
    for ev in found:
        AuditEvent.model_validate(ev)  # the FHIR R4(B) AuditEvent model
        assert ev["type"]["code"] == "rest" and ev["source"]["site"] == "st-marys"
    assert (read["subtype"][0]["code"], read["action"], read["outcome"]) == ("read", "R", "0")
    assert read["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    ]
    user, client, server = read["agent"]
    assert user["requestor"] is True and user["who"]["identifier"] == {"system": ISSUER, "value": "dr-house"}
    assert client["who"]["display"] == "ehr-web" and client["network"]["address"] == "127.0.0.1"
    assert server["type"]["coding"][0]["code"] == "110153"
    entities = {e.get("role", {}).get("code"): e for e in read["entity"]}
    assert entities["1"]["what"]["reference"] == f"Patient/{PATIENT}"
    assert entities["3"]["detail"] == [{"type": "X-Request-Id", "valueString": "req-1"}]
    assert len(entities["3"]["what"]["identifier"]["value"]) == 32  # the trace id

    assert (search["subtype"][0]["code"], search["action"]) == ("search-type", "E")
    query = next(e for e in search["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == f"patient={PATIENT}&_count=5"
    assert search["agent"][0]["who"]["identifier"]["value"] == "nurse"

    assert unverified["agent"][0]["who"]["display"] == "unverified (expired)"
    digest = unverified["agent"][0]["who"]["identifier"]["value"]
    assert digest == hashlib.sha256(expired.encode()).hexdigest()

    by_user = json.loads(
        vitalgate("audit", "search", "--config", str(cfg), "--user", "dr-house", "--format", "json").stdout
    )
    patients = sorted(
        e["what"]["reference"] for ev in by_user for e in ev["entity"] if e.get("role", {}).get("code") == "1"
    )
    assert patients == [
        f"Patient/{PATIENT}",
        "Patient/p-2",
        "Patient/p-jones-2",
        "Patient/p-lee-3",
        "Patient/p-smith-1",
    ]
    failed = next(ev for ev in by_user if "Patient/p-2" in json.dumps(ev))
    assert failed["outcome"] == "8" and failed["outcomeDesc"] == "HTTP 500"

    export = tmp_path / "accounting.json"
    vitalgate("audit", "export", "--config", str(cfg), "--patient", PATIENT, "--out", str(export))
    bundle = json.loads(export.read_text())
    assert bundle["type"] == "collection" and bundle["total"] == 3
    assert [e["resource"]["id"] for e in bundle["entry"]] == [ev["id"] for ev in found]

    # Nothing readable in the store; the telemetry names none of it either.
    raw = b"".join(p.read_bytes() for p in (tmp_path / "audit").rglob("*") if p.is_file())
    for secret in (PATIENT.encode(), b"dr-house", b"nurse", good.encode(), expired.encode(), *SECRET_NAMES):
        assert secret not in raw
    log = (tmp_path / "access.log").read_bytes()
    for secret in (PATIENT.encode(), b"p-smith-1", good.encode(), b"dr-house"):
        assert secret not in log
    checkpoints = [r for r in read_log(tmp_path / "access.log") if r["event"] == "audit_checkpoint"]
    assert checkpoints and checkpoints[-1]["checkpoint"]["size"] == 7
    # ... and as a span: the same checkpoint, through the collector, to a second place.
    spans = [s for s in peers.sink.spans if s.name == "audit checkpoint"]
    assert spans and spans[-1].attributes["vitalgate.audit.checkpoint.size"] == 7
    assert spans[-1].attributes["vitalgate.audit.checkpoint.sig"] == checkpoints[-1]["checkpoint"]["sig"]
    for span in peers.sink.spans:  # the request spans name no patient either
        assert PATIENT not in json.dumps(span.attributes) and "p-smith-1" not in json.dumps(span.attributes)


@pytest.fixture
def trail(tmp_path: Path, peers: BackgroundPeers, idp: Idp) -> tuple[Path, Path]:
    """A gateway that wrote 12 records; its config and audit folder."""
    cfg = audit_config(tmp_path, peers.upstream.port, checkpoint_interval="1s")
    gw = GatewayProcess(cfg)
    try:
        for i in range(12):
            assert get_as(gw.proxy, f"/fhir/Patient/t{i}") == 200
    finally:
        assert gw.terminate() == 0
    return cfg, tmp_path / "audit"


def _verify(cfg: Path, *extra: str) -> tuple[int, str]:
    res = vitalgate("audit", "verify", "--config", str(cfg), *extra, check=False)
    return res.returncode, res.stdout


def _segment(audit: Path) -> Path:
    (seg,) = (audit / "segments").glob("*.seg")
    return seg


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.chmod(0o600)
    path.write_bytes(b"".join(lines))


def test_verify_names_the_first_bad_record_of_every_tampering(
    trail: tuple[Path, Path], peers: BackgroundPeers
) -> None:
    cfg, audit = trail
    assert _verify(cfg)[0] == 0
    seg = _segment(audit)
    original = seg.read_bytes()
    lines = original.splitlines(keepends=True)
    cases: dict[str, tuple[list[bytes], str]] = {}
    flipped = bytearray(lines[4])
    at = flipped.index(b'"c":"') + 10
    flipped[at] = ord("A") if flipped[at] != ord("A") else ord("B")
    cases["flipped byte"] = ([*lines[:4], bytes(flipped), *lines[5:]], "record 4 ")
    cases["deleted"] = ([*lines[:3], *lines[4:]], "record 3 ")
    cases["reordered"] = ([*lines[:2], lines[3], lines[2], *lines[4:]], "record 2 ")
    cases["inserted"] = ([*lines[:6], lines[5], *lines[6:]], "record 6 ")
    cases["truncated tail"] = (lines[:9], "records 9 to 11 are gone")
    for what, (content, expected) in cases.items():
        _rewrite(seg, content)
        code, out = _verify(cfg)
        assert code == 1 and out.startswith("audit trail: BAD: ") and expected in out, (what, out)
    _rewrite(seg, list(original.splitlines(keepends=True)))
    assert _verify(cfg)[0] == 0

    # The whole store replaced by one written afresh with the same keys: only the checkpoint
    # published outside it (the access log) tells.
    published = [
        r["checkpoint"] for r in read_log(cfg.parent / "access.log") if r["event"] == "audit_checkpoint"
    ]
    anchor = cfg.parent / "published.jsonl"
    anchor.write_text(json.dumps(published[-1]) + "\n")
    for p in [*audit.rglob("*.seg"), audit / "checkpoints.jsonl"]:
        p.chmod(0o600)
        p.unlink()
    cfg = audit_config(cfg.parent, peers.upstream.port, keygen=False)
    gw = GatewayProcess(cfg)
    try:
        for i in range(12):
            assert get_as(gw.proxy, f"/fhir/Patient/forged{i}") == 200
    finally:
        assert gw.terminate() == 0
    code, out = _verify(cfg)  # the access log holds both runs' checkpoints
    assert code == 1 and "the store was replaced" in out, out
    code, out = _verify(cfg, "--anchor", str(anchor))
    assert code == 1 and "the store was replaced" in out, out


def test_a_record_from_another_key_or_a_forged_checkpoint_is_caught(trail: tuple[Path, Path]) -> None:
    cfg, audit = trail
    cps = (audit / "checkpoints.jsonl").read_text().splitlines()
    forged = json.loads(cps[-1])
    forged["size"] = 5
    anchor = cfg.parent / "forged.jsonl"
    anchor.write_text(json.dumps(forged) + "\n")
    res = vitalgate("audit", "verify", "--config", str(cfg), "--anchor", str(anchor), check=False)
    assert "not signed by the key" in res.stderr
    # A rotated-in key: old records stay readable with the old key kept in key_files.
    vitalgate("audit", "keygen", "--out", str(cfg.parent / "keys2"))
    text = cfg.read_text().replace("key_file: keys/audit.key", "key_files: [keys2/audit.key, keys/audit.key]")
    cfg.write_text(text)
    assert _verify(cfg)[0] == 0
    cfg.write_text(
        text.replace("key_files: [keys2/audit.key, keys/audit.key]", "key_files: [keys2/audit.key]")
    )
    code, out = _verify(cfg)
    assert code == 1 and "record 0 " in out and "unknown key" in out


def _records_in(cfg: Path) -> int:
    out = vitalgate("audit", "verify", "--config", str(cfg)).stdout
    assert out.startswith("audit trail: OK: "), out
    return int(out.split()[3])


@pytest.mark.parametrize("durability", ["strict", "batched"])
def test_kill_9_under_load_loses_nothing_strict_and_at_most_the_window_batched(
    tmp_path: Path, durability: str, peers: BackgroundPeers, idp: Idp
) -> None:
    """Each answered request's record: on disk before the answer (strict), or at most one
    flush interval behind it (batched)."""
    window_s = 0.5
    cfg = audit_config(tmp_path, peers.upstream.port, durability=durability, flush_interval=f"{window_s}s")
    gw = GatewayProcess(cfg)
    answered: list[float] = []
    deadline = time.monotonic() + 2.0

    def client(n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            assert get_as(gw.proxy, f"/fhir/Patient/k{n}-{i}") == 200
            answered.append(time.monotonic())
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    killed_at = time.monotonic()
    gw.kill()
    kept = _records_in(cfg)
    lost = len(answered) - kept
    if durability == "strict":
        assert lost <= 0, (len(answered), kept)  # every answered one, and maybe some in flight
    else:
        # Generously: what was answered in the last window plus the writer's own turn.
        recent = sum(1 for t in answered if t > killed_at - window_s - 0.3)
        assert 0 <= lost <= recent, (lost, recent, len(answered))


@pytest.mark.parametrize("durability", ["strict", "batched"])
def test_a_full_disk_refuses_strict_and_serves_batched_and_nothing_is_lost(
    tmp_path: Path, durability: str, peers: BackgroundPeers, idp: Idp
) -> None:
    """No file may grow (RLIMIT_FSIZE on the running gateway's audit writer), then it may again."""
    cfg = audit_config(tmp_path, peers.upstream.port, durability=durability, flush_interval="200ms")
    gw = GatewayProcess(cfg)
    try:
        assert get_as(gw.proxy, "/fhir/Patient/d1") == 200
        wait_until(
            lambda: counter_value(_metrics(gw), "vitalgate_audit_records_total") >= 1,
            "the first record on disk",
        )
        writer = _writer_pid(gw.proc.pid)
        subprocess.run(["prlimit", f"--pid={writer}", "--fsize=0:unlimited"], check=True)
        during = [get_as(gw.proxy, f"/fhir/Patient/d{i}") for i in range(2, 6)]
        assert get_as(gw.proxy, "/scheduling/appointments/1") == 200  # not audited: unaffected
        wait_until(
            lambda: counter_value(_metrics(gw), "vitalgate_audit_write_errors_total") >= 1,
            "a failed write",
        )
        subprocess.run(["prlimit", f"--pid={writer}", "--fsize=unlimited:unlimited"], check=True)
        wait_until(lambda: counter_value(_metrics(gw), "vitalgate_audit_records_total") >= 5, "all recorded")
        metrics = _metrics(gw)
    finally:
        assert gw.terminate() == 0
    assert during == ([503] * 4 if durability == "strict" else [200] * 4)
    assert counter_value(metrics, "vitalgate_audit_write_errors_total") >= 1
    assert counter_value(metrics, "vitalgate_telemetry_dropped_total", signal="audit") == 0
    events = json.loads(vitalgate("audit", "search", "--config", str(cfg), "--format", "json").stdout)
    outcomes = [(ev["entity"][-1]["what"]["reference"], ev["outcome"]) for ev in events]
    expected = "12" if durability == "strict" else "0"  # strict: refused by the gateway itself
    assert outcomes == [("Patient/d1", "0"), *((f"Patient/d{i}", expected) for i in range(2, 6))]


@pytest.mark.parametrize("durability", ["strict", "batched"])
def test_a_writer_killed_under_load_is_replaced_and_every_request_is_recorded_or_counted(
    tmp_path: Path, durability: str, peers: BackgroundPeers, idp: Idp
) -> None:
    """kill -9 of the audit writer process mid-traffic: the gateway says so, starts another,
    which continues the same chain; every request is on disk or counted as dropped, and a
    strict response is never a 200 without its record."""
    cfg = audit_config(tmp_path, peers.upstream.port, durability=durability)
    gw = GatewayProcess(cfg)
    statuses: list[int] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            statuses.append(get_as(gw.proxy, f"/fhir/Patient/w{n}-{i}"))
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(statuses) > 200, "traffic")
        first = _writer_pid(gw.proc.pid)
        subprocess.run(["kill", "-9", str(first)], check=True)
        wait_until(lambda: "audit_writer_restarted" in gw.stderr_path.read_text(), "a new writer")
        assert _writer_pid(gw.proc.pid) != first
        at_restart = len(statuses)
        wait_until(lambda: len(statuses) > at_restart + 100, "traffic after the restart")
        stop.set()
        for t in threads:
            t.join()
        metrics = _metrics(gw)
    finally:
        stop.set()
        assert gw.terminate() == 0
    sent = len(statuses)
    kept = _records_in(cfg)  # and verify accepts the chain across both writers
    dropped = counter_value(metrics, "vitalgate_telemetry_dropped_total", signal="audit")
    assert counter_value(metrics, "vitalgate_audit_write_errors_total") >= 1
    if durability == "strict":
        # Served only once on disk; refused (and then recorded as refused) while no writer ran.
        assert set(statuses) <= {200, 503} and statuses.count(503) >= 1
        assert statuses[at_restart:] == [200] * (sent - at_restart)  # the new writer took over
        assert kept + dropped >= sent and statuses.count(200) <= kept
    else:
        assert set(statuses) == {200}
        assert kept + dropped >= sent >= kept, (kept, dropped, sent)
    events = [json.loads(line) for line in gw.stderr_path.read_text().splitlines() if line.startswith("{")]
    exited = [e for e in events if e.get("event") == "audit_writer_exited"]
    assert len(exited) == 1 and exited[0]["level"] == "error", exited
    assert any(e.get("event") == "audit_writer_restarted" for e in events)


def _writer_pid(gateway_pid: int) -> int:
    """The audit writer process the gateway process ``gateway_pid`` started."""
    for child in Path(f"/proc/{gateway_pid}/task/{gateway_pid}/children").read_text().split():
        if b"gateway.audit.writer" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"no audit writer among the children of {gateway_pid}")


def _metrics(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.admin + "/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_only_the_auditor_reads_the_trail_and_every_read_is_recorded(
    tmp_path: Path, peers: BackgroundPeers, idp: Idp
) -> None:
    tokens = {role: f"token-{role}-0123456789" for role in ("sre", "engineer", "account_manager", "auditor")}
    admin_tokens = [
        {"name": f"{role}-1", "sha256": hashlib.sha256(t.encode()).hexdigest(), "role": role}
        | ({"facilities": ["st-marys"]} if role == "account_manager" else {})
        for role, t in tokens.items()
    ]
    cfg = audit_config(tmp_path, peers.upstream.port)
    doc = yaml.safe_load(cfg.read_text())
    doc["admin"]["tokens"] = admin_tokens
    cfg.write_text(yaml.safe_dump(doc))
    gw = GatewayProcess(cfg)
    try:
        assert get_as(gw.proxy, f"/fhir/Patient/{PATIENT}") == 200
        url = f"{gw.admin}/api/v1/audit?patient={PATIENT}"
        answered: list[int] = []  # the statuses of the auditor's reads while waiting: each 200 is a read

        def recorded() -> bool:
            status, found = admin_get(url, tokens["auditor"])
            answered.append(status)
            return found.get("total") == 1

        wait_until(recorded, "the read recorded")
        assert admin_get(url, None)[0] == 401
        assert admin_get(url, "not-a-token")[0] == 401
        for role in ("sre", "engineer", "account_manager"):
            assert admin_get(url, tokens[role])[0] == 403, role
        status, bundle = admin_get(url, tokens["auditor"])
        assert status == 200 and bundle["type"] == "searchset"
        (entry,) = bundle["entry"]
        assert entry["resource"]["entity"][-1]["what"]["reference"] == f"Patient/{PATIENT}"
        assert admin_get(f"{gw.admin}/api/v1/audit?since=yesterday", tokens["auditor"])[0] == 400
    finally:
        assert gw.terminate() == 0
    reads = json.loads(
        vitalgate("audit", "search", "--config", str(cfg), "--user", "auditor-1", "--format", "json").stdout
    )
    # Every auditor read above (the waiting ones, then the one checked), the refused ones not.
    assert len(reads) == answered.count(200) + 1
    query = next(e for e in reads[0]["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == f"patient={PATIENT}"
    assert not (tmp_path / "access.log").read_text().count(PATIENT)


def test_a_header_identity_is_believed_only_from_its_trusted_sources(
    tmp_path: Path, peers: BackgroundPeers
) -> None:
    for sources, expected in ((["127.0.0.1/32"], "alice"), (["10.0.0.0/8"], "unverified")):
        folder = tmp_path / sources[0].replace("/", "_")
        folder.mkdir()
        identity = {"header": "X-Authenticated-User", "trusted_sources": sources}
        cfg = audit_config(folder, peers.upstream.port, identity=identity)
        gw = GatewayProcess(cfg)
        try:
            assert get_as(gw.proxy, "/fhir/Patient/h1", **{"X-Authenticated-User": "alice"}) == 200
        finally:
            assert gw.terminate() == 0
        (ev,) = json.loads(vitalgate("audit", "search", "--config", str(cfg), "--format", "json").stdout)
        who = ev["agent"][0]["who"]
        assert (who["identifier"]["value"] if expected == "alice" else who["display"]).startswith(expected)


def test_retention_removes_old_segments_only_with_a_signed_deletion_record(tmp_path: Path) -> None:
    """Segments of days past ``retention`` go, each replaced by a signed deletion record that
    verify accepts; a segment removed without one is caught."""
    from gateway.audit.keys import Keyring, keygen, read_signing_key
    from gateway.audit.store import Appender
    from gateway.audit.verify import expire, verify

    keygen(tmp_path / "keys")
    keyring = Keyring.load([tmp_path / "keys" / "audit.key"])
    signer = read_signing_key(tmp_path / "keys" / "audit-signing.key")
    store = tmp_path / "audit"
    app = Appender(store, keyring, signer)
    day_ms = 86_400_000
    start = (int(time.time() * 1000) // day_ms - 10) * day_ms + 3_600_000  # 01:00 UTC, 10 days ago
    for day in range(4):  # four days, three records a day
        for n in range(3):
            t = start + day * day_ms + n
            app.segment_for(t)
            app.write([app.encode(json.dumps([1, "test", t / 1000, day, n]).encode(), t)])
    app.sync()
    app.checkpoint(None)
    app.close()
    assert len(list((store / "segments").glob("*.seg"))) == 4
    public = signer.public_key()
    assert verify(store, keyring, public, []).problem is None
    removed = expire(store, signer, retention_s=8 * 86400, now_s=start / 1000 + 10 * 86400)
    assert len(removed) == 2  # the first two days; the open segment is never removed
    report = verify(store, keyring, public, [])
    assert report.problem is None and report.records == 6
    # A sealed segment deleted by hand, with no deletion record: caught.
    oldest = sorted((store / "segments").glob("*.seg"))[0]
    oldest.chmod(0o600)
    oldest.unlink()
    problem = verify(store, keyring, public, []).problem
    assert problem is not None and "records missing" in problem


class Repository(UpstreamPeer):
    """An audit repository (a FHIR server's batch endpoint) that refuses its first batches."""

    def __init__(self, refuse_first: int) -> None:
        self.refuse_left = refuse_first
        self.events: dict[str, dict[str, Any]] = {}
        self.received = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.refuse_left > 0:
            self.refuse_left -= 1
            return web.json_response(operation_outcome("transient", "down for maintenance"), status=503)
        answers = []
        for entry in body["entry"]:
            assert entry["request"]["method"] == "PUT"
            kind, _, rid = entry["request"]["url"].partition("/")
            assert kind == "AuditEvent" and rid == entry["resource"]["id"]
            answers.append({"response": {"status": "200 OK" if rid in self.events else "201 Created"}})
            self.events[rid] = entry["resource"]
            self.received += 1
        return web.json_response({"resourceType": "Bundle", "type": "batch-response", "entry": answers})


def test_forwarding_survives_a_failing_repository_and_a_restart_exactly_once_in_effect(
    tmp_path: Path,
    peers: BackgroundPeers,
    idp: Idp,
) -> None:
    repo = Repository(refuse_first=2)
    peers.run(repo.start())
    try:
        forward = {"url": f"http://127.0.0.1:{repo.port}/fhir", "batch_size": 5, "interval": "100ms"}
        cfg = audit_config(tmp_path, peers.upstream.port, forward=forward)
        gw = GatewayProcess(cfg)
        try:
            for i in range(12):
                assert get_as(gw.proxy, f"/fhir/Patient/f{i}") == 200
            wait_until(lambda: len(repo.events) == 12, "12 events forwarded", timeout_s=30)
            wait_until(
                lambda: counter_value(_metrics(gw), "vitalgate_audit_forward_lag_records") == 0, "no lag"
            )
            metrics = _metrics(gw)
        finally:
            assert gw.terminate() == 0
        assert counter_value(metrics, "vitalgate_audit_forward_failures_total", reason="http_5xx") == 2
        assert counter_value(metrics, "vitalgate_audit_forwarded_total") == 12
        gw = GatewayProcess(cfg)  # resumes at its cursor
        try:
            for i in range(3):
                assert get_as(gw.proxy, f"/fhir/Patient/g{i}") == 200
            wait_until(lambda: len(repo.events) == 15, "the 3 new events forwarded", timeout_s=30)
        finally:
            assert gw.terminate() == 0
    finally:
        peers.run(repo.stop())
    assert repo.received == 15  # none sent twice: the cursor held across the restart
    assert (tmp_path / "audit" / "forward.cursor").read_text().strip() == "15"
    stored = json.loads(vitalgate("audit", "search", "--config", str(cfg), "--format", "json").stdout)
    assert {ev["id"] for ev in stored} == set(repo.events)
    for ev in repo.events.values():
        AuditEvent.model_validate(ev)


class JwksServer(UpstreamPeer):
    """An identity provider's JWKS endpoint, whose key set the test changes."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetches = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        return web.json_response({"keys": self.keys})


def test_a_jwks_url_is_refetched_for_a_new_key_and_search_results_are_capped(
    tmp_path: Path, peers: BackgroundPeers, idp: Idp
) -> None:
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = JwksServer([jwk(idp.rsa, "r1")])
    peers.run(jwks.start())
    try:
        identity = {
            "jwks_url": f"http://127.0.0.1:{jwks.port}/jwks",
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "refresh": "1s",
        }
        cfg = audit_config(tmp_path, peers.upstream.port, identity=identity, max_patients=2)
        gw = GatewayProcess(cfg)
        try:
            assert get_as(gw.proxy, "/fhir/Patient/j1", idp.token("before-rotation")) == 200
            wait_until(
                lambda: counter_value(_metrics(gw), "vitalgate_audit_records_total") == 1, "j1 written"
            )
            body = {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": "after-rotation",
                "exp": int(time.time() + 300),
            }
            new_token = jwt.encode(body, rotated, algorithm="RS256", headers={"kid": "r2"})
            rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            forged = jwt.encode({**body, "sub": "mallory"}, rogue, algorithm="RS256", headers={"kid": "r1"})
            assert get_as(gw.proxy, "/fhir/Patient/j2", forged) == 200  # the proxy is no access control
            jwks.keys = [jwk(idp.rsa, "r1"), jwk(rotated, "r2")]  # the IdP rotates in r2
            time.sleep(1.1)  # past the refetch cooldown (the refresh period) since j1's fetch
            assert get_as(gw.proxy, "/fhir/Patient/j3", new_token) == 200
            assert get_as(gw.proxy, "/fhir/Patient?name=x", new_token, **{"X-Test-Fault": "searchset"}) == 200
        finally:
            assert gw.terminate() == 0
    finally:
        peers.run(jwks.stop())
    events = json.loads(vitalgate("audit", "search", "--config", str(cfg), "--format", "json").stdout)
    who = [ev["agent"][0]["who"] for ev in events]
    assert who[0]["identifier"]["value"] == "before-rotation"
    assert who[1]["display"] == "unverified (bad_signature)"  # kid r1, but not r1's signature
    assert who[2]["identifier"]["value"] == "after-rotation"  # the JWKS fetched again for kid r2
    assert jwks.fetches == 2  # once for j1, once more for the unknown kid r2
    found = events[3:]
    assert [ev["entity"][-1]["what"]["reference"] for ev in found] == [
        "Patient/p-smith-1",
        "Patient/p-jones-2",
    ]
    assert found[-1]["outcomeDesc"].endswith("1 more patients in the results not recorded (audit limit)")


def test_with_workers_each_writes_a_chain_and_the_supervisor_serves_and_records_reads(
    tmp_path: Path, peers: BackgroundPeers, idp: Idp
) -> None:
    token = "token-auditor-0123456789"
    cfg = audit_config(tmp_path, peers.upstream.port)
    doc = yaml.safe_load(cfg.read_text())
    doc["admin"]["tokens"] = [
        {"name": "auditor-1", "sha256": hashlib.sha256(token.encode()).hexdigest(), "role": "auditor"}
    ]
    cfg.write_text(yaml.safe_dump(doc))
    gw = GatewayProcess(cfg, workers=2)
    try:
        for i in range(40):  # new connections: SO_REUSEPORT spreads them over both workers
            assert get_as(gw.proxy, f"/fhir/Patient/w{i}") == 200
        url = f"{gw.admin}/api/v1/audit?facility=st-marys"
        wait_until(
            lambda: admin_get(url, token)[1].get("total") == 40,
            "40 events readable through the supervisor",
        )
    finally:
        assert gw.terminate() == 0
    chains = sorted(p.name for p in (tmp_path / "audit").iterdir() if p.is_dir())
    assert chains == ["supervisor", "worker-0", "worker-1"]
    out = vitalgate("audit", "verify", "--config", str(cfg)).stdout
    assert out.startswith("audit trail: OK: "), out
    events = json.loads(vitalgate("audit", "search", "--config", str(cfg), "--format", "json").stdout)
    requests = [ev for ev in events if ev["source"].get("site") == "st-marys"]
    assert sorted(ev["entity"][-1]["what"]["reference"] for ev in requests) == sorted(
        f"Patient/w{i}" for i in range(40)
    )
    assert [ev["recorded"] for ev in events] == sorted(
        ev["recorded"] for ev in events
    )  # merged in time order
    reads = [ev for ev in events if ev["agent"][0]["who"]["identifier"].get("value") == "auditor-1"]
    assert reads  # recorded in the supervisor's chain
    checkpoints = {
        r["checkpoint"]["chain"]
        for r in read_log(tmp_path / "access.log")
        if r["event"] == "audit_checkpoint"
    }
    assert checkpoints == {"supervisor", "worker-0", "worker-1"}
