import os
from collections.abc import AsyncIterator, Generator

import pytest

from tests.helpers import Upstream, start_sink
from vitalgate.otlpsink import OtlpSink


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
