"""Durations as written in config files: ``300ms``, ``2s``, ``5m``, ``1h``, ``30d``, ``1w``.

Parsed once when a config is loaded; the rest of the code works in seconds
(``*_s`` names) and never re-parses strings.
"""

from __future__ import annotations

import re

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration_s(text: str) -> float:
    """Return the duration in seconds; ``1h30m`` is allowed. Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"must be a duration such as '300ms', '2s' or '30d' (got {text!r})")
    s = text.strip()
    pos = 0
    total = 0.0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    if pos != len(s) or not s:
        raise ValueError(f"must be a duration such as '300ms', '2s' or '30d' (got {text!r})")
    return total


def format_duration(seconds: float) -> str:
    """The shortest config spelling of a duration (``300ms``, ``5m``, ``30d``)."""
    if seconds < 1 or seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"
