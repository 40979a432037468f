from collections.abc import AsyncIterator

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
