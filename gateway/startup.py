"""Start-up failures that name the setting: ``listen: 127.0.0.1:8080: address already in use``,
not ``[Errno 98] ...``. What the operator must change is the first word of the message."""

from __future__ import annotations

import os
import sqlite3
import ssl


class StartupError(Exception):
    """The gateway cannot start because of ``setting`` (its dotted path in gateway.yaml), whose
    value is ``value`` (an address, a file)."""

    def __init__(self, setting: str, value: str, reason: str) -> None:
        super().__init__(f"{setting}: {value}: {reason}")
        self.setting = setting
        self.value = value
        self.reason = reason


def reason(exc: BaseException) -> str:
    """What went wrong, without the errno number or the call that failed (``address already in
    use``, ``permission denied``, ``unable to open database file``)."""
    if isinstance(exc, ssl.SSLError):
        return f"not a usable PEM certificate and key: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, sqlite3.Error):
        return str(exc)
    return str(exc) or type(exc).__name__


def store_failure(path: str, exc: BaseException) -> StartupError:
    """``telemetry.store.path: PATH: reason``; a store message that starts with the path (the
    store's own errors do) is not repeated."""
    text = reason(exc)
    if text.startswith(f"{path}: "):
        text = text[len(path) + 2 :]
    where = getattr(exc, "filename", None)
    if isinstance(exc, FileExistsError) and where is not None:  # (makedirs met a file)
        text = f"{where} is not a directory"
    elif isinstance(exc, OSError) and where is not None and str(where) != path:
        text = f"{where}: {text}"  # (the directory or the lock file beside the store)
    return StartupError("telemetry.store.path", path, text)
