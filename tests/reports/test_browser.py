"""The status pages in a real browser (Debian's chromium, headless): content and screenshots.
Screenshots are saved as test artifacts (test-artifacts/, or VITALGATE_TEST_ARTIFACTS)."""

import os
from pathlib import Path

from tests import slos
from tests.support.browser import chromium
from tests.support.gateway import StartGateway, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import fetch, live_total
from tests.support.services import require_binary
from tests.support.waiting import wait_until

SLOS = slos.BROWSER


def test_status_pages_render_in_chromium(
    tmp_path: Path, peers: BackgroundPeers, gateway_process: StartGateway
) -> None:
    browser = require_binary("chromium")
    artifacts = Path(os.environ.get("VITALGATE_TEST_ARTIFACTS", "test-artifacts")).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        slos=SLOS,
        extra={"telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}}},
    )
    gw = gateway_process(cfg)
    for i in range(60):
        fac = ["st-marys", "riverside", "lakeside"][i % 3]
        headers = {"X-Facility-ID": fac}
        if fac == "riverside" and i % 2:
            headers["X-Test-Fault"] = "500"
        fetch(gw.proxy + "/fhir/Patient/1", headers)
    wait_until(lambda: live_total(gw.admin, "fhir-availability", "*") == 60, "flushed to the store")
    fleet = chromium(browser, tmp_path / "p1", "--dump-dom", gw.admin + "/ui")
    assert "vitalgate: fleet" in fleet
    for name in ("St Mary", "Riverside", "Lakeside", "fhir-availability"):
        assert name in fleet
    assert 'class="alert-page"' in fleet  # riverside is failing half its requests
    page = chromium(browser, tmp_path / "p2", "--dump-dom", gw.admin + "/ui/facilities/riverside")
    assert "Daily SLI, last 90 days" in page
    assert page.count('<span class="') >= 90  # the calendar cells
    assert "/api/v1/reports/riverside/" in page and ".pdf" in page
    for name, url, size in (
        ("fleet-desktop.png", gw.admin + "/ui", "1280,800"),
        ("facility-desktop.png", gw.admin + "/ui/facilities/riverside", "1280,1000"),
        ("facility-phone.png", gw.admin + "/ui/facilities/riverside", "390,844"),
    ):
        shot = artifacts / name
        shot.unlink(missing_ok=True)
        chromium(
            browser,
            tmp_path / f"shot-{name}",
            f"--screenshot={shot}",
            f"--window-size={size}",
            "--hide-scrollbars",
            url,
        )
        assert shot.stat().st_size > 5000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
