"""``contains(data, needle)``: a byte search over response bodies.

The C extension ``gateway.dataplane._memscan`` (built with the compiled request path) searches with
glibc's ``memmem``, several times faster than ``needle in data`` on FHIR JSON; without it (a
pure-Python install) the same question is answered by ``in``.
"""

from __future__ import annotations


def _contains(data: bytes, needle: bytes, /) -> bool:
    return needle in data


try:
    from gateway.dataplane._memscan import contains
except ModuleNotFoundError:  # VITALGATE_PURE_PYTHON=1: nothing was compiled
    contains = _contains

__all__ = ["contains"]
