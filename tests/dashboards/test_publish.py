"""`vitalgate dashboards publish` against a recorded-contract fake of Grafana's HTTP API
(tests/fakegrafana.py): no Grafana server can be installed here."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.fakegrafana import EDITOR, VIEWER, FakeGrafana
from tests.support.cli import vitalgate
from tests.support.peers import BackgroundPeers
from vitalgate.peers import free_port

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "alerts"


@pytest.fixture
def grafana(peers: BackgroundPeers) -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()
    port = free_port()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(fake.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = peers.run(start())
    yield fake, f"http://127.0.0.1:{port}"
    peers.run(runner.cleanup())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((GOLDEN / "gateway.yaml").read_text())
    cfg["dashboards"] = {"folder_teams": {"riverside": "riverside-account-managers"}}
    (tmp_path / "slos.yaml").write_text((GOLDEN / "slos.yaml").read_text())
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def publish(config: Path, url: str, token: str | None, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRAFANA_TOKEN"}
    if token is not None:
        env["GRAFANA_TOKEN"] = token
    return vitalgate(
        "dashboards",
        "publish",
        "--config",
        str(config),
        "--grafana-url",
        url,
        *extra,
        check=False,
        timeout=120,
        env=env,
    )


def test_publish_creates_folders_and_dashboards_then_is_idempotent(
    grafana: tuple[FakeGrafana, str], config: Path
) -> None:
    fake, url = grafana
    first = publish(config, url, EDITOR)
    assert first.returncode == 0, first.stderr
    assert "Grafana 11.3.0" in first.stdout
    assert sorted(fake.folders) == [
        "vg-fleet",
        "vg-folder-lakeside",
        "vg-folder-riverside",
        "vg-folder-st-marys",
    ]
    assert fake.folders["vg-folder-st-marys"]["title"] == "St Mary's"
    assert len(fake.dashboards) == 9
    assert fake.dashboards["vg-facility-riverside"]["meta"]["folderUid"] == "vg-folder-riverside"
    assert fake.dashboards["vg-fleet"]["meta"]["folderUid"] == "vg-fleet"
    assert fake.permissions == {"vg-folder-riverside": [{"teamId": 7, "permission": 1}]}
    assert fake.requests[0] == ("GET", "/api/frontend/settings")  # health check first
    writes = len(fake.writes())

    again = publish(config, url, EDITOR)
    assert again.returncode == 0, again.stderr
    assert "published: 1 changes, 13 unchanged" in again.stdout  # only the (idempotent) permission grant
    assert len(fake.writes()) == writes + 1
    assert all(d["dashboard"]["version"] == 1 for d in fake.dashboards.values())


def test_dry_run_changes_nothing(grafana: tuple[FakeGrafana, str], config: Path) -> None:
    fake, url = grafana
    proc = publish(config, url, EDITOR, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "create    folder     vg-folder-riverside" in proc.stdout
    assert "create    dashboard  vg-fleet" in proc.stdout
    assert "dry run: 14 changes not made" in proc.stdout
    assert fake.writes() == []


def test_errors_are_clear_and_exit_non_zero(grafana: tuple[FakeGrafana, str], config: Path) -> None:
    fake, url = grafana
    bad = publish(config, url, "not-a-token")
    assert bad.returncode == 1
    assert "rejected the token (401)" in bad.stderr and "GRAFANA_TOKEN" in bad.stderr
    viewer = publish(config, url, VIEWER)
    assert viewer.returncode == 1
    assert "(403)" in viewer.stderr and "Editor role" in viewer.stderr
    missing = publish(config, url, None)
    assert missing.returncode == 2 and "set GRAFANA_TOKEN" in missing.stderr
    wrong_base = publish(config, url + "/not-grafana", EDITOR)
    assert (
        wrong_base.returncode == 1
        and "is http" in wrong_base.stderr
        and "the Grafana base URL" in wrong_base.stderr
    )
    refused = publish(config, f"http://127.0.0.1:{free_port()}", EDITOR)
    assert refused.returncode == 1 and "cannot reach Grafana" in refused.stderr
    assert "Traceback" not in bad.stderr + viewer.stderr + refused.stderr + wrong_base.stderr
    assert fake.dashboards == {}


def test_server_errors_are_retried(grafana: tuple[FakeGrafana, str], config: Path) -> None:
    fake, url = grafana
    fake.fail_next = [503, 502]
    proc = publish(config, url, EDITOR)
    assert proc.returncode == 0, proc.stderr
    assert len(fake.dashboards) == 9
    fake.fail_next = [503] * 20
    proc = publish(config, url, EDITOR)
    assert proc.returncode == 1 and "kept failing (503)" in proc.stderr
