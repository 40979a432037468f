"""The upstream client's waits: a request's total timeout bounds its wait for a pooled
connection, and a body that arrived with the head does not stall the gathering of the rest."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.dataplane.errors import UpstreamPoolExhausted
from tests.gateway.test_upstream_client import AioUpstream, client, fetch, read_all, read_head, scripted


async def test_the_pool_wait_ends_with_the_total_timeout() -> None:
    async with AioUpstream() as srv:
        up = client(srv.port, timeout={"total": "1s"}, max_connections=1)  # timeout.pool: 10 s
        try:
            held = await up.send("GET", "/ok", {}, None)  # its body unread: the connection held
            t0 = time.monotonic()
            with pytest.raises(UpstreamPoolExhausted, match=r"within 1 s \(max_connections: 1\)"):
                await fetch(up, "GET", "/ok")
            assert time.monotonic() - t0 < 2  # not the 10 s of timeout.pool
            await read_all(held)
            assert (await fetch(up, "GET", "/ok"))[0] == 200
        finally:
            await up.close()


async def test_a_body_that_came_with_the_head_is_gathered_whole() -> None:
    size = 3 * 1024 * 1024
    body = bytes(i % 251 for i in range(size))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        # Head and 512 KiB at once (more than the client reads ahead before it pauses), then
        # the rest once the client asks for more.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body[: 512 * 1024])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(body[512 * 1024 :])
        await writer.drain()

    async with scripted(answer) as (port, _):
        up = client(port, timeout={"total": "3s"})
        try:
            resp = await up.send("GET", "/big", {}, None)
            await asyncio.sleep(0.2)  # a busy loop: the first bytes of the body are in by now
            await resp.gather(4 * 1024 * 1024)
            assert resp.complete
            assert await read_all(resp) == body
        finally:
            await up.close()
