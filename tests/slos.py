"""The SLOs the tests run with, built in one place (slos.yaml entries as dicts)."""

from __future__ import annotations

from typing import Any

SloDoc = dict[str, Any]


def availability(name: str = "avail", objective: float = 99.5, **extra: Any) -> SloDoc:
    return {"name": name, "service": "fhir", "objective": objective, "sli": {"availability": {}}, **extra}


def latency(name: str, threshold: str, objective: float, methods: list[str] | None = None) -> SloDoc:
    doc: SloDoc = {"name": name, "service": "fhir", "objective": objective}
    if methods:
        doc["filter"] = {"methods": methods}
    doc["sli"] = {"latency": {"threshold": threshold}}
    return doc


def bundle_entries(name: str, methods: list[str] | None = None) -> SloDoc:
    doc: SloDoc = {"name": name, "service": "fhir", "objective": 99}
    if methods:
        doc["filter"] = {"methods": methods}
    doc["sli"] = {"availability": {"bundle_entries": True}}
    return doc


AVAIL = [availability()]
"""99.5% availability of the fhir service: the gateway tests' default."""
STORE = [availability(), latency("fast-reads", "250ms", 90, ["GET"])]
"""Availability and a latency SLO of GET requests: what the store tests count."""
FHIR_AVAILABILITY = [availability("fhir-availability", 99.9)]
"""The 99.9% SLO the alerting tests page on."""
DASHBOARDS = [availability("fhir-availability", 99.9), latency("fhir-read-latency", "100ms", 99, ["GET"])]
BROWSER = [availability("fhir-availability"), latency("fhir-latency", "250ms", 99)]
ENTRIES = [availability(objective=99), bundle_entries("entries"), bundle_entries("entry-deletes", ["DELETE"])]
PROMETHEUS = [
    availability(),
    availability("monthly", 99, window={"calendar": "month"}),
    latency("fast", "250ms", 90),
]
