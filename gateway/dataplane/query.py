"""The query string as telemetry may carry it: FHIR's own names, values only where their
grammar leaves no room for a patient's data.

A client can put PHI anywhere in a query: in a value (``family=Quixwhistle``),
in a name (``?123-45-6789``, ``?family:Quagmire=x``), or in the value of a
control parameter (``_count=Zebulon``). So the rule is an allow-list:

- a name is recorded only when FHIR defines it (search parameter codes of
  R4, R4B and R5, the common and result parameters) or the route declares it
  (``query_parameters``); with a modifier only when FHIR defines the modifier
  or it is a resource type; chains (``subject:Patient.name``) and reverse
  chains (``_has:Observation:patient:code``) only when every link is known.
  Anything else is one ``REDACTED``, name and value together;
- a bare token (``?Quixwhistle``) is a value, so it is ``REDACTED``;
- a value is recorded only for control parameters, and only when it matches
  that parameter's grammar (``_count``: digits; ``_summary``: its codes;
  ``_sort``, ``_elements``, ``_include``: lists of FHIR names and resource
  types); every other value is ``REDACTED``.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_plus

from gateway.dataplane.fhir import RESOURCE_TYPES
from gateway.dataplane.fhir_names import ELEMENT_NAMES, SEARCH_PARAMETER_CODES

REDACTED: Final = "REDACTED"
MAX_RECORDED: Final = 2048
"""Longest ``url.query`` recorded: a query is bounded before it reaches a span."""

# FHIR R5 search modifiers (3.2.1.5.5), with R4's (``recurse`` on _include).
MODIFIERS: Final = frozenset(
    (
        "above",
        "below",
        "code-text",
        "contains",
        "exact",
        "identifier",
        "in",
        "iterate",
        "missing",
        "not",
        "not-in",
        "of-type",
        "text",
        "text-advanced",
        "recurse",
        "type",
    )
)

_DIGITS: Final = re.compile(r"[0-9]{1,9}")
_OPAQUE_PAGE: Final = re.compile(r"[0-9A-Fa-f-]{8,64}")  # page ids servers mint (HAPI: UUIDs)
_FORMATS: Final = frozenset(
    (
        "json",
        "xml",
        "ttl",
        "html",
        "application/fhir+json",
        "application/json+fhir",
        "application/json",
        "application/fhir+xml",
        "application/xml+fhir",
        "application/xml",
        "text/xml",
        "text/html",
        "text/turtle",
        "application/fhir+turtle",
    )
)


def _codes(*values: str) -> frozenset[str]:
    return frozenset(values)


def _is_param_code(code: str) -> bool:
    return code in SEARCH_PARAMETER_CODES


def _sort_list(value: str) -> bool:
    return all(_is_param_code(p[1:] if p.startswith("-") else p) for p in value.split(","))


def _element_list(value: str) -> bool:
    for part in value.split(","):
        rtype, dot, element = part.partition(".")
        if dot:
            if rtype not in RESOURCE_TYPES or element not in ELEMENT_NAMES:
                return False
        elif part not in ELEMENT_NAMES and part != "*":
            return False
    return True


def _include(value: str) -> bool:
    if value == "*":
        return True
    parts = value.split(":")
    if not 2 <= len(parts) <= 3 or parts[0] not in RESOURCE_TYPES:
        return False
    if parts[1] != "*" and not _is_param_code(parts[1]):
        return False
    return len(parts) == 2 or parts[2] in RESOURCE_TYPES


def _types(value: str) -> bool:
    return all(t in RESOURCE_TYPES for t in value.split(","))


_ENUMS: dict[str, frozenset[str]] = {
    "_summary": _codes("true", "text", "data", "count", "false"),
    "_total": _codes("none", "estimate", "accurate"),
    "_contained": _codes("true", "false", "both"),
    "_containedType": _codes("container", "contained"),
    "_pretty": _codes("true", "false"),
    "_format": _FORMATS,
}
_NUMERIC: Final = frozenset(("_count", "_offset", "_getpagesoffset", "_maxresults"))
_OPAQUE: Final = frozenset(("_page", "_getpages", "_pageId"))
CONTROL_PARAMETERS: Final = frozenset(
    (*_ENUMS, *_NUMERIC, *_OPAQUE, "_sort", "_elements", "_include", "_revinclude", "_type")
)
"""Parameters whose values shape the response; their values are kept when they parse."""


def control_value_ok(name: str, value: str) -> bool:
    """Whether a control parameter's value matches that parameter's grammar."""
    if name in _NUMERIC:
        return _DIGITS.fullmatch(value) is not None
    enum = _ENUMS.get(name)
    if enum is not None:
        return value in enum
    if name in _OPAQUE:
        return _OPAQUE_PAGE.fullmatch(value) is not None
    if name == "_sort":
        return _sort_list(value)
    if name == "_elements":
        return _element_list(value)
    if name in ("_include", "_revinclude"):
        return _include(value)
    if name == "_type":
        return _types(value)
    return False


def _link_ok(link: str, extra: frozenset[str]) -> bool:
    """One link of a (possibly chained) name: ``code`` or ``code:modifier``."""
    code, colon, modifier = link.partition(":")
    if code not in SEARCH_PARAMETER_CODES and code not in CONTROL_PARAMETERS and code not in extra:
        return False
    return not colon or modifier in MODIFIERS or modifier in RESOURCE_TYPES


def _has_ok(parts: list[str], extra: frozenset[str]) -> bool:
    """``_has:Type:reference:rest``, where rest is a parameter (with a modifier) or another _has."""
    if len(parts) < 4 or parts[1] not in RESOURCE_TYPES or not _link_ok(parts[2], extra):
        return False
    rest = parts[3:]
    if rest[0] == "_has":
        return _has_ok(rest, extra)
    return len(rest) <= 2 and _link_ok(":".join(rest), extra)


def name_ok(name: str, extra: frozenset[str] = frozenset()) -> bool:
    """Whether a parameter name (modifiers and chains included) is made only of known names."""
    if not name:
        return False
    if name.startswith("_has:"):
        return _has_ok(name.split(":"), extra)
    return all(_link_ok(link, extra) for link in name.split("."))


def redact_query(query: str, extra: frozenset[str] = frozenset()) -> str:
    """``url.query`` as recorded: known names, and control values that match their grammar."""
    if not query:
        return ""
    out: list[str] = []
    for pair in query.split("&"):
        if not pair:
            continue
        raw_name, eq, raw_value = pair.partition("=")
        if not eq:
            out.append(REDACTED)  # a bare token is a value, not a name
            continue
        name = unquote_plus(raw_name)
        if not name_ok(name, extra):
            out.append(REDACTED)
            continue
        if not raw_value:
            out.append(name + "=")
            continue
        value = unquote_plus(raw_value)
        base = name.partition(":")[0]
        if base in CONTROL_PARAMETERS and control_value_ok(base, value):
            out.append(f"{name}={value}")
        else:
            out.append(f"{name}={REDACTED}")
    return "&".join(out)[:MAX_RECORDED]
