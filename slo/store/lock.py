"""The one writer's claim on a store file."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from slo.store.errors import StoreError


class StoreLock:
    """The one writer's claim on a store file: ``<store>.lock``, locked exclusively (flock) for
    as long as the gateway (or its supervisor) runs, with the holder's pid in it.

    Two gateways given one store would each keep their own in-memory minutes and overwrite each
    other's rows; the second is refused at start-up instead, naming the first."""

    def __init__(self, store_path: str | Path) -> None:
        self.path = Path(f"{store_path}.lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"{store_path}: in use by another vitalgate process (pid {holder}); two gateways"
                " cannot share one store file (give each its own telemetry.store.path)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
