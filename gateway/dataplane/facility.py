"""Which facility a request belongs to, as a bounded label value.

Sources are tried in the configured order: a header, a path segment (URL
partition, as in HAPI FHIR), or a JWT claim. A JWT is decoded without
verification: the claim only chooses a label, it grants nothing. Only a
configured (``known``) facility id becomes a label; any other value, present
or not, is ``unknown`` and is never recorded as written.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Final, Protocol

from core.conventions import UNKNOWN_FACILITY
from gateway.dataplane.settings import FacilitySettings

UNKNOWN: Final = UNKNOWN_FACILITY


class HeaderLookup(Protocol):
    """Case-insensitive header access: a CIMultiDict, or the proxy server's ``Headers``."""

    def get(self, name: str, /) -> str | None: ...


_MAX_JWT: Final = 8192


def jwt_claim(authorization: str | None, claim: str) -> str | None:
    """The string value of ``claim`` in a bearer JWT's payload, unverified; None if absent."""
    if not authorization or len(authorization) > _MAX_JWT:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    value = claims.get(claim) if isinstance(claims, dict) else None
    return value if isinstance(value, str) else None


class FacilityResolver:
    """Built once from config; ``resolve`` is called per request."""

    def __init__(self, cfg: FacilitySettings) -> None:
        self._known = frozenset(cfg.known)
        # Case-insensitive headers; ids compared lower-cased so "St-Marys" still attributes.
        self._sources = [(s.header, s.path_segment, s.jwt_claim) for s in cfg.sources]
        self.path_segment = next((s.path_segment for s in cfg.sources if s.path_segment is not None), None)

    @property
    def known(self) -> frozenset[str]:
        return self._known

    def resolve(self, headers: HeaderLookup, path: str) -> str:
        for header, segment, claim in self._sources:
            value: str | None
            if header is not None:
                value = headers.get(header)
            elif segment is not None:
                parts = path.split("/")
                value = parts[segment + 1] if segment + 1 < len(parts) else None
            else:
                value = jwt_claim(headers.get("Authorization"), claim or "")
            if value:
                value = value.strip().lower()
                return value if value in self._known else UNKNOWN
        return UNKNOWN
