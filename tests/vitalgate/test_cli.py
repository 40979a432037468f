"""The `vitalgate` command as a newcomer meets it: help, errors, warnings, and what
`check` and `slo status` say, each run as a subprocess."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import slos
from tests.support.cli import vitalgate
from tests.support.gateway import StartGateway, gateway_config
from tests.support.services import require_binary
from vitalgate.cli import build_parser
from vitalgate.peers import free_port

GROUPS = ["slo", "alerts", "dashboards", "store", "audit"]


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command path (``("slo", "status")``, ...), read from the parser."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.extend(_commands(child, (*prefix, name)) or [(*prefix, name)])
    return found


def test_version_option_prints_what_the_version_command_prints() -> None:
    option = vitalgate("--version", check=False)
    command = vitalgate("version", check=False)
    assert option.returncode == command.returncode == 0, option.stderr
    assert option.stdout == command.stdout
    assert option.stdout.startswith("vitalgate ")


@pytest.mark.parametrize("group", GROUPS)
def test_a_command_group_alone_lists_its_commands(group: str) -> None:
    proc = vitalgate(group, check=False)
    assert proc.returncode == 2
    assert f"usage: vitalgate {group} [-h] COMMAND ..." in proc.stderr
    commands = proc.stderr.split("positional arguments:", 1)[1].split("options:", 1)[0]
    listed = set(re.findall(r"^    (\S+)", commands, re.M))
    assert {c[1] for c in _commands(build_parser()) if c[0] == group} <= listed
    assert "_command" not in proc.stderr


def test_every_option_and_argument_says_what_it_takes() -> None:
    """``--help`` describes every option of every command (the README promises it)."""

    def silent(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in dict.fromkeys(action.choices.items()):
                    found += silent(child, (*path, name))
            elif not action.help:
                found.append((*path, *(action.option_strings or [action.dest])))
        return found

    assert silent(build_parser(), ()) == []


@pytest.mark.slow
def test_every_config_option_says_what_it_takes() -> None:
    commands = [c for c in _commands(build_parser()) if c != ("audit", "keygen")]
    with_config = 0
    for command in commands:
        text = vitalgate(*command, "--help").stdout
        if "--config CONFIG" not in text:
            continue
        with_config += 1
        line = text.split("  --config CONFIG", 1)[1].splitlines()[0].strip()
        assert "gateway.yaml" in line, (command, line)
    assert with_config >= 13  # serve, reload, check, slo status, alerts x2, dashboards x2, report, ...


def test_kubernetes_options_describe_what_they_set() -> None:
    options = vitalgate("dashboards", "generate", "--help").stdout.split("options:", 1)[1]
    text = " ".join(options.split())
    namespace = text.split("--namespace NAMESPACE", 1)[1].split("--label", 1)[0]
    assert "namespace of the ConfigMaps" in namespace and "label" not in namespace
    assert "default grafana_dashboard=1" in text.split("--label KEY=VALUE", 1)[1]


def _token_config(tmp_path: Path, token: str) -> Path:
    digest = hashlib.sha256(token.encode()).hexdigest()
    tokens = [{"name": "oncall", "sha256": digest, "role": "sre"}]
    return gateway_config(tmp_path, free_port(), slos=slos.AVAIL, extra={"admin": {"tokens": tokens}})


@pytest.mark.slow
def test_reload_names_the_token_variable_in_its_help_and_on_401(
    tmp_path: Path, gateway_process: StartGateway
) -> None:
    assert "VITALGATE_ADMIN_TOKEN" in vitalgate("reload", "--help").stdout
    cfg = _token_config(tmp_path, "s3cret-admin-token")
    gw = gateway_process(cfg)
    env = {k: v for k, v in os.environ.items() if k != "VITALGATE_ADMIN_TOKEN"}
    unset = vitalgate("reload", "--config", str(cfg), check=False, env=env)
    assert unset.returncode == 1
    assert "HTTP 401" in unset.stderr
    assert "VITALGATE_ADMIN_TOKEN is not set: set it to an admin token with role sre" in unset.stderr
    wrong = vitalgate(
        "reload", "--config", str(cfg), check=False, env={**env, "VITALGATE_ADMIN_TOKEN": "nope"}
    )
    assert wrong.returncode == 1
    assert "VITALGATE_ADMIN_TOKEN was refused" in wrong.stderr
    right = vitalgate(
        "reload", "--config", str(cfg), env={**env, "VITALGATE_ADMIN_TOKEN": "s3cret-admin-token"}
    )
    assert right.stdout.startswith("reloaded: config ")
    assert gw.terminate() == 0


GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "alerts"


@pytest.mark.slow
def test_pages_that_reach_nobody_are_said_by_check_generate_and_the_file(tmp_path: Path) -> None:
    amtool = require_binary("amtool")
    cfg = gateway_config(tmp_path, free_port(), slos=slos.FHIR_AVAILABILITY)  # no alerting: section
    check = vitalgate("check", "--config", str(cfg))
    assert check.stdout.startswith(f"{cfg}: ok: ")
    assert f"{cfg}: warning: alerting.default_receiver is not set" in check.stderr
    assert "every page and ticket goes to the empty receiver 'vitalgate-unrouted', which notifies nobody" in (
        " ".join(check.stderr.split())
    )
    out = tmp_path / "alerts"
    generated = vitalgate(
        "alerts", "generate", "--config", str(cfg), "--out", str(out), "--format", "prometheus-operator"
    )
    assert "vitalgate: warning: alerting.default_receiver is not set" in generated.stderr
    for name in ("alertmanager.yml", "alertmanagerconfig.yaml"):
        lines = (out / name).read_text().splitlines()
        header = " ".join(line.removeprefix("#").strip() for line in lines if line.startswith("#"))
        assert "WARNING: alerting.default_receiver is not set" in header, name
        assert "which notifies nobody" in header, name
    text = (out / "alertmanager.yml").read_text()
    assert yaml.safe_load(text)["route"]["receiver"] == "vitalgate-unrouted"
    resource = yaml.safe_load((out / "alertmanagerconfig.yaml").read_text())
    assert resource["kind"] == "AlertmanagerConfig"
    checked = subprocess.run(
        [amtool, "check-config", str(out / "alertmanager.yml")], capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Some facilities routed, no default: the others' pages reach nobody, and it names them.
    doc = yaml.safe_load(cfg.read_text())
    doc["alerting"] = {
        "receivers": {"riverside-it": {"webhook_url": "http://127.0.0.1:5001/r"}},
        "facility_receivers": {"riverside": ["riverside-it"]},
    }
    cfg.write_text(yaml.safe_dump(doc))
    partly = vitalgate("check", "--config", str(cfg))
    assert "pages and tickets of facilities other than riverside go to the empty receiver" in (
        " ".join(partly.stderr.split())
    )

    # With a default receiver nothing is said.
    routed = vitalgate("check", "--config", str(GOLDEN / "gateway.yaml"))
    assert routed.stderr == ""
    quiet = vitalgate(
        "alerts", "generate", "--config", str(GOLDEN / "gateway.yaml"), "--out", str(tmp_path / "q")
    )
    assert "warning" not in quiet.stderr
    assert "WARNING" not in (tmp_path / "q" / "alertmanager.yml").read_text()


def _filtered(name: str, service: str, routes: list[str]) -> dict[str, Any]:
    return {**slos.availability(name), "service": service, "filter": {"routes": routes}}


@pytest.mark.slow
def test_route_filters_that_no_route_produces_are_errors_at_their_place(tmp_path: Path) -> None:
    good = [
        _filtered("patient-reads", "fhir", ["/fhir/Patient/{id}", "/fhir/Observation", "/fhir/metadata"]),
        _filtered("everything", "fhir", ["/fhir/Patient/{id}/$everything", "/fhir/{path}", "/fhir/"]),
        _filtered("appointments", "scheduling", ["/scheduling/appointments/{id}", "/scheduling/{path}"]),
    ]
    ok = vitalgate("check", "--config", str(gateway_config(tmp_path, free_port(), slos=good)))
    assert ok.stdout.split(": ok: ")[1].startswith("2 upstreams, 2 routes")

    bad = [
        _filtered("typo", "fhir", ["/fhir/Patients/{id}", "/fhr/Patient/{id}", "/fhir/Patient/{id}"]),
        _filtered("paths", "fhir", ["/fhir/Patient/123", "/scheduling/appointments/{id}"]),
        _filtered("scheduling", "scheduling", ["/scheduling/appointments"]),
    ]
    cfg = gateway_config(tmp_path, free_port(), slos=bad)
    proc = vitalgate("check", "--config", str(cfg), check=False)
    assert proc.returncode == 1
    slos_file = tmp_path / "slos.yaml"
    lines = slos_file.read_text().splitlines()
    errors = proc.stderr.splitlines()
    assert errors[-1] == "vitalgate: 5 problems in configuration"
    expected = {
        "slos[0].filter.routes[0]": "unknown FHIR resource type 'Patients' (did you mean 'Patient'?): "
        "no request is ever labelled '/fhir/Patients/{id}'",
        "slos[0].filter.routes[1]": "'/fhr/Patient/{id}' is under no configured route "
        "(prefixes: /fhir/, /scheduling/): no request is labelled so",
        "slos[1].filter.routes[0]": "the gateway labels such a request '/fhir/Patient/{id}', never '/fhir/Patient/123'",
        "slos[1].filter.routes[1]": "'/scheduling/appointments/{id}' is a route of upstream 'scheduling', "
        "not of this SLO's service 'fhir': it never matches",
        "slos[2].filter.routes[0]": "'/scheduling/appointments' is not one of the templates of route /scheduling/ "
        "(/scheduling/appointments/{id}); the gateway labels every other request there /scheduling/{path}",
    }
    for error, (field, message) in zip(errors[:-1], expected.items(), strict=True):
        where, rest = error.split(f": {field}: ", 1)
        assert rest == message
        path, line, column = where.rsplit(":", 2)
        assert path == str(slos_file)
        i, j = (int(n) for n in re.findall(r"\[(\d+)\]", field))
        written = lines[int(line) - 1][int(column) - 1 :]
        assert written.strip("'\"").startswith(bad[i]["filter"]["routes"][j]), (error, written)
    # The gateway refuses the same config at start-up.
    serve = vitalgate("serve", "--config", str(cfg), check=False, timeout=60)
    assert serve.returncode == 1 and "slos[0].filter.routes[0]" in serve.stderr


def _access_line(t: float, duration_ms: float, facility: str = "riverside") -> str:
    return json.dumps(
        {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t)),
            "event": "request",
            "facility": facility,
            "service": "fhir",
            "http.route": "/fhir/Patient/{id}",
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "duration_ms": duration_ms,
        }
    )


DURATIONS_MS = [100, 740, 749, 760, 770, 776, 777, 780, 900, 120, 30]
LONG_NAME = "fhir-availability-of-patient-reads-for-the-contract"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """History recorded (imported) under a config without latency SLOs, then two latency SLOs
    added: 777 ms (no bucket at it in that history) and 750 ms (an OTel bucket bound)."""
    tmp = tmp_path_factory.mktemp("whatif")
    cfg = gateway_config(tmp, free_port(), slos=[slos.availability(LONG_NAME, 99.9)])
    t0 = time.time() - 1800
    log = tmp / "recorded.log"
    log.write_text("".join(_access_line(t0 + i, ms) + "\n" for i, ms in enumerate(DURATIONS_MS)))
    vitalgate("store", "import", "--config", str(cfg), "--access-log", str(log))
    doc = yaml.safe_load((tmp / "slos.yaml").read_text())
    doc["slos"] += [slos.latency("reads-777", "777ms", 99), slos.latency("reads-750", "750ms", 99)]
    (tmp / "slos.yaml").write_text(yaml.safe_dump(doc))
    return cfg


def _rows(cfg: Path, *extra: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        vitalgate("slo", "status", "--config", str(cfg), "--format", "json", *extra).stdout
    )["slos"]
    return rows


@pytest.mark.slow
def test_what_if_replay_says_which_bucket_bound_a_threshold_was_counted_at(replayed: Path) -> None:
    rows = {r["slo"]: r for r in _rows(replayed, "--facility", "riverside")}
    within_777 = sum(ms <= 777 for ms in DURATIONS_MS)
    within_750 = sum(ms <= 750 for ms in DURATIONS_MS)
    assert within_777 > within_750  # what the access log says, and what the store could count
    assert rows["reads-777"]["good"] == within_750
    assert rows["reads-777"]["threshold_buckets"] == [
        {"threshold_s": 0.777, "bucket_bound_s": 0.75, "difference_s": -0.027}
    ]
    assert rows["reads-750"]["good"] == within_750
    assert rows["reads-750"]["threshold_buckets"] == []
    assert rows[LONG_NAME]["threshold_buckets"] == []
    table = vitalgate("slo", "status", "--config", str(replayed)).stdout
    assert (
        "note: reads-777: threshold 777ms counted at the recorded bucket bound 750ms (27ms below) "
        "for history recorded before the gateway had this threshold among its buckets: "
        "requests between the two count bad"
    ) in table
    assert "reads-750:" not in table


@pytest.mark.slow
def test_history_recorded_with_the_threshold_is_exact(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, free_port(), slos=[slos.latency("reads-777", "777ms", 99)])
    log = tmp_path / "recorded.log"
    t0 = time.time() - 1800
    log.write_text("".join(_access_line(t0 + i, ms) + "\n" for i, ms in enumerate(DURATIONS_MS)))
    vitalgate("store", "import", "--config", str(cfg), "--access-log", str(log))
    (row,) = _rows(cfg, "--facility", "riverside")
    assert row["good"] == sum(ms <= 777 for ms in DURATIONS_MS)
    assert row["threshold_buckets"] == []
    assert "note:" not in vitalgate("slo", "status", "--config", str(cfg)).stdout


@pytest.mark.slow
def test_slo_status_table_full_names_sla_and_filters(replayed: Path) -> None:
    table = vitalgate("slo", "status", "--config", str(replayed)).stdout.splitlines()
    head = table[0].split()
    assert head[:8] == ["SLO", "FACILITY", "OBJECTIVE", "SLI", "BUDGET", "LEFT", "SLA", "1H"]
    rows = [line.split() for line in table[1:] if line and not line.startswith("note:")]
    assert {r[0] for r in rows} == {LONG_NAME, "reads-777", "reads-750"}  # never cut
    sla = {(r[0], r[1]): r[5] for r in rows if r[3] != "no"}  # (rows with data: no spaces)
    assert sla[(LONG_NAME, "riverside")] == "99.50%"
    assert sla[(LONG_NAME, "*")] == "-"

    only = vitalgate(
        "slo", "status", "--config", str(replayed), "--slo", LONG_NAME, "--facility", "riverside"
    )
    lines = only.stdout.splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == [LONG_NAME, "riverside"]
    two = _rows(replayed, "--slo", "reads-777", "--slo", "reads-750", "--facility", "*")
    assert sorted(r["slo"] for r in two) == ["reads-750", "reads-777"]
    assert {r["facility"] for r in two} == {"*"}

    unknown = vitalgate("slo", "status", "--config", str(replayed), "--slo", "nope", check=False)
    assert unknown.returncode == 2
    assert f"unknown SLO 'nope' (known: {LONG_NAME}, reads-750, reads-777)" in unknown.stderr
    nowhere = vitalgate("slo", "status", "--config", str(replayed), "--facility", "nowhere", check=False)
    assert nowhere.returncode == 2
    assert "unknown facility 'nowhere' (known: " in nowhere.stderr
