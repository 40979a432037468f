"""The ``audit:`` section of ``gateway.yaml`` (pydantic only: ``vitalgate check`` reads it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from core.configfile import DurationS, Loc, Networks, Problem, Source, StrictModel
from gateway.audit.keys import AuditKeyError, read_data_key, read_signing_key

_YEAR_S = 365.25 * 86400


def retention_s(value: str) -> float:
    """``6y``, ``18m`` (months) or ``400d`` as seconds."""
    m = re.fullmatch(r"(\d{1,3})([ymd])", value)
    if not m:
        raise ValueError(
            f"must be a number of years, months or days, such as 6y, 18m or 400d (got {value!r})"
        )
    n, unit = int(m.group(1)), m.group(2)
    return n * {"y": _YEAR_S, "m": _YEAR_S / 12, "d": 86400.0}[unit]


def _retention(value: str) -> str:
    if retention_s(value) < 86400:
        raise ValueError("must be at least 1d")
    return value


class IdentityConfig(StrictModel):
    """Either a JWKS (``jwks_file`` or ``jwks_url``, with ``issuer`` and ``audience``), or a
    ``header`` an authenticating proxy sets, believed from ``trusted_sources`` only."""

    jwks_file: str | None = None
    jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    issuer: str | None = None
    audience: str | None = None
    refresh: DurationS = 300.0
    header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]+$")
    trusted_sources: Networks = Field(default_factory=list)

    @model_validator(mode="after")
    def _one(self) -> IdentityConfig:
        jwks = (self.jwks_file is not None) + (self.jwks_url is not None)
        if self.header is not None:
            if jwks:
                raise ValueError("either a JWKS (jwks_file or jwks_url) or a header, not both")
            if not self.trusted_sources:
                raise ValueError("a header identity needs trusted_sources (the proxy that sets it)")
            return self
        if jwks != 1:
            raise ValueError("exactly one of jwks_file, jwks_url or header is required")
        if not self.issuer or not self.audience:
            raise ValueError("a JWKS identity needs issuer and audience")
        return self


class ForwardConfig(StrictModel):
    """An audit repository: a FHIR server's base, to which AuditEvents are posted in batches."""

    url: str = Field(pattern=r"^https?://")
    batch_size: int = Field(default=100, ge=1, le=1000)
    interval: Annotated[DurationS, Field(gt=0, le=3600)] = 5.0
    timeout: Annotated[DurationS, Field(gt=0, le=300)] = 10.0
    ca_file: str | None = None
    token_file: str | None = None
    """A file holding the bearer token the repository wants (kept out of gateway.yaml)."""


class AuditConfig(StrictModel):
    path: str = "audit"
    key_file: str | None = None
    key_files: list[str] | None = Field(default=None, min_length=1)
    """For rotation: the first encrypts, every one decrypts what it wrote."""
    signing_key_file: str
    identity: IdentityConfig | None = None
    durability: Literal["batched", "strict"] = "batched"
    flush_interval: Annotated[DurationS, Field(gt=0, le=60)] = 1.0
    """``batched``: records reach the disk (fsync) at least this often: the loss window."""
    checkpoint_interval: Annotated[DurationS, Field(ge=1, le=3600)] = 60.0
    retention: Annotated[str, AfterValidator(_retention)] = "6y"
    max_queue: int = Field(default=100_000, ge=100, le=10_000_000)
    forward: ForwardConfig | None = None
    max_patients: int = Field(default=100, ge=1, le=10_000)
    """Patients recorded from one search's results; those past it are counted in the event."""

    @model_validator(mode="after")
    def _keys(self) -> AuditConfig:
        if (self.key_file is None) == (self.key_files is None):
            raise ValueError("exactly one of key_file or key_files is required")
        return self


def file_problems(audit: dict[str, Any], source: Source, base: Path) -> list[Problem]:
    """The audit section's key and JWKS files exist, are private where secret, and load."""
    problems: list[Problem] = []
    checks: list[tuple[Loc, Any, Any]] = [
        (("audit", "signing_key_file"), audit.get("signing_key_file"), read_signing_key)
    ]
    checks.append((("audit", "key_file"), audit.get("key_file"), read_data_key))
    keys = audit.get("key_files")
    if isinstance(keys, list):
        checks += [(("audit", "key_files", i), k, read_data_key) for i, k in enumerate(keys)]
    identity = audit.get("identity")
    if isinstance(identity, dict):
        checks.append((("audit", "identity", "jwks_file"), identity.get("jwks_file"), _read_jwks))
    forward = audit.get("forward")
    if isinstance(forward, dict):
        checks += [(("audit", "forward", k), forward.get(k), _exists) for k in ("ca_file", "token_file")]
    for loc, rel, load in checks:
        if not isinstance(rel, str):
            continue
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        try:
            load(path)
        except AuditKeyError as exc:
            problems.append(source.problem(loc, str(exc).replace(str(path), rel)))
    return problems


def _exists(path: Path) -> None:
    if not path.is_file():
        raise AuditKeyError(f"{path}: file not found")


def _read_jwks(path: Path) -> None:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise AuditKeyError(f"{path}: {exc.strerror or exc}") from None
    except ValueError:
        raise AuditKeyError(f"{path}: not JSON (a JWKS is a JSON object with 'keys')") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise AuditKeyError(f"{path}: a JWKS needs a non-empty 'keys' list")
