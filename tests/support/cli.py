"""The ``vitalgate`` command as a user runs it: a child process, text output captured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def vitalgate(
    *args: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `vitalgate` command as a user would; text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "vitalgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env=env,
    )


def slo_status(config: Path, *extra: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`vitalgate slo status --format json` as a user runs it, keyed by (slo, facility)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitalgate",
            "slo",
            "status",
            "--config",
            str(config),
            "--format",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return {(r["slo"], r["facility"]): r for r in json.loads(proc.stdout)["slos"]}
