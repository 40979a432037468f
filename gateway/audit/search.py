"""Which AuditEvents a search asks for: by patient, user, facility and time (the CLI's
``vitalgate audit search|export`` and the admin API's ``/api/v1/audit`` read the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.audit import events
from gateway.audit.verify import Record


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

    def matches(self, record: Record) -> bool:
        """Decided on the stored facts: a search renders only the events it returns."""
        t = record.t_ms / 1000
        if (self.since_s is not None and t < self.since_s) or (
            self.until_s is not None and t >= self.until_s
        ):
            return False
        f = record.fields
        if self.patient is not None and events.patient_of(f) != self.patient:
            return False
        if self.user is not None and events.user_of(f) != self.user:
            return False
        return self.facility is None or events.site_of(f) == self.facility
