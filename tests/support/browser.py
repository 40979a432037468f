"""Headless Chromium as the tests run it: one set of flags for every page a test opens."""

from __future__ import annotations

import subprocess
from pathlib import Path

HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--no-first-run",
    # This machine's network is closed: Chromium's own background connections would be
    # refused at every start, and slow it.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


def chromium(binary: str, profile: Path, *args: str) -> str:
    """Run headless Chromium once with a fresh profile (``--dump-dom``, ``--screenshot``...);
    its standard output."""
    proc = subprocess.run(
        [binary, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout
