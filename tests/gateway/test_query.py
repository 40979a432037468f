"""What of a query string reaches a span: FHIR's own names, control values that parse."""

import pytest

from gateway.dataplane.query import name_ok, redact_query


@pytest.mark.parametrize(
    ("query", "recorded"),
    [
        ("family=Smith&_count=10", "family=REDACTED&_count=10"),
        # A bare token is a value, not a name.
        ("Quixwhistle", "REDACTED"),
        ("123-45-6789", "REDACTED"),
        ("123-45-6789=1", "REDACTED"),
        # Control values only when they match the parameter's grammar.
        ("_count=Zebulon%20Quixwhistle", "_count=REDACTED"),
        ("_count=Zebulon+Quixwhistle", "_count=REDACTED"),
        ("_count=20", "_count=20"),
        ("_summary=count", "_summary=count"),
        ("_summary=Zebulon", "_summary=REDACTED"),
        ("_total=accurate&_contained=both", "_total=accurate&_contained=both"),
        ("_sort=-date,name", "_sort=-date,name"),
        ("_sort=-Quixwhistle", "_sort=REDACTED"),
        ("_elements=identifier,birthDate,Patient.name", "_elements=identifier,birthDate,Patient.name"),
        ("_elements=identifier,zebulon", "_elements=REDACTED"),
        ("_include=Observation:subject:Patient", "_include=Observation:subject:Patient"),
        ("_include:iterate=Patient:general-practitioner", "_include:iterate=Patient:general-practitioner"),
        ("_revinclude=Provenance:target", "_revinclude=Provenance:target"),
        ("_include=Quixwhistle:subject", "_include=REDACTED"),
        ("_type=Patient,Observation", "_type=Patient,Observation"),
        ("_getpages=5c1c6e43-1b7e-4d76-9b21-7d3f5d1a4f00", "_getpages=5c1c6e43-1b7e-4d76-9b21-7d3f5d1a4f00"),
        ("_getpages=Zebulon", "_getpages=REDACTED"),
        ("_format=application%2Ffhir%2Bjson", "_format=application/fhir+json"),
        # Modifiers FHIR defines, or a resource type; nothing else.
        ("name:exact=Zq", "name:exact=REDACTED"),
        ("family:Quagmire=x", "REDACTED"),
        ("subject:Patient=123", "subject:Patient=REDACTED"),
        ("birthdate:missing=true", "birthdate:missing=REDACTED"),
        # Chains only when every link is known.
        ("subject:Patient.name=Zq", "subject:Patient.name=REDACTED"),
        ("subject.Quixwhistle=1", "REDACTED"),
        ("_has:Observation:patient:code=1234-5", "_has:Observation:patient:code=REDACTED"),
        ("_has:Observation:Quixwhistle:code=1", "REDACTED"),
        (
            "_has:Observation:patient:_has:AuditEvent:entity:agent=x",
            "_has:Observation:patient:_has:AuditEvent:entity:agent=REDACTED",
        ),
        # Repeated, empty and encoded parameters.
        ("family=a&family=b", "family=REDACTED&family=REDACTED"),
        ("&&family=&", "family="),
        ("fam%69ly=Zq", "family=REDACTED"),
        ("%5Fcount=7", "_count=7"),
        ("Zebulon+Quixwhistle=", "REDACTED"),
    ],
)
def test_recorded_query(query: str, recorded: str) -> None:
    assert redact_query(query) == recorded


def test_route_declared_names() -> None:
    assert not name_ok("x-site-code")
    assert redact_query("x-site-code=7", frozenset({"x-site-code"})) == "x-site-code=REDACTED"


def test_bounded() -> None:
    assert len(redact_query("family=x&" * 2000)) == 2048
