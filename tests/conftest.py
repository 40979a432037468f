"""Set-up every test package shares: the peers a gateway talks to, a gateway child process,
and the rules of the run (what counts as slow, no skips in CI, no stale compiled code)."""

import os
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import GatewayProcess, StartGateway
from tests.support.peers import BackgroundPeers, Upstream, start_sink
from vitalgate.otlpsink import OtlpSink

PROCESS_FIXTURES = frozenset({"peers", "module_peers", "gateway_process"})
"""Fixtures that start a gateway process or the peers one talks to: a test using one is
``slow`` (left out of the developer's loop, ``pytest -m "not slow"``; ``make test`` runs it)."""


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    await up.stop()


@pytest.fixture
async def sink() -> AsyncIterator[tuple[OtlpSink, int]]:
    s = OtlpSink()
    runner, port = await start_sink(s)
    yield s, port
    await runner.cleanup()


@pytest.fixture
def peers() -> Iterator[BackgroundPeers]:
    """A test upstream and an OTLP sink on a thread of their own, for a synchronous test that
    runs the gateway as a child process."""
    with BackgroundPeers() as background:
        yield background


@pytest.fixture(scope="module")
def module_peers() -> Iterator[BackgroundPeers]:
    """``peers`` shared by a module's tests, for a module-scoped fixture that runs one gateway
    for all of them."""
    with BackgroundPeers() as background:
        yield background


@pytest.fixture
def gateway_process() -> Iterator[StartGateway]:
    """Start ``vitalgate serve`` children (arguments as ``GatewayProcess``); any still running
    when the test ends is stopped, so a failed assertion never leaves one behind. A test that
    checks how the gateway stops calls ``terminate()`` itself."""
    started: list[GatewayProcess] = []

    def start(config_path: Path, **options: Any) -> GatewayProcess:
        gw = GatewayProcess(config_path, **options)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that uses a process fixture (through any of its fixtures); a
    test that starts a process inline carries ``@pytest.mark.slow`` itself, or its module
    ``pytestmark`` (tests/test_markers.py checks)."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """With VITALGATE_REQUIRE_PROMETHEUS set (CI), a skipped test is a failed one: CI must prove
    every test, whatever made it skip."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("VITALGATE_REQUIRE_PROMETHEUS"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but VITALGATE_REQUIRE_PROMETHEUS=1 forbids skips: {report.longrepr}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Never test old code: a request-path module edited after it was compiled would be shadowed
    by its extension (Python imports the .so first)."""
    from gateway.native import build

    stale = build().stale
    if stale:
        pytest.exit(
            f"{', '.join(stale)} changed after compiling; run `make install` (compile again) "
            "or `make pure` (run from source)",
            returncode=4,
        )
