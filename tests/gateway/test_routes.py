import pytest

from gateway.dataplane.routes import Router, normalize_path
from gateway.sections import RouteConfig
from gateway.settings import route_settings

ROUTES = [
    RouteConfig(prefix="/fhir/", upstream="fhir", kind="fhir", operations=["custom-op"]),
    RouteConfig(
        prefix="/scheduling/",
        upstream="scheduling",
        templates=[
            "/scheduling/appointments",
            "/scheduling/appointments/{id}",
            "/scheduling/slots/{id}/book",
        ],
    ),
    RouteConfig(prefix="/fhir/r5/", upstream="fhir5", kind="fhir"),
]
SETTINGS = [route_settings(r) for r in ROUTES]


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/fhir/", "/fhir/"),  # batch/transaction and system search at the base
        ("/fhir", "/fhir/"),
        ("/fhir/metadata", "/fhir/metadata"),
        ("/fhir/_history", "/fhir/_history"),
        ("/fhir/_search", "/fhir/_search"),
        ("/fhir/$export", "/fhir/$export"),
        ("/fhir/Patient", "/fhir/Patient"),
        ("/fhir/Patient/", "/fhir/Patient"),
        ("/fhir/Patient/_search", "/fhir/Patient/_search"),
        ("/fhir/Patient/_history", "/fhir/Patient/_history"),
        ("/fhir/Patient/$match", "/fhir/Patient/$match"),
        ("/fhir/Patient/123", "/fhir/Patient/{id}"),
        ("/fhir/Patient/MRN-00123/_history", "/fhir/Patient/{id}/_history"),
        ("/fhir/Patient/123/_history/7", "/fhir/Patient/{id}/_history/{vid}"),
        ("/fhir/Patient/123/$everything", "/fhir/Patient/{id}/$everything"),
        ("/fhir/Patient/123/$custom-op", "/fhir/Patient/{id}/$custom-op"),
        ("/fhir/Patient/123/Observation", "/fhir/Patient/{id}/Observation"),
        ("/fhir/Patient/123/Observation/_search", "/fhir/Patient/{id}/Observation/_search"),
        ("/fhir/Observation/abc-def", "/fhir/Observation/{id}"),
        # Names the gateway does not know never become labels.
        ("/fhir/JohnSmith", "/fhir/{path}"),
        ("/fhir/JohnSmith/123", "/fhir/{path}"),
        ("/fhir/Patient/123/$johnsmith", "/fhir/{path}"),
        ("/fhir/$johnsmith", "/fhir/{path}"),
        ("/fhir/Patient/123/Smith", "/fhir/{path}"),
        ("/fhir/Patient/123/_history/7/extra", "/fhir/{path}"),
        ("/fhir/Patient/$everything/x", "/fhir/{path}"),
        # Declared templates, and the fold for anything else under a generic prefix.
        ("/scheduling/appointments", "/scheduling/appointments"),
        ("/scheduling/appointments/42", "/scheduling/appointments/{id}"),
        ("/scheduling/slots/9/book", "/scheduling/slots/{id}/book"),
        ("/scheduling/slots/9/cancel", "/scheduling/{path}"),
        ("/scheduling/patients/Jane-Doe", "/scheduling/{path}"),
        # Longest prefix wins.
        ("/fhir/r5/Patient/1", "/fhir/r5/Patient/{id}"),
    ],
)
def test_templates(path: str, route: str) -> None:
    match = Router(SETTINGS).match(path)
    assert match is not None
    assert match.route == route


def test_service_and_no_route() -> None:
    router = Router(SETTINGS)
    m = router.match("/fhir/r5/Patient/1")
    assert m is not None
    assert (m.service, m.upstream) == ("fhir5", "fhir5")
    assert router.match("/admin/secret") is None
    assert router.match("/fhirx/Patient/1") is None


def test_facility_partition_in_path() -> None:
    # /fhir/{tenant}/Patient/123 as in HAPI FHIR partitioning: segment 1 is the facility.
    router = Router(
        [route_settings(RouteConfig(prefix="/fhir/", upstream="fhir", kind="fhir"))], facility_segment=1
    )
    m = router.match("/fhir/st-marys/Patient/123")
    assert m is not None
    assert m.route == "/fhir/{facility}/Patient/{id}"
    m = router.match("/fhir/st-marys/metadata")
    assert m is not None
    assert m.route == "/fhir/{facility}/metadata"
    m = router.match("/fhir/")
    assert m is not None
    assert m.route == "/fhir/{path}"


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/fhir/Patient/1", "/fhir/Patient/1"),
        ("/fhir/Patient/../Observation/1", "/fhir/Observation/1"),
        ("/fhir/./Patient/./1", "/fhir/Patient/1"),
        ("/fhir/Patient/%2e%2e/Observation", "/fhir/Observation"),
        ("/fhir/Patient/%2E", "/fhir/Patient/"),
        ("/fhir/Patient/..", "/fhir/"),
        ("/fhir/..", "/"),
        ("/fhir/Patient/a..b", "/fhir/Patient/a..b"),
        ("/fhir/Patient/...", "/fhir/Patient/..."),
        ("/scheduling/../../internal-admin/users", None),
        ("/..", None),
        ("/scheduling/%2e%2e/%2E%2E/internal", None),
        ("/scheduling/..%2f..%2finternal", None),
        ("/scheduling/..%2F..%2Finternal", None),
        ("/scheduling/..%5cinternal", None),
        ("/scheduling\\..\\internal", None),
    ],
)
def test_normalize_path(path: str, normal: str | None) -> None:
    assert normalize_path(path) == normal
