import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.configfile import ConfigError
from tests.support.cli import vitalgate
from vitalgate.config import load_config

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


GOOD_HEAD = """\
version: 1
listen: "127.0.0.1:18080"
routes: [{prefix: /fhir/, upstream: fhir, kind: fhir}]
"""

LAUGHS = (
    'version: 1\nlisten: "127.0.0.1:18080"\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    + "upstreams: {fhir: {url: 'http://127.0.0.1:1'}}\nroutes: [{prefix: /fhir/, upstream: fhir}]\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LAUGHS, r":4:\d+: aliases \(\*name\) are not supported"),  # a billion laughs
        ("version: 1\nx: &x [*x]\n", r":2:\d+: aliases \(\*name\) are not supported"),  # itself
        ("version: 1\nx: " + "[" * 20000 + "]" * 20000 + "\n", r":2:\d+: nested more than 64 levels deep"),
        ("version: 1\n? [a, b]\n: c\n", r":2:3: keys must be plain values"),
        ("version: 1\nbase: &b {x: 1}\nother: {<<: *b}\n", r":3:\d+: aliases"),
        (
            GOOD_HEAD + "upstreams: {fhir: {url: 'http://h:99999'}}\n",
            r":4:\d+: upstreams.fhir.url: has an invalid port",
        ),
        (
            GOOD_HEAD + "upstreams: {fhir: {url: 'http://h:abc'}}\n",
            r":4:\d+: upstreams.fhir.url: has an invalid port",
        ),
        (
            GOOD_HEAD + "upstreams: {fhir: {url: 'http://h:1'}}\n"
            "telemetry: {traces: {otlp_endpoint: 'http://c:70000'}}\n",
            r":5:\d+: telemetry.traces.otlp_endpoint: has an invalid port",
        ),
        (
            GOOD_HEAD
            + "upstreams: {fhir: {url: 'http://h:1'}}\ntelemetry: {traces: {export_timeout: 100000000000000000000s}}\n",
            r"telemetry.traces.export_timeout: must be between 0.01 s and 300 s",
        ),
        (
            GOOD_HEAD
            + "upstreams: {fhir: {url: 'http://h:1'}}\ntelemetry: {traces: {export_timeout: 10us}}\n",
            r"telemetry.traces.export_timeout: ",
        ),
        (
            GOOD_HEAD + "upstreams: {fhir: {url: 'http://h:1', timeout: {total: 0s}}}\n",
            r"upstreams.fhir.timeout.total: must be between 0.001 s and 86400 s",
        ),
        (
            GOOD_HEAD + "upstreams: {fhir: {url: 'https://h:1', ca_file: notacert.pem}}\n",
            r":4:\d+: upstreams.fhir.ca_file: not a usable PEM certificate",
        ),
        (
            GOOD_HEAD + "upstreams: {fhir: {url: 'http://h:1'}}\nslos: /dev/zero\n",
            r"/dev/zero:1:1: not a regular file",
        ),
    ],
)
def test_hostile_configs_get_a_located_error_quickly(tmp_path: Path, text: str, expected: str) -> None:
    """Each one once ran `check` out of memory, into a traceback, or past `check` into a
    `serve` that crashed. Memory is capped at 1 GiB and time at 30 s: either one exceeded
    fails the test."""
    (tmp_path / "notacert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [
            "prlimit",
            "--as=1073741824",
            "--",
            sys.executable,
            "-m",
            "vitalgate",
            "check",
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert re.search(
        re.escape(str(path)) + expected if expected.startswith(":") else expected, proc.stderr
    ), proc.stderr
