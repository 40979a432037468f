"""What a gateway process is (the only one, a worker, or the workers' supervisor), and how a
worker tells its supervisor it is up. Shared by ``gateway.server`` and ``gateway.workers``
so that neither imports the other's internals: the supervisor builds a ``Gateway``; a
``Gateway`` never needs the supervisor."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

WORKER_ENV = "VITALGATE_WORKER"
"""Set by the supervisor for its workers: ``index/count/port``."""
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's multiprocess folder, read by the library when it is first imported."""


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


def worker_role_from_env() -> tuple[int, int, int] | None:
    """``(index, count, port)`` when this process is a supervisor's worker."""
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    index, count, port = (int(x) for x in value.split("/"))
    return index, count, port


def prepare_metrics_dir() -> str:
    """A fresh folder for a ``--workers`` gateway's metric files, put in this process's
    environment, which its workers inherit. prometheus_client reads the variable once, when it
    is first imported, so this runs before anything imports it (client_python's documented
    contract; this module imports nothing that does). Raises RuntimeError if it was imported
    already: this process's counts would stay in memory, out of the sum."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError(
            f"prometheus_client was imported before {METRICS_DIR_ENV} was set: the supervisor's"
            " metrics would not be in the workers' folder"
        )
    path = tempfile.mkdtemp(prefix="vitalgate-metrics-")
    os.environ[METRICS_DIR_ENV] = path
    return path
