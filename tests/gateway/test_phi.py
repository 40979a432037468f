"""PHI canary: synthetic names, MRNs and birth dates go in everywhere a client can put them,
and none of them comes out in any log, span, metric or file the gateway writes."""

import base64
import json
import socket
import string
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers


class Harness:
    def __init__(self, peers: BackgroundPeers, gateway: GatewayProcess, workdir: Path) -> None:
        self.peers = peers
        self.gateway = gateway
        self.workdir = workdir
        self.canaries: set[str] = set()
        self.sent = 0


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, module_peers: BackgroundPeers) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("phi")
    peers = module_peers
    cfg = gateway_config(workdir, peers.upstream.port, peers.sink_port)
    gw = GatewayProcess(cfg)
    try:
        yield Harness(peers, gw, workdir)
    finally:
        gw.kill()


def _send(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> int:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)


def _jwt(claims: dict[str, str]) -> str:
    def enc(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'none'})}.{enc(claims)}.sig"


names = st.text(alphabet=string.ascii_lowercase, min_size=8, max_size=14).map(lambda s: "Zq" + s)
mrns = st.integers(min_value=10**7, max_value=10**10 - 1).map(lambda n: f"MRN{n}")
births = st.dates(min_value=date(1920, 1, 1), max_value=date(1999, 12, 31)).map(date.isoformat)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, mrn=mrns, birth=births)
def test_phi_goes_in_everywhere(harness: Harness, name: str, mrn: str, birth: str) -> None:
    harness.canaries |= {name, mrn, birth}
    base = harness.gateway.proxy
    phi_headers = {
        "X-Facility-ID": f"{name} {birth}",  # a raw, unknown facility value
        "Authorization": "Bearer " + _jwt({"sub": mrn, "name": name, "facility": name}),
        "Cookie": f"session={mrn}; patient={name}",
        "User-Agent": f"ehr-client/{name}",
        "X-Patient-Name": name,
        "Referer": f"https://ehr.example/patients/{mrn}",
    }
    resource = json.dumps(
        {
            "resourceType": "Patient",
            "name": [{"family": name}],
            "birthDate": birth,
            "identifier": [{"value": mrn}],
        }
    ).encode()
    requests = [
        ("GET", f"/fhir/Patient/{mrn}?family={name}&birthdate={birth}&_count=5", None),
        (
            "GET",
            f"/fhir/Patient?subject:Patient.name={name}&_has:Observation:patient:code={mrn}&_sort=date",
            None,
        ),
        ("GET", f"/fhir/Patient?identifier=urn:mrn|{mrn}&_content={name}&_text={birth}", None),
        ("POST", "/fhir/Patient", resource),
        ("POST", "/fhir/Patient/_search", f"family={name}&birthdate={birth}".encode()),
        ("PUT", f"/fhir/Patient/{mrn}", resource),
        ("GET", f"/fhir/{name}/{mrn}", None),  # not a resource type: folds
        ("GET", f"/fhir/Patient/{mrn}/_history/{birth}", None),
        ("GET", f"/fhir/Patient/{mrn}/${name}", None),  # not an operation: folds
        ("GET", f"/scheduling/appointments/{mrn}?patient={name}", None),
        ("GET", f"/{name}/{birth}/{mrn}", None),  # no route
        # Query shapes where a name, not a value, carries the PHI, or a control value does.
        ("GET", f"/fhir/Patient?{name}", None),  # a bare token
        ("GET", f"/fhir/Patient?{mrn}=1&{name}=", None),
        ("GET", f"/fhir/Patient?_count={name}&_sort=-{name}&_summary={mrn}", None),
        ("GET", f"/fhir/Patient?_elements=identifier,{name}&_include=Patient:{name}", None),
        ("GET", f"/fhir/Patient?family:{name}=x&subject:Patient.{name}=1&_has:{name}:patient:code=2", None),
        ("GET", f"/fhir/Patient?family={name}&family=&&given={name}+{mrn}", None),
        ("GET", f"/fhir/Patient?fam%69ly={name}%20{birth}&_count=%3{mrn[-1]}{name}", None),
        ("GET", f"/fhir/Patient?_getpages={name}&_format={name}", None),
    ]
    for method, path, body in requests:
        status = _send(base + path, method, phi_headers, body)
        assert status in (200, 404)
        harness.sent += 1
    # A fragment in the request target (clients strip it; a raw socket need not).
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET /fhir/Patient?_count=2#{name} HTTP/1.1\r\nHost: gw\r\nX-Facility-ID: {mrn}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ")
    harness.sent += 1


def test_phi_never_comes_out(harness: Harness) -> None:
    assert harness.sent >= 40 * 20, "the canary test must run first (same module)"
    gw = harness.gateway
    with urllib.request.urlopen(gw.admin + "/metrics", timeout=5) as r:
        metrics = r.read()
    req = urllib.request.Request(gw.admin + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(req, timeout=5) as r:
        openmetrics = r.read()
    assert gw.terminate() == 0  # flushes logs and spans
    sink = harness.peers.sink
    outputs: dict[str, bytes] = {"metrics": metrics, "openmetrics": openmetrics}
    outputs["spans (protobuf)"] = b"".join(sink.raw_bodies)
    outputs["spans (decoded)"] = "\n".join(s.to_json() for s in sink.spans).encode()
    for f in harness.workdir.rglob("*"):
        if f.is_file() and f.suffix != ".yaml":
            outputs[str(f.relative_to(harness.workdir))] = f.read_bytes()
    assert len(outputs["access.log"].splitlines()) == harness.sent
    assert len([s for s in sink.spans if s.kind == "SERVER"]) == harness.sent
    leaks = [
        (canary, where)
        for canary in sorted(harness.canaries)
        for where, data in outputs.items()
        if canary.encode() in data
    ]
    assert leaks == []
    # What did reach the telemetry: templates and parameter names only.
    routes = {
        json.loads(line)["http.route"] for line in outputs["access.log"].splitlines() if b"http.route" in line
    }
    assert routes <= {
        "/fhir/Patient/{id}",
        "/fhir/Patient",
        "/fhir/Patient/_search",
        "/fhir/{path}",
        "/fhir/Patient/{id}/_history/{vid}",
        "/scheduling/appointments/{id}",
    }
    queries = {s.attributes.get("url.query") for s in sink.spans if s.kind == "SERVER"}
    assert "subject:Patient.name=REDACTED&_has:Observation:patient:code=REDACTED&_sort=date" in queries
    assert "REDACTED" in queries  # the bare token
    assert "_count=REDACTED&_sort=REDACTED&_summary=REDACTED" in queries
    assert "REDACTED&REDACTED&REDACTED" in queries  # unknown modifier, unknown link, unknown type
    assert "_count=2" in queries  # the fragment is gone
