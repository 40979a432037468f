"""The ``admin`` section of ``gateway.yaml``: the admin listener's address and its tokens.

Its own module, free of aiohttp, so that ``vitalgate check`` validates the section without
importing the admin listener it configures.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator

from core.configfile import DurationS, ListenAddr, StrictModel


class TokenConfig(StrictModel):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["sre", "engineer", "account_manager", "auditor"]
    """``auditor``: the audit trail (``/api/v1/audit``) only; no other role may read it."""
    facilities: list[str] = Field(default_factory=list)


class StatusBackendConfig(StrictModel):
    """Where ``/api/v1/slo``, the status pages and the report downloads read their figures
    when not from this gateway's embedded store: a Prometheus (or VictoriaMetrics, Thanos,
    Mimir) that scrapes every replica, so that each replica serves the fleet's figures."""

    prometheus_url: str
    source: Literal["auto", "recorded", "raw"] = "auto"
    """As ``slo status --source``: the rules' tiles, the raw counters, or the tiles where they
    cover the window."""
    timeout: DurationS = 30.0

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return v


class SessionsConfig(StrictModel):
    """Browser sessions (``/ui/sign-in``): a token exchanged for a cookie naming a session held
    in the admin process's memory (a restart signs everyone out)."""

    max_age: DurationS = Field(default=8 * 3600.0, ge=1)
    """A session ends this long after its sign-in, used or not (at least 1s: the cookie's
    ``Max-Age`` is in whole seconds)."""
    max_count: int = Field(default=1000, ge=1)
    """Sessions held at once; a sign-in beyond it ends the oldest session."""


class AdminConfig(StrictModel):
    listen: ListenAddr = "127.0.0.1:9464"
    tokens: list[TokenConfig] = Field(default_factory=list)
    protect_metrics: bool = False
    """Also require a token for /metrics, /healthz and /readyz."""
    status_backend: StatusBackendConfig | None = Field(
        default=None, validation_alias=AliasChoices("status_backend", "status_source")
    )
    """Serve status and reports from Prometheus instead of the embedded store. Also accepted
    under its first name, ``status_source`` (the count readers are backends everywhere now)."""
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "status_backend" in data and "status_source" in data:
            raise ValueError("status_source is the old name of status_backend: give only status_backend")
        return data
