"""The ``admin`` section of ``gateway.yaml``: the admin listener's address and its tokens.

Its own module, free of aiohttp, so that ``vitalgate check`` validates the section without
importing the admin listener it configures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slo.configfile import ListenAddr, StrictModel


class TokenConfig(StrictModel):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["sre", "engineer", "account_manager", "auditor"]
    """``auditor``: the audit trail (``/api/v1/audit``) only; no other role may read it."""
    facilities: list[str] = Field(default_factory=list)


class AdminConfig(StrictModel):
    listen: ListenAddr = "127.0.0.1:9464"
    tokens: list[TokenConfig] = Field(default_factory=list)
    protect_metrics: bool = False
    """Also require a token for /metrics, /healthz and /readyz."""
