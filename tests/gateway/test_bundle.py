"""The Bundle rewrite on its own: one pass over the body, only the URL fields' literals."""

from __future__ import annotations

import json

from gateway.dataplane.bundle import base_literals, inspect

OLD = "http://fhir.internal:8081/base"
NEW = "https://ehr.example.org"


def _rewrite(body: bytes) -> tuple[bytes, int]:
    found = inspect(body, OLD, base_literals(OLD), NEW, want_entries=False)
    assert found is not None
    return found.body, found.rewritten


def test_only_literals_of_url_fields_change_byte_for_byte() -> None:
    body = (
        b'{"resourceType": "Bundle", "type": "searchset",\n'
        b' "link": [{"relation": "next", "url": "http://fhir.internal:8081/base/Patient?_page=2"}],\n'
        b' "entry": [{"fullUrl": "http://fhir.internal:8081/base/Patient/1",\n'
        b'   "resource": {"resourceType": "Patient", "id": "1", "weight": 1.50,\n'
        b'     "link": [{"other": {"reference": "http://fhir.internal:8081/base/Patient/1"}}],\n'
        b'     "identifier": [{"system": "http://fhir.internal:8081/base2/ids", "value": "7"},\n'
        b'                    {"system": "http://fhir.internal:8081/base/not-a-field"}]}},\n'
        b'  {"fullUrl": "http:\\/\\/fhir.internal:8081\\/base\\/Patient\\/2"}]}'
    )
    out, n = _rewrite(body)
    assert n == 3  # the next link and both fullUrls (one of them written with \/ escapes)
    expected = (
        body.replace(
            b"http://fhir.internal:8081/base/Patient?_page=2", b"https://ehr.example.org/Patient?_page=2"
        )
        .replace(b'"http://fhir.internal:8081/base/Patient/1"', b'"https://ehr.example.org/Patient/1"')
        .replace(
            b'"http:\\/\\/fhir.internal:8081\\/base\\/Patient\\/2"', b'"https://ehr.example.org/Patient/2"'
        )
    )
    assert out == expected  # the reference equal to a fullUrl follows it; 1.50, base2 and the rest stay
    assert b"1.50" in out and b"base2/ids" in out and b"base/not-a-field" in out
    doc = json.loads(out)
    assert [e["fullUrl"] for e in doc["entry"]] == [f"{NEW}/Patient/1", f"{NEW}/Patient/2"]


def test_a_large_bundle_is_rewritten_whole() -> None:
    entries = [
        {"fullUrl": f"{OLD}/Observation/{i}", "resource": {"id": str(i), "valueQuantity": {"value": 1.50}}}
        for i in range(500)
    ]
    body = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries}).encode()
    out, n = _rewrite(body)
    assert n == 500 and OLD.encode() not in out
    assert [e["fullUrl"] for e in json.loads(out)["entry"]] == [f"{NEW}/Observation/{i}" for i in range(500)]


def test_not_a_bundle_passes_unchanged() -> None:
    assert inspect(b'{"resourceType": "Patient"}', OLD, base_literals(OLD), NEW, want_entries=False) is None
    assert inspect(b"not json", OLD, base_literals(OLD), NEW, want_entries=False) is None
