"""Which AuditEvents a search asks for: by patient, user, facility and time (the CLI's
``vitalgate audit search|export`` and the admin API's ``/api/v1/audit`` read the same way)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    """The patient's id; ``Patient/pat-1`` (as the table prints it) and an absolute reference
    are taken as ``pat-1``."""
    user: str | None = None
    facility: str | None = None
    since_s: float | None = None
    until_s: float | None = None

    def __post_init__(self) -> None:
        if self.patient is not None:
            object.__setattr__(self, "patient", events.patient_id(self.patient))

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


OUTCOMES = {
    "0": "success",
    "4": "minor failure",
    "8": "serious failure",
    "12": "major failure",
}
"""AuditEvent.outcome (FHIR R4's audit-event-outcome, as BALP uses it), in words."""
OUTCOME_CAUSES = {
    "0": "2xx/3xx",
    "4": "the client's 4xx",
    "8": "the upstream's 5xx",
    "12": "the gateway failed the request",
}


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 AuditEvent``, ``2 AuditEvents`` (``plural`` when it is not the noun with an s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def outcome_legend() -> str:
    """The outcome codes explained, one a line (``   0 success (2xx/3xx)`` ...)."""
    return "\n".join(f"  {code:>2} {OUTCOMES[code]} ({OUTCOME_CAUSES[code]})" for code in OUTCOMES)


@dataclass(frozen=True)
class Summary:
    """An AuditEvent in one line: what the CLI's table and CSV print (and a page can show)."""

    recorded: str
    facility: str
    """The facility (``source.site``), or ``-`` for a read of the trail itself."""
    interaction: str
    outcome: str
    patient: str
    """``Patient/{id}``, or ``-``."""
    user: str
    """Who asked: the user's id, ``unverified (reason)``, an admin token's name or the
    gateway's own agent (``vitalgate-probe``), with what it is in parentheses."""
    user_id: str
    """The requestor's identifier alone: what ``--user`` (``user=``) matches; for an
    unverified user, the SHA-256 of the token it sent (``none`` without one)."""
    id: str

    @property
    def outcome_text(self) -> str:
        return OUTCOMES.get(self.outcome, "unknown")


def _who(event: dict[str, Any]) -> tuple[str, str]:
    """The requestor, as a person reads it and as its identifier alone."""
    agent: dict[str, Any] = next((a for a in event.get("agent", []) if a.get("requestor")), {})
    who = agent.get("who", {})
    ident = who.get("identifier", {})
    system, value = ident.get("system"), str(ident.get("value", "?"))
    if system == events.UNVERIFIED:
        return str(who.get("display", "unverified")), value
    if system == events.ADMIN_USERS:
        return f"{value} (admin token)", value
    if system == events.SYSTEM_AGENTS:
        return f"{value} (gateway system agent)", value
    return value, value


def summary(event: dict[str, Any]) -> Summary:
    """The one-line summary of any AuditEvent the trail renders (every record kind)."""
    patient = next(
        (
            str(e["what"]["reference"])
            for e in event.get("entity", [])
            if e.get("role", {}).get("code") == "1" and "reference" in e.get("what", {})
        ),
        "-",
    )
    subtype = (event.get("subtype") or [{}])[0].get("code", "?")
    if any(e.get("what", {}).get("display") == "AuditEvent" for e in event.get("entity", [])):
        subtype = events.TRAIL_READ  # a search of the trail itself (/api/v1/audit)
    user, user_id = _who(event)
    return Summary(
        recorded=str(event.get("recorded", "?")),
        facility=str(event.get("source", {}).get("site", "-")),
        interaction=str(subtype),
        outcome=str(event.get("outcome", "?")),
        patient=patient,
        user=user,
        user_id=user_id,
        id=str(event.get("id", "")),
    )
