"""FHIR R4 AuditEvents for RESTful interactions, as IHE Basic Audit Log Patterns profile them.

One event per request, or, for a search whose results name patients, one per patient (BALP
wants each patient's accounting to find the query): the interaction from the method and the
route template, the patient from the path, its compartment or the ``patient``/``subject``
search parameters (and from the results), the user and client from the verified identity,
the client's network address, the trace id and ``X-Request-Id`` as the transaction.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from gateway.dataplane.auditrecord import FACTS_VERSION, REST, path_patients, rows

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ENTITY_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
TRACE_ID = "https://www.w3.org/TR/trace-context/#trace-id"
REQUEST_ID = "urn:ietf:params:http-header:X-Request-Id"
UNVERIFIED = "urn:vitalgate:audit:unverified-token-sha256"
ADMIN_USERS = "urn:vitalgate:admin-token-name"
SYSTEM_AGENTS = "urn:vitalgate:system-agent"
PROBE_AGENT = "vitalgate-probe"
"""The requestor of the gateway's own synthetic probes (``--user vitalgate-probe`` finds them)."""

ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
}
"""Everything else (searches, history, operations, batches, capabilities) executes: ``E``."""

PATIENT_PARAMETERS = ("patient", "subject", "patient:Patient", "subject:Patient")


@dataclass(frozen=True)
class Who:
    """The user behind a request, as far as it could be established."""

    user: str | None
    """``sub`` of a verified token, or the value of the trusted header."""
    issuer: str | None
    client: str | None
    """``azp`` or ``client_id`` of a verified token."""
    verified: bool
    token_sha256: str | None
    """Of an unverifiable bearer token: its SHA-256 (never the token itself)."""
    reason: str | None = None
    """Why the identity is unverified (``expired``, ``bad_signature``, ``no_credentials``...)."""

    def row(self) -> list[Any]:
        """The fields as a stored record holds them (``facts_of``)."""
        return [self.user, self.issuer, self.client, self.verified, self.token_sha256, self.reason]


PROBE_WHO = Who(PROBE_AGENT, None, None, True, None, None)
"""A probe's identity: the gateway's system agent, whatever credentials its request carries."""


@dataclass(frozen=True)
class Request:
    """One finished request on an audited route, with what the gateway saw of it."""

    recorded_s: float
    method: str
    path: str
    """The path as the client sent it (after normalisation), ids included."""
    query: str
    prefix: str
    route: str
    """The route template (``/fhir/Patient/{id}``)."""
    status: int
    error_type: str | None
    facility: str
    service: str
    upstream: str
    upstream_address: str
    peer: str | None
    forwarded_for: str | None
    trace_id: str
    request_id: str | None
    bundle_type: str | None = None
    """``batch`` or ``transaction`` of a Bundle posted to the base."""


def interaction(method: str, prefix: str, route: str, bundle_type: str | None) -> str:
    """The FHIR restful interaction of a request, from its method and route template."""
    rel = route[len(prefix) :] if route.startswith(prefix) else route
    parts = [p for p in rel.split("/") if p]
    last = parts[-1] if parts else ""
    if any(p.startswith("$") for p in parts):
        return "operation"
    if not parts:
        if method == "POST":
            return "transaction" if bundle_type == "transaction" else "batch"
        return "search-system"
    if parts == ["metadata"]:
        return "capabilities"
    if "_history" in parts:
        if last == "{vid}":
            return "vread"
        return {1: "history-system", 2: "history-type"}.get(len(parts), "history-instance")
    if last == "_search" or (len(parts) in (1, 3) and method == "GET"):
        return "search-system" if parts[0] == "_search" else "search-type"
    if len(parts) == 1:
        return "create" if method == "POST" else "search-type"
    return {"GET": "read", "HEAD": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, "operation"
    )


def _ids(path: str, prefix: str, route: str) -> list[tuple[str, str]]:
    """(resource type, id) pairs of the path, aligned with the template's ``{id}`` segments."""
    rel_t = route[len(prefix) :].split("/") if route.startswith(prefix) else []
    rel_p = path[len(prefix) :].split("/") if path.startswith(prefix) else []
    out = []
    for i, seg in enumerate(rel_t):
        if seg == "{id}" and i < len(rel_p) and i > 0:
            out.append((rel_t[i - 1], rel_p[i]))
    return out


@dataclass(frozen=True)
class Shape:
    """What a route template says about its requests' patients (the same for every request on
    it: the writer keeps one per method and template)."""

    patient_segments: tuple[int, ...]
    """Where ``Patient/{id}`` puts an id in the path after the prefix."""
    searches: bool
    """A search or history: its results may name patients."""


def shape(method: str, prefix: str, route: str) -> Shape:
    rel = route[len(prefix) :].split("/") if route.startswith(prefix) else []
    ids = tuple(i for i, seg in enumerate(rel) if seg == "{id}" and i > 0 and rel[i - 1] == "Patient")
    return Shape(ids, interaction(method, prefix, route, None).startswith(("search", "history")))


def query_patients(query: str) -> list[str]:
    """Patient ids the ``patient``/``subject`` search parameters of a query name."""
    found = []
    for name, value in parse_qsl(query, keep_blank_values=False):
        if name not in PATIENT_PARAMETERS:
            continue
        for v in value.split(","):
            if "/" not in v:
                found.append(v)  # a bare id: the parameter's target is Patient
            elif "Patient/" in v:  # Patient/1 or an absolute reference to one
                found.append(v.rpartition("Patient/")[2].split("/")[0])
    return list(dict.fromkeys(found))


def outcome_code(status: int, error_type: str | None) -> str:
    """0 success; 4 minor (the client's 4xx); 8 serious (the upstream's 5xx); 12 major (the
    gateway failed the request itself)."""
    if status < 400:
        return "0"
    if status < 500:
        return "4"
    gateway_faults = {"gateway_error", "shutdown", "overloaded", "audit_unavailable"}
    return "12" if error_type in gateway_faults else "8"


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def patient_id(reference: str) -> str:
    """A patient as a search names it: ``pat-1``, ``Patient/pat-1`` or an absolute reference
    (``https://fhir.example.org/Patient/pat-1``), as the id the trail stores."""
    value = reference.strip()
    return value.rpartition("Patient/")[2].split("/")[0] if "Patient/" in value else value


def _agents(req: Request, who: Who, action: str, probe: bool = False) -> list[dict[str, Any]]:
    client_net = req.forwarded_for or req.peer
    # BALP: on a read the client is the Destination (110152) and the server the Source
    # (110153); its query profile swaps the two, as DICOM does.
    query = action == "E"
    client_code, server_code = ("110153", "110152") if query else ("110152", "110153")
    client_name = "vitalgate synthetic probe" if probe else who.client or "unidentified client"
    client: dict[str, Any] = {
        "type": {"coding": [_coding(DCM, client_code, "Source Role ID" if query else "Destination Role ID")]},
        "who": {"display": client_name},
        "requestor": False,
    }
    if client_net:
        client["network"] = {"address": client_net, "type": "2"}
    server = {
        "type": {"coding": [_coding(DCM, server_code, "Destination Role ID" if query else "Source Role ID")]},
        "who": {"display": f"{req.service} ({req.upstream})"},
        "requestor": False,
        "network": {"address": req.upstream_address, "type": "1"},
    }
    if probe:
        # No person asked: the gateway itself did, as DICOM's "Application" (110150).
        system = {
            "type": {"coding": [_coding(DCM, "110150", "Application")]},
            "who": {
                "identifier": {"system": SYSTEM_AGENTS, "value": PROBE_AGENT},
                "display": "vitalgate (synthetic probe)",
            },
            "requestor": True,
        }
        return [system, client, server]
    user: dict[str, Any] = {
        "type": {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]},
        "requestor": True,
    }
    if who.verified and who.user:
        ident: dict[str, str] = {"value": who.user}
        if who.issuer:
            ident["system"] = who.issuer
        user["who"] = {"identifier": ident}
    else:
        user["who"] = {
            "identifier": {"system": UNVERIFIED, "value": who.token_sha256 or "none"},
            "display": f"unverified ({who.reason or 'no credentials'})",
        }
    return [user, client, server]


def _entities(req: Request, subtype: str, patient: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"system": TRACE_ID, "value": req.trace_id}},
            "type": _coding(ENTITY_TYPE, "2", "System Object"),
            "role": _coding(ENTITY_ROLE, "3", "Report"),
            "name": "transaction",
        }
    ]
    if req.request_id:
        out[0]["detail"] = [{"type": "X-Request-Id", "valueString": req.request_id}]
    for rtype, rid in _ids(req.path, req.prefix, req.route):
        if rtype == "Patient" and rid == patient:
            continue
        out.append(
            {
                "what": {"reference": f"{rtype}/{rid}"},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(ENTITY_ROLE, "4", "Domain Resource"),
            }
        )
    if subtype.startswith(("search", "history")):
        out.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(ENTITY_ROLE, "24", "Query"),
                "query": base64.b64encode(req.query.encode()).decode(),
            }
        )
    if patient is not None:
        out.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(ENTITY_ROLE, "1", "Patient"),
            }
        )
    return out


def _profile(subtype: str, action: str, patient: bool) -> str | None:
    """The BALP profile the event follows; None for operations, batches and capabilities,
    for which BALP defines no pattern."""
    if action == "E" and not subtype.startswith(("search", "history")):
        return None
    base = {"C": "Create", "R": "Read", "U": "Update", "D": "Delete"}.get(action, "Query")
    return BALP + ("Patient" + base if patient else base)


def trail_read(
    token: str,
    peer: str | None,
    query: str,
    recorded_s: float,
    observer: str = "vitalgate",
    denied: str | None = None,
) -> dict[str, Any]:
    """The AuditEvent of a read of the audit trail itself (``/api/v1/audit``, the audit page),
    by admin token; ``denied``: the reason it was refused (BALP records a failed access with
    outcome 4, minor failure)."""
    recorded = datetime.fromtimestamp(recorded_s, UTC).isoformat(timespec="milliseconds")
    client: dict[str, Any] = {
        "type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
        "who": {"display": "admin API client"},
        "requestor": False,
    }
    if peer:
        client["network"] = {"address": peer, "type": "2"}
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [BALP + "Query"]},
        "type": _coding(EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": [_coding(INTERACTION, "search-type", "search-type")],
        "action": "E",
        "recorded": recorded.replace("+00:00", "Z"),
        "outcome": "0" if denied is None else "4",
        "outcomeDesc": "read of the audit trail (/api/v1/audit)"
        if denied is None
        else f"refused read of the audit trail: {denied}",
        "agent": [
            {
                "type": {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]},
                "who": {"identifier": {"system": ADMIN_USERS, "value": token}},
                "requestor": True,
            },
            client,
        ],
        "source": {
            "observer": {"display": observer},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": [
            {
                "what": {"display": "AuditEvent"},
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(ENTITY_ROLE, "24", "Query"),
                "query": base64.b64encode(query.encode()).decode(),
            }
        ],
    }


def event_id(trace_id: str, index: int) -> str:
    """A stable id per event: the same request recorded twice (a forward retried) is the
    same AuditEvent, so an audit repository can take it idempotently."""
    digest = hashlib.sha256(f"{trace_id}:{index}".encode()).digest()[:16]
    return str(uuid.UUID(bytes=digest, version=4))


TRAIL_READ = "trail-read"
"""A record kind: a read of the trail through ``/api/v1/audit`` (``trail_read_facts``)."""
PROBE = "probe"
"""A record kind: a request of the gateway's own synthetic probe, laid out as a ``REST`` one."""
TRAIL_READ_DENIED = "trail-read-denied"
"""A record kind: a refused read of the trail by a known admin token (its fields are a
``TRAIL_READ``'s, the query's place holding the reason)."""
KINDS = (REST, PROBE, TRAIL_READ, TRAIL_READ_DENIED)
_TRAIL_KINDS = (TRAIL_READ, TRAIL_READ_DENIED)
_N_REQUEST = len(dataclasses.fields(Request))
_N_WHO = len(dataclasses.fields(Who))


def facts(req: Request, who: Who, found_patients: Sequence[str] = (), cut: int = 0) -> list[list[Any]]:
    """``facts_of`` a ``Request``."""
    base = [getattr(req, f.name) for f in dataclasses.fields(Request)]
    s = shape(req.method, req.prefix, req.route)
    named = path_patients(req.path, req.prefix, s.patient_segments)
    named += query_patients(req.query) if req.query else []
    return facts_of(base, who, [*named, *found_patients], cut)


def facts_of(base: list[Any], who: Who, patients: Sequence[str], cut: int) -> list[list[Any]]:
    """What the store keeps of one request (``base``: its fields in ``Request`` order): one
    record per AuditEvent (one per patient it touched, or one with none), each the request's
    and the user's facts, the patient, the event's index and, on the last, how many patients
    were cut. ``render`` turns a record into its AuditEvent: kept compact (some 300 bytes
    rather than 2 KB of JSON), a record costs the gateway a fraction of building the resource,
    and the rendering is a pure function of it."""
    return rows(base, who.row(), list(patients), cut)


def trail_read_facts(
    token: str, peer: str | None, query: str, recorded_s: float, denied: str | None = None
) -> list[Any]:
    """A read of the trail (``denied`` None), or a refused one with its reason (the query it
    asked is then not kept: it was not run)."""
    if denied is not None:
        return [FACTS_VERSION, TRAIL_READ_DENIED, recorded_s, token, peer, denied, str(uuid.uuid4())]
    return [FACTS_VERSION, TRAIL_READ, recorded_s, token, peer, query, str(uuid.uuid4())]


def patient_of(fields: list[Any]) -> str | None:
    # A read of the trail names no patient, even when it searched for one: else each read of
    # a patient's accounting would join it, and the next read would find the last.
    patient: str | None = fields[2 + _N_REQUEST + _N_WHO] if fields[1] not in _TRAIL_KINDS else None
    return patient


def user_of(fields: list[Any]) -> str | None:
    """The requestor's identifier value: the verified user, the admin token's name, the
    gateway's system agent (``vitalgate-probe``), or the unverified token's SHA-256 (``none``
    when it sent none)."""
    if fields[1] in _TRAIL_KINDS:
        return str(fields[3])
    who = fields[2 + _N_REQUEST : 2 + _N_REQUEST + _N_WHO]
    # As the AuditEvent's requestor says it (``_agents``): ``none`` for no token at all.
    return str(who[0]) if who[3] and who[0] else str(who[4] or "none")


def site_of(fields: list[Any]) -> str | None:
    site: str | None = fields[10] if fields[1] not in _TRAIL_KINDS else None
    return site


def render(fields: list[Any], observer: str = "vitalgate") -> dict[str, Any]:
    """The FHIR AuditEvent of a stored record."""
    if fields[0] != FACTS_VERSION:
        raise ValueError(f"an audit record of version {fields[0]!r} (this gateway reads {FACTS_VERSION})")
    if fields[1] not in KINDS:
        raise ValueError(f"an audit record of kind {fields[1]!r} (this gateway reads {', '.join(KINDS)})")
    if fields[1] in _TRAIL_KINDS:
        _, kind, t, token, peer, query, eid = fields
        if kind == TRAIL_READ_DENIED:
            event = trail_read(token, peer, "", t, observer, denied=query)
        else:
            event = trail_read(token, peer, query, t, observer)
        event["id"] = eid
        return event
    req = Request(*fields[2 : 2 + _N_REQUEST])
    who = Who(*fields[2 + _N_REQUEST : 2 + _N_REQUEST + _N_WHO])
    patient, i, cut = fields[2 + _N_REQUEST + _N_WHO :]
    return _event(req, who, patient, i, cut, observer, fields[1] == PROBE)


def _event(
    req: Request, who: Who, patient: str | None, i: int, cut: int, observer: str, probe: bool = False
) -> dict[str, Any]:
    subtype = interaction(req.method, req.prefix, req.route, req.bundle_type)
    action = ACTIONS.get(subtype, "E")
    recorded = datetime.fromtimestamp(req.recorded_s, UTC).isoformat(timespec="milliseconds")
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event_id(req.trace_id, i),
        "type": _coding(EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": [_coding(INTERACTION, subtype, subtype)],
        "action": action,
        "recorded": recorded.replace("+00:00", "Z"),
        "outcome": outcome_code(req.status, req.error_type),
        "agent": _agents(req, who, action, probe),
        "source": {
            "site": req.facility,
            "observer": {"display": observer},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": _entities(req, subtype, patient),
    }
    profile = _profile(subtype, action, patient is not None)
    if profile is not None:
        event["meta"] = {"profile": [profile]}
    detail = f"HTTP {req.status}" + (f" {req.error_type}" if req.error_type else "")
    if cut:
        detail += f"; {cut} more patients in the results not recorded (audit limit)"
    event["outcomeDesc"] = detail
    return event
