"""The gateway's own diagnostics (start-up, drain, worker restarts, store and export errors):
``logging`` records written to stderr as JSON lines, one event per line with its level.

The access log is something else (``gateway/dataplane/accesslog.py``: one line per request,
on stdout or a file). Library code only logs; the command that runs a gateway calls
``configure`` once, so importing a module never changes how the process logs.

Third-party libraries (matplotlib, fontTools and weasyprint while a report renders, aiohttp,
...) are heard at WARNING and above only, whatever the level: their INFO and DEBUG records
(font subsetting, glyph caches) say nothing an operator can act on, and a report download
would otherwise write dozens of them into the gateway's log.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any

OWN_PACKAGES = frozenset({"gateway", "slo", "alerts", "dashboards", "reports", "vitalgate", "__main__"})
"""Top-level logger names logged at the configured level; every other logger at THIRD_PARTY_LEVEL."""
THIRD_PARTY_LEVEL = logging.WARNING

# Attributes every LogRecord has: anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonLines(logging.Formatter):
    """``{"timestamp", "level", "logger", "message", ...extra fields, exception.*}``.

    The exception fields follow OpenTelemetry's (``exception.type``, ``exception.message``,
    ``exception.stacktrace``); a record's ``extra=`` fields are added as they are."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "timestamp": ts.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            out["exception.type"] = type(exc).__qualname__
            out["exception.message"] = str(exc)
            out["exception.stacktrace"] = "".join(traceback.format_exception(exc))
        return json.dumps(out, default=str, ensure_ascii=False)


class QuietThirdParty(logging.Filter):
    """Passes this project's records, and other loggers' at THIRD_PARTY_LEVEL or above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= THIRD_PARTY_LEVEL or record.name.partition(".")[0] in OWN_PACKAGES


def configure(stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send this project's records at ``level`` or above, and third-party libraries' at
    THIRD_PARTY_LEVEL or above, to ``stream`` (stderr) as JSON lines; replaces a handler an
    earlier call installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, JsonLines):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLines())
    handler.addFilter(QuietThirdParty())
    root.addHandler(handler)
    root.setLevel(level)
    return handler
