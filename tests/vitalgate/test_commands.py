"""Every command that reads ``--config`` gets it the one way (``vitalgate.commands.with_config``):
a config with problems stops it before it does anything, with every problem at its
``file:line:column`` and exit 1. Run as a user runs them: subprocesses."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.support.cli import vitalgate
from vitalgate.cli import build_parser

# What each command needs besides --config to get as far as reading it (argparse refuses a
# command line without its required options first, with exit 2).
REQUIRED: dict[tuple[str, ...], tuple[str, ...]] = {
    ("serve",): (),
    ("reload",): (),
    ("check",): (),
    ("slo", "status"): (),
    ("alerts", "generate"): ("--out", "{out}"),
    ("alerts", "verify"): ("--prometheus-url", "http://127.0.0.1:9"),
    ("dashboards", "generate"): ("--out", "{out}"),
    ("dashboards", "publish"): ("--grafana-url", "http://127.0.0.1:9"),
    ("report",): ("--facility", "st-marys", "--period", "2026-10", "--out", "{out}/r.pdf"),
    ("store", "import"): ("--access-log", "{out}/access.log"),
    ("audit", "verify"): (),
    ("audit", "search"): (),
    ("audit", "export"): ("--out", "{out}/audit.json"),
}


def _config_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path whose parser has a ``--config`` option, read from the parser."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.extend(_config_commands(child, (*prefix, name)))
        elif "--config" in action.option_strings:
            found.append(prefix)
    return found


def test_the_table_names_every_command_that_reads_a_config() -> None:
    assert sorted(_config_commands(build_parser())) == sorted(REQUIRED)


@pytest.fixture(scope="module")
def bad_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "gateway.yaml"
    path.write_text(
        'version: 1\nlisten: "nowhere"\nupstreams: {}\nroutes: []\nslos: missing.yaml\ncolour: 1\n'
    )
    return path


@pytest.mark.slow  # (13 processes)
@pytest.mark.parametrize("command", sorted(REQUIRED), ids=" ".join)
def test_a_bad_config_stops_the_command_with_every_problem(
    command: tuple[str, ...], bad_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    extra = [a.replace("{out}", str(out)) for a in REQUIRED[command]]
    proc = vitalgate(*command, "--config", str(bad_config), *extra, check=False, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert f"{bad_config}:2:9: listen: must be host:port, such as 127.0.0.1:8080 (got 'nowhere')" in lines
    assert f"{bad_config}:6:1: colour: unknown field" in lines
    assert any(line.startswith(f"{bad_config.parent / 'missing.yaml'}") for line in lines), lines
    assert lines[-1] == "vitalgate: 3 problems in configuration"
    assert proc.stdout == ""
    assert not out.exists()  # nothing of the command ran
