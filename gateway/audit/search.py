"""Which AuditEvents a search asks for: by patient, user, facility and time (the CLI's
``vitalgate audit search|export`` and the admin API's ``/api/v1/audit`` read the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def parse_time(value: str | None) -> float | None:
    """ISO 8601 (UTC when it has no offset) as seconds since the epoch."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value!r} (such as 2026-11-30T08:00:00Z)") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class AuditQuery:
    patient: str | None = None
    user: str | None = None
    facility: str | None = None
    since_s: float | None = None
    until_s: float | None = None

    @classmethod
    def of(
        cls, patient: str | None, user: str | None, facility: str | None, since: str | None, until: str | None
    ) -> AuditQuery:
        return cls(patient, user, facility, parse_time(since), parse_time(until))

    def matches(self, event: dict[str, Any], t_ms: int) -> bool:
        t = t_ms / 1000
        if (self.since_s is not None and t < self.since_s) or (
            self.until_s is not None and t >= self.until_s
        ):
            return False
        if self.patient is not None:
            refs = {e.get("what", {}).get("reference") for e in event.get("entity", [])}
            if f"Patient/{self.patient}" not in refs:
                return False
        if self.user is not None:
            users = {
                a.get("who", {}).get("identifier", {}).get("value")
                for a in event.get("agent", [])
                if a.get("requestor")
            }
            if self.user not in users:
                return False
        return self.facility is None or event.get("source", {}).get("site") == self.facility
