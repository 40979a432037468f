"""What a gateway process is (the only one, a worker, or the workers' supervisor), and how a
worker tells its supervisor it is up. Shared by ``gateway.server`` and ``gateway.workers``
so that neither imports the other's internals: the supervisor builds a ``Gateway``; a
``Gateway`` never needs the supervisor."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Role:
    """What this process is: the only one, one of ``count`` workers, or their supervisor.

    Workers each bind the proxy port with SO_REUSEPORT (the kernel spreads
    connections over them) and serve no admin listener; the supervisor serves
    the admin listener, with /metrics summed over every worker's metric files."""

    kind: Literal["single", "worker", "supervisor"] = "single"
    index: int = 0
    count: int = 1
    port: int | None = None
    """The proxy port every worker binds (the supervisor resolves a configured port 0)."""
    metrics_dir: str | None = None


def ready_file(metrics_dir: str, index: int) -> Path:
    return Path(metrics_dir) / f"worker-{index}.ready"


def mark_ready(metrics_dir: str, index: int) -> None:
    path = ready_file(metrics_dir, index)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)
