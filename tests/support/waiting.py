"""Waiting on a condition instead of sleeping a fixed time: a test is as quick as the machine
allows and, on a loaded one, waits longer rather than failing."""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable

POLL_S = 0.05
"""How often a condition is checked: short beside any wait the tests make, long enough not to
load the process being watched."""


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Return once ``predicate()`` holds (checked every 50 ms); fail naming ``what`` if it does
    not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(POLL_S)


async def wait_until_async(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = 20.0
) -> None:
    """``wait_until`` for a test on an event loop: the loop keeps serving the peers (or the
    in-process gateway) that make the condition come true. ``predicate`` may be a coroutine
    function, for a check that itself does I/O (``asyncio.to_thread`` for a blocking one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(POLL_S)


def wait_ready(url: str, what: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            # Not listening yet (refused) or not ready (503): the normal state while it starts.
            time.sleep(0.1)
    raise TimeoutError(f"{what} not ready at {url}")


def listening(port: int) -> bool:
    """Does something accept connections on this loopback port yet?"""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False  # refused: not listening yet, the state being waited out
