"""The compliance officer's side of the audit trail: one gateway (real JWTs, real probes
configured in gateway.yaml, an auditor token) writes every kind of record the trail has; then
``vitalgate audit search|export|verify`` and ``/api/v1/audit`` read them all back."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B.auditevent import AuditEvent

from gateway.audit.keys import Keyring, read_signing_key
from gateway.audit.verify import verify
from tests.gateway.auditsetup import Idp, admin_get, audit_config, get_as
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess
from tests.support.peers import BackgroundPeers
from tests.support.readers import read_log
from tests.support.waiting import wait_until

AUDITOR_TOKEN = "token-compliance-0123456789"
PROBE_USER = "vitalgate-probe"


@dataclass
class Desk:
    cfg: Path
    api: dict[str, dict[str, Any]]
    """``/api/v1/audit`` answers, by query string, read while the gateway ran."""
    probe_requests: dict[str, int]
    """How many probe requests the access log holds, by probe route."""
    live_verify: tuple[int, str]
    """``vitalgate audit verify`` while the gateway ran (exit code, output)."""


def _two_found(url: str) -> bool:
    total: int = admin_get(url, AUDITOR_TOKEN)[1].get("total", 0)
    return total >= 2


def _search(cfg: Path, *args: str) -> list[dict[str, Any]]:
    out = vitalgate("audit", "search", "--config", str(cfg), *args, "--format", "json").stdout
    found: list[dict[str, Any]] = json.loads(out)
    return found


def _user(ev: dict[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = next(a for a in ev["agent"] if a["requestor"])
    return user


def _patients(ev: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in ev["entity"] if e.get("role", {}).get("code") == "1"]


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, module_peers: BackgroundPeers) -> Desk:
    tmp = tmp_path_factory.mktemp("desk")
    idp = Idp(tmp)
    probes = [
        # The default probe: {prefix}metadata, which names no patient.
        {"upstream": "fhir", "interval": "1s", "facilities": ["st-marys"]},
        # A probe configured to read a patient, and one whose search results name patients.
        {
            "upstream": "fhir",
            "interval": "1s",
            "facilities": ["riverside"],
            "request": {"path": "/fhir/Patient/pat-probe"},
        },
        {
            "upstream": "fhir",
            "interval": "1s",
            "facilities": ["lakeside"],
            "request": {"path": "/fhir/Patient", "headers": {"X-Test-Fault": "searchset"}},
        },
    ]
    peers = module_peers
    cfg = audit_config(tmp, peers.upstream.port, checkpoint_interval="1s", max_patients=2)
    doc = yaml.safe_load(cfg.read_text())
    doc["admin"]["tokens"] = [
        {
            "name": "compliance",
            "sha256": hashlib.sha256(AUDITOR_TOKEN.encode()).hexdigest(),
            "role": "auditor",
        }
    ]
    doc["probes"] = probes
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    gw = GatewayProcess(cfg)
    try:
        good = idp.token("dr-house", azp="ehr-web")
        assert get_as(gw.proxy, "/fhir/Patient/pat-1", good) == 200  # read, a patient
        assert get_as(gw.proxy, "/fhir/Patient/pat-1") == 200  # unverified: no credentials
        # A client's probe header is not believed: an unverified user, not the gateway.
        assert get_as(gw.proxy, "/fhir/Patient/pat-forged", None, **{"X-Vitalgate-Probe": "guess"}) == 200
        assert get_as(gw.proxy, "/fhir/metadata", good) == 200  # capabilities, no patient
        assert get_as(gw.proxy, "/fhir/Patient?name=x", good, **{"X-Test-Fault": "searchset"}) == 200
        assert get_as(gw.proxy, "/fhir/Patient/pat-2", good, **{"X-Test-Fault": "status:404"}) == 404
        assert get_as(gw.proxy, "/fhir/Patient/pat-3", good, **{"X-Test-Fault": "500"}) == 500
        api: dict[str, dict[str, Any]] = {}
        for query in ("patient=pat-1", "patient=Patient/pat-1", "user=dr-house"):
            url = f"{gw.admin}/api/v1/audit?{query}"
            wait_until(partial(_two_found, url), "recorded")
            status, api[query] = admin_get(url, AUDITOR_TOKEN)
            assert status == 200
        wait_until(
            lambda: all(
                sum(1 for r in read_log(tmp / "access.log") if r.get("http.route") == route) >= 2
                for route in ("probe /fhir/metadata", "probe /fhir/Patient/{id}", "probe /fhir/Patient")
            ),
            "two runs of each probe",
        )
        live = _verify(cfg)
    finally:
        assert gw.terminate() == 0
    counts: dict[str, int] = {}
    for r in read_log(tmp / "access.log"):
        route = str(r.get("http.route", ""))
        if route.startswith("probe "):
            counts[route] = counts.get(route, 0) + 1
    return Desk(cfg, api, counts, live)


def test_every_record_kind_prints_searches_and_exports(desk: Desk) -> None:
    everything = _search(desk.cfg)
    kinds = {
        "request with a patient": [
            ev for ev in everything if _patients(ev) and "(" not in _user(ev)["who"].get("display", "")
        ],
        "request without a patient": [ev for ev in everything if ev["subtype"][0]["code"] == "capabilities"],
        "unverified request": [
            ev for ev in everything if "unverified" in _user(ev)["who"].get("display", "")
        ],
        "cut search result": [ev for ev in everything if "not recorded (audit limit)" in ev["outcomeDesc"]],
        "probe": [ev for ev in everything if _user(ev)["who"]["identifier"]["value"] == PROBE_USER],
        "read of the trail": [ev for ev in everything if "/api/v1/audit" in ev["outcomeDesc"]],
    }
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    for ev in everything:
        AuditEvent.model_validate(ev)

    # The table prints every one of them (a read of the trail has no facility: it printed none
    # before, and the printer died on it), with a legend of the outcome codes.
    for args in ((), ("--user", "compliance")):
        res = vitalgate("audit", "search", "--config", str(desk.cfg), *args, check=False)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].split() == ["RECORDED", "FACILITY", "INTERACTION", "OC", "PATIENT", "USER"]
        rows = lines[1:-5]
        assert len(rows) == (len(everything) if not args else len(kinds["read of the trail"]))
        assert lines[-5:] == [
            f"{len(rows)} AuditEvents. OC is the outcome:",
            "   0 success (2xx/3xx)",
            "   4 minor failure (the client's 4xx)",
            "   8 serious failure (the upstream's 5xx)",
            "  12 major failure (the gateway failed the request)",
        ]
    reads = [r for r in rows if "compliance (admin token)" in r]
    assert len(reads) == len(kinds["read of the trail"]) and all(" trail-read " in r for r in reads)

    # CSV: one row per event, in the same order as JSON, with the outcome in words.
    text = vitalgate("audit", "search", "--config", str(desk.cfg), "--format", "csv").stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["id"] for r in table] == [ev["id"] for ev in everything]
    by_id = {r["id"]: r for r in table}
    words = {"0": "success", "4": "minor failure", "8": "serious failure"}
    assert {(r["outcome"], r["outcome_text"]) for r in table} == set(words.items())
    for ev in kinds["read of the trail"]:
        row = by_id[ev["id"]]
        assert (row["facility"], row["interaction"], row["patient"], row["user"]) == (
            "-",
            "trail-read",
            "-",
            "compliance (admin token)",
        )
    for ev in kinds["probe"]:
        assert by_id[ev["id"]]["user"] == "vitalgate-probe (gateway system agent)"
        assert by_id[ev["id"]]["user_id"] == PROBE_USER
    for ev in kinds["unverified request"]:  # what --user matches: the token's digest, or none
        assert (by_id[ev["id"]]["user"], by_id[ev["id"]]["user_id"]) == (
            "unverified (no bearer token)",
            "none",
        )
    unverified = [ev["id"] for ev in kinds["unverified request"]]
    assert [ev["id"] for ev in _search(desk.cfg, "--user", "none")] == unverified

    # Export: by user (the reads of the trail, which name no patient) and by patient.
    out = desk.cfg.parent / "reads.json"
    res = vitalgate("audit", "export", "--config", str(desk.cfg), "--user", "compliance", "--out", str(out))
    assert res.stdout.strip() == f"{out}: {len(kinds['read of the trail'])} AuditEvents"
    bundle = json.loads(out.read_text())
    assert [e["resource"]["id"] for e in bundle["entry"]] == [ev["id"] for ev in kinds["read of the trail"]]
    assert (out.stat().st_mode & 0o077) == 0
    # Found by their patient: one of each kind that names one.
    named = {_patients(evs[0])[0] for evs in kinds.values() if _patients(evs[0])}
    assert "Patient/pat-1" in named and len(named) >= 2, named
    for patient in sorted(named):
        got = _search(desk.cfg, "--patient", patient)
        assert got and all(patient in _patients(e) for e in got)


def test_a_patient_is_found_by_id_and_by_reference_in_the_cli_the_api_and_export(desk: Desk) -> None:
    bare = _search(desk.cfg, "--patient", "pat-1")
    assert len(bare) == 2 and all(_patients(ev) == ["Patient/pat-1"] for ev in bare)
    assert _search(desk.cfg, "--patient", "Patient/pat-1") == bare
    assert _search(desk.cfg, "--patient", "https://fhir.example.org/fhir/Patient/pat-1") == bare
    a, b = desk.api["patient=pat-1"], desk.api["patient=Patient/pat-1"]
    assert a["total"] == b["total"] == 2
    assert [e["resource"]["id"] for e in a["entry"]] == [e["resource"]["id"] for e in b["entry"]]
    assert [e["resource"]["id"] for e in a["entry"]] == [ev["id"] for ev in bare]
    exported = []
    for spelling in ("pat-1", "Patient/pat-1"):
        out = desk.cfg.parent / "accounting.json"
        res = vitalgate(
            "audit", "export", "--config", str(desk.cfg), "--patient", spelling, "--out", str(out)
        )
        assert res.stdout.strip() == f"{out}: 2 AuditEvents of Patient/pat-1"
        exported.append([e["resource"]["id"] for e in json.loads(out.read_text())["entry"]])
    assert exported[0] == exported[1] == [ev["id"] for ev in bare]


def test_probes_are_the_gateways_system_agent_and_those_naming_no_patient_are_left_out(desk: Desk) -> None:
    everything = _search(desk.cfg)
    # No record is a probe taken for an unverified user (what the metadata probes were).
    unverified = [ev for ev in everything if "unverified" in _user(ev)["who"].get("display", "")]
    assert [(ev["subtype"][0]["code"], _patients(ev)) for ev in unverified] == [
        ("read", ["Patient/pat-1"]),
        ("read", ["Patient/pat-forged"]),
    ]
    # A client's own metadata call is capabilities; the metadata probes, which ran, are not recorded.
    (capabilities,) = [ev for ev in everything if ev["subtype"][0]["code"] == "capabilities"]
    assert _user(capabilities)["who"]["identifier"]["value"] == "dr-house"
    assert desk.probe_requests["probe /fhir/metadata"] >= 2
    probes = _search(desk.cfg, "--user", PROBE_USER)
    assert probes and all(ev in everything for ev in probes)
    assert {ev["source"]["site"] for ev in probes} == {"riverside", "lakeside"}
    reads = [ev for ev in probes if ev["source"]["site"] == "riverside"]
    assert len(reads) >= desk.probe_requests["probe /fhir/Patient/{id}"] - 1  # one may be cut by the stop
    for ev in reads:
        assert (ev["subtype"][0]["code"], ev["action"], _patients(ev)) == ("read", "R", ["Patient/pat-probe"])
        system, client, _server = ev["agent"]
        assert system["type"]["coding"][0] == {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110150",
            "display": "Application",
        }
        assert system["who"]["identifier"] == {"system": "urn:vitalgate:system-agent", "value": PROBE_USER}
        assert client["who"]["display"] == "vitalgate synthetic probe"
    searches = [ev for ev in probes if ev["source"]["site"] == "lakeside"]
    # max_patients 2: each run of the search probe is two events, the second saying one more was cut.
    assert searches and {ev["subtype"][0]["code"] for ev in searches} == {"search-type"}
    assert {p for ev in searches for p in _patients(ev)} == {"Patient/p-smith-1", "Patient/p-jones-2"}


def _copy(desk: Desk, name: str) -> Path:
    """A copy of the stopped gateway's folder (config, keys, trail, access log) to damage."""
    folder = desk.cfg.parent.parent / name
    shutil.copytree(desk.cfg.parent, folder)
    return folder / "gateway.yaml"


def _verify(cfg: Path, *extra: str) -> tuple[int, str]:
    res = vitalgate("audit", "verify", "--config", str(cfg), *extra, check=False)
    return res.returncode, res.stdout


def test_verify_fails_when_the_checkpoints_are_removed_or_cut(desk: Desk) -> None:
    code, out = desk.live_verify  # beside the running writer: its last records may wait
    assert code == 0 and out.startswith("audit trail: OK: "), out
    cfg = _copy(desk, "no-checkpoints")
    code, out = _verify(cfg)
    assert code == 0 and out.startswith("audit trail: OK: "), out
    checkpoints = cfg.parent / "audit" / "checkpoints.jsonl"
    kept = checkpoints.read_bytes()
    empty = cfg.parent / "nothing-published.jsonl"
    empty.write_text("")
    assert _verify(cfg, "--anchor", str(empty))[0] == 0

    checkpoints.unlink()
    # With the checkpoints published in the access log: the first one published is not kept.
    code, out = _verify(cfg)
    assert (
        code == 1
        and "checkpoints.jsonl: the checkpoint published at " in out
        and "is not in the store" in out
    )
    # With nothing published: the trail was shut down, so its last checkpoint must be there.
    code, out = _verify(cfg, "--anchor", str(empty))
    assert code == 1 and "checkpoints.jsonl is missing" in out and "no writer runs" in out, out

    # The last line cut: the access log still holds it.
    checkpoints.write_bytes(b"".join(kept.splitlines(keepends=True)[:-1]))
    code, out = _verify(cfg)
    assert code == 1 and "is not in the store: checkpoints.jsonl was removed or cut" in out, out
    checkpoints.write_bytes(kept)
    assert _verify(cfg)[0] == 0


def test_a_running_writer_has_a_checkpoint_interval_to_cover_its_records(desk: Desk) -> None:
    """While a writer holds the chain, records younger than a checkpoint interval (and its
    grace) may wait for one; older ones may not."""
    cfg = _copy(desk, "running")
    folder = cfg.parent
    (folder / "audit" / "checkpoints.jsonl").unlink()
    keyring = Keyring.load([folder / "keys" / "audit.key"])
    public = read_signing_key(folder / "keys" / "audit-signing.key").public_key()
    # A line the writer is writing as verify reads: not read yet while the writer runs.
    (segment,) = (folder / "audit" / "segments").glob("*.seg")
    segment.chmod(0o600)
    with segment.open("ab") as f:
        f.write(b'{"i":999,"t":17')
    fd = os.open(folder / "audit" / ".writer.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the chain's writer holds it while it runs
        now = time.time()
        fresh = verify(folder / "audit", keyring, public, [], checkpoint_interval_s=1.0, now_s=now)
        assert fresh.problem is None and fresh.records > 0
        later = verify(folder / "audit", keyring, public, [], checkpoint_interval_s=1.0, now_s=now + 3600)
        assert later.problem is not None and later.problem.startswith("record 0 (")
        assert "no checkpoint covers it, though its writer runs and checkpoints every 1 s" in later.problem
    finally:
        os.close(fd)
    stopped = verify(folder / "audit", keyring, public, [], checkpoint_interval_s=1.0)
    assert stopped.problem is not None and "not a JSON line (altered or torn)" in stopped.problem
    segment.write_bytes(segment.read_bytes().rpartition(b"\n")[0] + b"\n")
    stopped = verify(folder / "audit", keyring, public, [], checkpoint_interval_s=1.0)
    assert stopped.problem is not None and "no writer runs" in stopped.problem
    assert stopped.records == fresh.records


def test_a_strict_trail_holds_a_probe_as_the_system_agent_too(
    tmp_path: Path, peers: BackgroundPeers, idp: Idp
) -> None:
    """Under ``durability: strict`` a probe's record is made while its response waits (not
    from its telemetry route): the same system agent, the same leaving out of the metadata probe."""
    cfg = audit_config(tmp_path, peers.upstream.port, durability="strict")
    doc = yaml.safe_load(cfg.read_text())
    doc["probes"] = [
        {"upstream": "fhir", "interval": "1s", "facilities": ["st-marys"]},
        {"upstream": "fhir", "interval": "1s", "request": {"path": "/fhir/Patient/pat-strict"}},
    ]
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    gw = GatewayProcess(cfg)
    try:
        wait_until(
            lambda: (
                sum(
                    1
                    for r in read_log(tmp_path / "access.log")
                    if r.get("http.route") == "probe /fhir/metadata"
                )
                >= 2
            ),
            "two metadata probes",
        )
    finally:
        assert gw.terminate() == 0
    found = _search(cfg)
    assert found and all(_user(ev)["who"]["identifier"]["value"] == PROBE_USER for ev in found)
    assert {(ev["subtype"][0]["code"], ev["source"]["site"]) for ev in found} == {("read", "unknown")}
    assert all(_patients(ev) == ["Patient/pat-strict"] for ev in found)
