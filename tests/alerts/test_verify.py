"""``vitalgate alerts verify`` against real servers running the generated rules."""

from pathlib import Path

import pytest
import yaml

from tests import slos
from tests.support.cli import vitalgate
from tests.support.gateway import gateway_config
from tests.support.services import PrometheusProcess, VictoriaMetricsProcess, VmalertProcess
from tests.support.waiting import wait_until
from vitalgate.peers import free_port

SLOS = slos.DASHBOARDS


def _generate(cfg: Path, out: Path) -> list[dict[str, object]]:
    """The generated rules, every group evaluated each 2 s instead of each minute or two (what
    is verified is that they load and run, not what they compute), written back in place."""
    vitalgate("alerts", "generate", "--config", str(cfg), "--out", str(out))
    doc = yaml.safe_load((out / "rules.yaml").read_text())
    for group in doc["groups"]:
        group["interval"] = "2s"
    (out / "rules.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return list(doc["groups"])


def _verify(cfg: Path, url: str) -> tuple[int, str]:
    res = vitalgate("alerts", "verify", "--config", str(cfg), "--prometheus-url", url, check=False)
    return res.returncode, res.stdout + res.stderr


@pytest.mark.slow
def test_verify_finds_every_group_running_and_names_the_one_left_out(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, free_port(), slos=SLOS)
    out = tmp_path / "generated"
    groups = _generate(cfg, out)
    (tmp_path / "full").mkdir()
    full = PrometheusProcess(tmp_path / "full", [], rule_files=[out / "rules.yaml"])
    partial_rules = tmp_path / "partial.yaml"
    partial_rules.write_text(yaml.safe_dump({"groups": groups[1:]}))
    (tmp_path / "partial").mkdir()
    partial = PrometheusProcess(tmp_path / "partial", [], rule_files=[partial_rules])
    try:
        wait_until(lambda: _verify(cfg, full.url)[0] == 0, "every group evaluated", timeout_s=30)
        code, said = _verify(cfg, full.url)
        assert code == 0 and f"all {len(groups)} groups" in said, said
        wait_until(lambda: "not evaluated yet" not in _verify(cfg, partial.url)[1], "evaluated", timeout_s=30)
        code, said = _verify(cfg, partial.url)
        assert code == 1
        assert said.splitlines()[0].startswith(f"group {groups[0]['name']}: not loaded"), said
        assert len(said.splitlines()) == 2  # that one, and the summary
    finally:
        full.stop()
        partial.stop()
    code, said = _verify(cfg, full.url)  # gone
    assert code == 1 and "api/v1/rules" in said


@pytest.mark.slow
def test_verify_reads_vmalert_as_it_reads_prometheus(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, free_port(), slos=SLOS)
    out = tmp_path / "generated"
    _generate(cfg, out)
    vm = VictoriaMetricsProcess(tmp_path, [])
    vmalert = VmalertProcess(tmp_path, [out / "rules.yaml"], vm.url, f"127.0.0.1:{free_port()}")
    try:
        wait_until(lambda: _verify(cfg, vmalert.url)[0] == 0, "every group evaluated", timeout_s=30)
    finally:
        vmalert.stop()
        vm.stop()
