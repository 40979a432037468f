"""An SLO's ``filter.routes`` against the routes of gateway.yaml.

A route filter is compared with the ``http.route`` label of each request: a
template the gateway makes (``/fhir/Patient/{id}``), never a path. A filter
that no configured route can produce matches nothing, and the SLO shows no
data forever; so it is an error at its place in slos.yaml. The check asks the
gateway's own router (the code that names requests) what it would call the
filter, so it can never disagree with what is recorded.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from core.configfile import Problem, Source, items_of, mapping_at
from gateway.config import GatewayConfig
from gateway.dataplane.fhir import RESOURCE_TYPES
from gateway.dataplane.routes import Router
from gateway.sections import RouteConfig
from gateway.settings import route_settings

MAX_LISTED = 6
"""Templates named in one message; a route with more says how many it has."""


def route_filter_problems(gateway: GatewayConfig, slos: Source) -> list[Problem]:
    """A problem for each ``slos[i].filter.routes[j]`` that no route of the SLO's service can
    produce (on the raw slos.yaml, so it runs beside that file's other problems)."""
    path_segment = next(
        (s.path_segment for s in gateway.facilities.from_ if s.path_segment is not None), None
    )
    router = Router([route_settings(r) for r in gateway.routes], path_segment)
    problems = []
    listed = slos.data.get("slos") if isinstance(slos.data, dict) else None
    for i, slo in items_of(listed if isinstance(listed, list) else []):
        if not isinstance(slo, dict):
            continue
        service = slo.get("service")
        for j, route in items_of(mapping_at(slo, "filter").get("routes")):
            if not isinstance(route, str):
                continue
            message = _why_never(route, service, router, gateway.routes)
            if message is not None:
                problems.append(slos.problem(("slos", i, "filter", "routes", j), message))
    return problems


def _why_never(route: str, service: object, router: Router, routes: Sequence[RouteConfig]) -> str | None:
    """None when a request of ``service`` can be labelled ``route``; else why it cannot."""
    match = router.match(route)
    if match is None:
        prefixes = ", ".join(r.prefix for r in routes)
        return f"{route!r} is under no configured route (prefixes: {prefixes}): no request is labelled so"
    config = next(r for r in routes if r.prefix == match.prefix)
    if match.route == route:
        if match.service != service:
            return (
                f"{route!r} is a route of upstream {match.service!r}, not of this SLO's service {service!r}: "
                "it never matches"
            )
        return None
    if config.kind == "fhir":
        return _fhir_reason(route, match.route, config)
    listed = list(config.templates[:MAX_LISTED])
    more = f" and {len(config.templates) - MAX_LISTED} more" if len(config.templates) > MAX_LISTED else ""
    templates = ", ".join(listed) + more if listed else "none declared"
    return (
        f"{route!r} is not one of the templates of route {config.prefix} ({templates}); "
        f"the gateway labels every other request there {config.prefix}{{path}}"
    )


def _fhir_reason(route: str, labelled: str, config: RouteConfig) -> str:
    """Why a FHIR route never carries the label ``route`` (the router calls it ``labelled``)."""
    for segment in route[len(config.prefix) :].split("/"):
        if segment and segment[0].isupper() and segment not in RESOURCE_TYPES:
            close = difflib.get_close_matches(segment, sorted(RESOURCE_TYPES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown FHIR resource type {segment!r}{hint}: no request is ever labelled {route!r}"
    if labelled != f"{config.prefix}{{path}}":
        return f"the gateway labels such a request {labelled!r}, never {route!r}"
    return (
        f"route {config.prefix} never labels a request {route!r}: FHIR routes are labelled by resource type, "
        f"operation and {{id}} ({config.prefix}Patient/{{id}}, {config.prefix}Patient, "
        f"{config.prefix}Patient/{{id}}/$everything, ...)"
    )
