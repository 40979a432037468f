import base64
import json

from multidict import CIMultiDict

from gateway.dataplane.facility import UNKNOWN, FacilityResolver, jwt_claim
from gateway.sections import FacilitiesConfig
from gateway.settings import facility_settings


def _jwt(claims: object) -> str:
    def enc(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"Bearer {enc({'alg': 'RS256'})}.{enc(claims)}.c2lnbmF0dXJl"


CFG = facility_settings(
    FacilitiesConfig.model_validate(
        {
            "from": [{"header": "X-Facility-ID"}, {"path_segment": 1}, {"jwt_claim": "facility"}],
            "known": {"st-marys": {"name": "St Mary's"}, "riverside": {"name": "Riverside"}},
        }
    )
)


def test_sources_in_order() -> None:
    r = FacilityResolver(CFG)
    assert r.resolve(CIMultiDict({"x-facility-id": "st-marys"}), "/fhir/riverside/Patient/1") == "st-marys"
    assert r.resolve(CIMultiDict(), "/fhir/riverside/Patient/1") == "riverside"
    jwt = _jwt({"facility": "riverside", "sub": "dr-who"})
    assert r.resolve(CIMultiDict({"Authorization": jwt}), "/x") == "riverside"


def test_unknown_values_never_pass_through() -> None:
    r = FacilityResolver(CFG)
    assert r.resolve(CIMultiDict({"X-Facility-ID": "Jane Doe 1970-01-01"}), "/fhir/") == UNKNOWN
    assert r.resolve(CIMultiDict({"X-Facility-ID": "St-Marys"}), "/fhir/") == "st-marys"  # case folded
    assert r.resolve(CIMultiDict(), "/") == UNKNOWN


def test_jwt_claim_is_read_defensively() -> None:
    assert jwt_claim(_jwt({"facility": "a"}), "facility") == "a"
    assert jwt_claim(_jwt({"facility": 5}), "facility") is None
    assert jwt_claim(_jwt(["not", "an", "object"]), "facility") is None
    assert jwt_claim("Bearer not.a.jwt!", "facility") is None
    assert jwt_claim("Basic dXNlcjpwYXNz", "facility") is None
    assert jwt_claim("Bearer " + "a" * 9000, "facility") is None
    assert jwt_claim(None, "facility") is None
