"""Back-pressure for the gateway's asyncio protocols (the proxy listener and the upstream client).

asyncio tells a protocol when its transport's write buffer is full
(``pause_writing``) and drained (``resume_writing``); a writer awaits
``drain()`` between chunks so a slow peer holds back the sender instead of
filling memory. Reading is paused while the protocol holds more than it was
asked for. (asyncio's own helper for this is private to its streams module.)
"""

from __future__ import annotations

import asyncio
from typing import Any, cast


def wake(fut: asyncio.Future[Any] | None, value: Any = None) -> None:
    """Resolve a waiter that may be absent or already done."""
    if fut is not None and not fut.done():
        fut.set_result(value)


class FlowControlled(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        wake(self._drain_waiter)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        wake(self._drain_waiter)

    def must_drain(self) -> bool:
        """Whether ``drain()`` has anything to do (callers skip the coroutine when not)."""
        return self._write_paused or self.transport is None

    async def drain(self) -> None:
        """Wait while the write buffer is full; raise if the connection is gone."""
        if self._write_paused and self.transport is not None:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
        if self.transport is None:
            raise ConnectionResetError("connection closed")

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
