"""Route table: path prefix to upstream, and path to a bounded route template.

A route template (``/fhir/Patient/{id}``) is what every label, log field and
span name carries; the raw path never leaves the request. Templates are built
only from names the gateway knows (FHIR resource types and operations, declared
templates); anything else under a prefix folds into one value per route
(``/fhir/{path}``), so a client cannot create label values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gateway.dataplane.fhir import OPERATIONS, RESOURCE_TYPES
from gateway.dataplane.settings import RouteSettings

FACILITY_PLACEHOLDER: Final = "{facility}"


_ENCODED_SEPARATORS: Final[tuple[str, ...]] = ("%2f", "%2F", "%5c", "%5C")


def normalize_path(path: str) -> str | None:
    """The path with dot segments removed (RFC 3986 5.2.4), ``%2E`` read as ``.``; None for a
    path to refuse: one that climbs above the root, or has a backslash or an encoded ``/`` or
    ``\\`` (which servers disagree on: one reads ``..%2f`` as a directory, another as text).
    What is routed, templated and forwarded is this one path."""
    if "\\" in path or any(e in path for e in _ENCODED_SEPARATORS):
        return None
    if "%2e" in path or "%2E" in path:
        path = path.replace("%2e", ".").replace("%2E", ".")
    if "/." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if seg == ".":
            if i == len(segments) - 1:
                out.append("")  # "/a/." is "/a/"
            continue
        if seg == "..":
            if len(out) <= 1:
                return None  # above the root
            out.pop()
            if i == len(segments) - 1:
                out.append("")
            continue
        out.append(seg)
    return "/".join(out) if len(out) > 1 else "/"


class Match:
    """Where a request goes and how it is named. Shared between requests (one per route
    template, cached by its route), so treated as immutable."""

    __slots__ = ("audit", "inspect_max", "prefix", "query_names", "route", "service", "upstream")

    def __init__(
        self,
        service: str,
        upstream: str,
        route: str,
        prefix: str,
        inspect_max: int = 0,
        query_names: frozenset[str] = frozenset(),
        audit: bool = False,
    ) -> None:
        self.service = service
        """The ``service`` label: the upstream's name (one name, written down in the README's Words)."""
        self.upstream = upstream
        """The pool the request goes to. The same name as ``service`` (``Route`` holds one);
        the proxy reads both, so both stay until the proxy is next reworked."""
        self.route = route
        """The route template: the ``http.route`` value."""
        self.prefix = prefix
        self.inspect_max = inspect_max
        """FHIR JSON responses up to this many bytes are inspected (0: a route that is not FHIR)."""
        self.query_names = query_names
        """Query parameter names this route records beside FHIR's own."""
        self.audit = audit
        """Requests on this route go to the audit trail."""

    @property
    def is_base(self) -> bool:
        """The FHIR base itself (``/fhir/``): where batches and transactions are posted."""
        return self.route == self.prefix

    def __repr__(self) -> str:
        return f"Match(service={self.service!r}, upstream={self.upstream!r}, route={self.route!r})"


class _Templates:
    """Declared templates such as ``/scheduling/appointments/{id}``, matched by segment."""

    def __init__(self, templates: Sequence[str]) -> None:
        self._by_len: dict[int, list[tuple[str, tuple[str | None, ...]]]] = {}
        for t in templates:
            parts = tuple(
                None if p.startswith("{") and p.endswith("}") else p for p in t.strip("/").split("/")
            )
            self._by_len.setdefault(len(parts), []).append((t, parts))

    def match(self, segments: list[str]) -> str | None:
        for template, parts in self._by_len.get(len(segments), ()):
            if all(p is None or p == s for p, s in zip(parts, segments, strict=True)):
                return template
        return None


class Route:
    """One configured route: a prefix, its upstream, and how it names paths."""

    def __init__(self, cfg: RouteSettings, facility_segment: int | None = None) -> None:
        self.prefix = cfg.prefix
        self.upstream = cfg.upstream
        """The upstream's name: also the ``service`` label of what the route records."""
        self.kind = cfg.kind
        self.fold = f"{cfg.prefix}{{path}}"
        self._templates = _Templates(cfg.templates) if cfg.templates else None
        self._prefix_parts = cfg.prefix.strip("/").split("/")
        # One Match per template: templates are bounded, so this is too.
        self._matches: dict[str, Match] = {}
        self._operations = OPERATIONS | frozenset(cfg.operations)
        self._inspect_max = cfg.rewrite_max_bytes if cfg.kind == "fhir" else 0
        self._query_names = frozenset(cfg.query_parameters)
        self._audit = cfg.audit
        self._prefix_segments = len(cfg.prefix.strip("/").split("/"))
        # Absolute index of a path segment that carries the facility (URL partition),
        # relative to this route's remainder; None when the facility is not in the path.
        self._facility_index: int | None = None
        if facility_segment is not None and facility_segment >= self._prefix_segments:
            self._facility_index = facility_segment - self._prefix_segments

    def template(self, path: str) -> str:
        rest = path[len(self.prefix) :]
        segments = rest.split("/") if rest else []
        if segments and segments[-1] == "":
            segments.pop()  # trailing slash
        head = self.prefix
        if self._facility_index is not None:
            if self._facility_index < len(segments):
                # The tenant segment is replaced; a facility never appears as written.
                before = segments[: self._facility_index]
                if before:  # partitions deeper than the first segment: keep it simple and bounded
                    return self.fold
                segments = segments[self._facility_index + 1 :]
                head = f"{self.prefix}{FACILITY_PLACEHOLDER}/"
            else:
                return self.fold
        if self._templates is not None:
            declared = self._templates.match([*self._prefix_parts, *segments])
            if declared is not None:
                return declared
        if self.kind == "fhir":
            t = self._fhir(segments)
            if t is not None:
                return head + t
        return self.fold

    def match(self, path: str) -> Match:
        route = self.template(path)
        m = self._matches.get(route)
        if m is None:
            m = self._matches[route] = Match(
                self.upstream,
                self.upstream,
                route,
                self.prefix,
                self._inspect_max,
                self._query_names,
                self._audit,
            )
        return m

    def _op(self, segment: str) -> str | None:
        return segment if segment[:1] == "$" and segment[1:] in self._operations else None

    def _fhir(self, s: list[str]) -> str | None:
        n = len(s)
        if n == 0:
            return ""  # base: batch/transaction (POST), system search and history (GET)
        first = s[0]
        if n == 1:
            if first in ("metadata", "_history", "_search"):
                return first
            if self._op(first):
                return first
            return first if first in RESOURCE_TYPES else None
        if first not in RESOURCE_TYPES:
            return None
        second = s[1]
        if n == 2:
            if second in ("_search", "_history"):
                return f"{first}/{second}"
            if self._op(second):
                return f"{first}/{second}"
            return f"{first}/{{id}}" if not second.startswith(("$", "_")) else None
        if second.startswith(("$", "_")):
            return None
        third = s[2]
        if n == 3:
            if third == "_history":
                return f"{first}/{{id}}/_history"
            if self._op(third):
                return f"{first}/{{id}}/{third}"
            if third in RESOURCE_TYPES:  # compartment search: Patient/{id}/Observation
                return f"{first}/{{id}}/{third}"
            return None
        if n == 4 and third == "_history":
            return f"{first}/{{id}}/_history/{{vid}}"
        if n == 4 and third in RESOURCE_TYPES and s[3] == "_search":
            return f"{first}/{{id}}/{third}/_search"
        return None


class Router:
    """Longest-prefix route matching; built once from config."""

    def __init__(self, routes: Sequence[RouteSettings], facility_segment: int | None = None) -> None:
        self._routes = sorted((Route(r, facility_segment) for r in routes), key=lambda r: -len(r.prefix))

    def match(self, path: str) -> Match | None:
        for r in self._routes:
            if path.startswith(r.prefix):
                return r.match(path)
            if path == r.prefix[:-1]:
                return r.match(r.prefix)
        return None

    @property
    def services(self) -> list[str]:
        return sorted({r.upstream for r in self._routes})
