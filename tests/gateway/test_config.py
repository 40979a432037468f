from pathlib import Path

import pytest

from gateway.config import load_config
from slo.configfile import ConfigError
from tests.helpers import vitalgate

REPO = Path(__file__).resolve().parents[2]

BAD_GATEWAY = """\
version: 1
listen: "127.0.0.1:99999"
upstreams:
  fhir: {url: "ftp://fhir.example", timeout: {connect: 2}}
routes:
  - {prefix: fhir/, upstream: nope, kind: fhir}
facilities:
  from: [{header: X-Facility-ID, jwt_claim: fac}]
  known:
    st-marys: {name: "St Mary's", timezone: Mars/Olympus, sla: 120}
    unknown: {name: Reserved}
telemetry:
  traces: {sample_ratio: 2}
  bogus: 1
slos: slos.yaml
"""

BAD_SLOS = """\
version: 1
slos:
  - {name: a, service: fhirx, objective: 99, sli: {availability: {}}}
"""


def _write_bad(tmp_path: Path) -> Path:
    (tmp_path / "gateway.yaml").write_text(BAD_GATEWAY)
    (tmp_path / "slos.yaml").write_text(BAD_SLOS)
    return tmp_path / "gateway.yaml"


EXPECTED = [
    "{g}:2:9: listen: must be host:port, such as 127.0.0.1:8080 (got '127.0.0.1:99999')",
    "{g}:4:15: upstreams.fhir.url: must be an http:// or https:// URL (got 'ftp://fhir.example')",
    "{g}:4:56: upstreams.fhir.timeout.connect: must be a duration with a unit, such as '300ms' or '2s' (got 2)",
    "{g}:6:14: routes[0].prefix: must start and end with '/' (got 'fhir/')",
    "{g}:6:31: routes[0].upstream: unknown upstream 'nope' (known: fhir)",
    "{g}:8:10: facilities.from[0]: exactly one of 'header', 'path_segment' or 'jwt_claim' is required",
    "{g}:10:45: facilities.known.st-marys.timezone: unknown IANA time zone 'Mars/Olympus' (e.g. America/Chicago)",
    "{g}:10:64: facilities.known.st-marys.sla: must be a percentage between 0 and 100 (got 120.0)",
    "{g}:11:5: facilities.known.unknown: facility id 'unknown' is reserved",
    "{g}:13:26: telemetry.traces.sample_ratio: Input should be less than or equal to 1",
    "{g}:14:3: telemetry.bogus: unknown field",
    "{s}:3:24: slos[0].service: unknown service 'fhirx' (upstreams: fhir)",
]


def test_every_problem_with_file_line_and_field(tmp_path: Path) -> None:
    path = _write_bad(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    g, s = str(path), str(tmp_path / "slos.yaml")
    assert [str(p) for p in err.value.problems] == [e.format(g=g, s=s) for e in EXPECTED]


@pytest.mark.parametrize("command", ["check", "serve"])
def test_cli_exits_1_with_the_messages(tmp_path: Path, command: str) -> None:
    path = _write_bad(tmp_path)
    proc = vitalgate(command, "--config", str(path), check=False, timeout=60)
    assert proc.returncode == 1
    g, s = str(path), str(tmp_path / "slos.yaml")
    lines = proc.stderr.splitlines()
    assert lines[:-1] == [e.format(g=g, s=s) for e in EXPECTED]
    assert lines[-1] == "vitalgate: 12 problems in configuration"
    assert proc.stdout == ""


def test_example_config_is_valid() -> None:
    proc = vitalgate("check", "--config", str(REPO / "config" / "gateway.yaml"), check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "2 upstreams, 2 routes, 2 facilities, 2 SLOs" in proc.stdout


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml:0:0: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_missing_required_sections(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("version: 2\nlisten: 127.0.0.1:8080\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [str(p) for p in err.value.problems] == [
        f"{path}:1:1: upstreams: required field is missing",
        f"{path}:1:1: routes: required field is missing",
        f"{path}:1:10: version: Input should be 1",
    ]
