"""FHIR JSON responses on their way back: absolute URLs that point around the gateway, and
the per-entry outcomes of a batch or transaction.

A FHIR server builds absolute URLs (``Bundle.link[].url``, ``entry[].fullUrl``,
``entry[].response.location``, and the same fields of a Bundle inside an entry, as a
search in a batch answers) from its own idea of its base. When that base
is the upstream's address, a client that follows ``next`` goes straight to the
upstream: unmeasured, outside every SLO. For a Bundle under the route's size
limit the gateway rewrites those URLs to its own origin; whatever still names
the upstream afterwards (in any response, inspected or not) is counted as a
leak by the caller, never silently passed.

A batch answers 200 with a status per entry: the entries' outcomes are read
here (counts only; nothing of the body is kept) so that an SLO can count them.

Only string literals that equal one of those URL fields are replaced, byte for
byte, so the rest of the body (decimal precision, key order, whitespace)
passes unchanged; a reference elsewhere in the Bundle to the same URL is
replaced with it, which keeps it resolving against its entry's ``fullUrl``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from core.conventions import OTHER_METHOD

FHIR_JSON_TYPES: Final[tuple[str, ...]] = (
    "application/fhir+json",
    "application/json+fhir",
    "application/json",
)
BATCH_RESPONSE_TYPES: Final = frozenset({"batch-response", "transaction-response"})
ENTRY_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


def is_fhir_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.partition(";")[0].strip().lower()
    return mime in FHIR_JSON_TYPES


class Inspection:
    """What a FHIR JSON response held: the body to send (rewritten or not) and, for a batch
    or transaction response, each entry's status (``None`` when it has none)."""

    __slots__ = ("body", "entry_statuses", "rewritten")

    def __init__(self, body: bytes, rewritten: int, entry_statuses: list[int | None] | None) -> None:
        self.body = body
        self.rewritten = rewritten
        """How many distinct URLs were rewritten."""
        self.entry_statuses = entry_statuses


def _urls(doc: dict[str, Any]) -> list[str]:
    """The URL fields of a Bundle and of every Bundle inside it, at any depth: a search in a
    batch answers with a ``searchset`` in ``entry[].resource`` (and a server may put a Bundle
    in ``entry[].response.outcome``), whose ``next`` a client follows like any other. Walked
    with a list, not recursion: the depth is the client's (bounded only by the JSON parser)."""
    out: list[str] = []
    todo: list[dict[str, Any]] = [doc]
    while todo:
        bundle = todo.pop()
        links = bundle.get("link")
        if isinstance(links, list):
            out.extend(
                u for link in links if isinstance(link, dict) and isinstance(u := link.get("url"), str)
            )
        entries = bundle.get("entry")
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            full = entry.get("fullUrl")
            if isinstance(full, str):
                out.append(full)
            inner = entry.get("resource")
            if isinstance(inner, dict) and inner.get("resourceType") == "Bundle":
                todo.append(inner)
            response = entry.get("response")
            if isinstance(response, dict):
                if isinstance(response.get("location"), str):
                    out.append(response["location"])
                outcome = response.get("outcome")
                if isinstance(outcome, dict) and outcome.get("resourceType") == "Bundle":
                    todo.append(outcome)
    return out


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _string(literal: bytes) -> str | None:
    try:
        value = json.loads(literal)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _entry_status(entry: Any) -> int | None:
    response = entry.get("response") if isinstance(entry, dict) else None
    status = response.get("status") if isinstance(response, dict) else None
    if isinstance(status, str) and len(status) >= 3 and status[:3].isdigit():
        code = int(status[:3])
        return code if 100 <= code <= 599 else None
    return None


def _bundle(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON Bundle, or None when it is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) and doc.get("resourceType") == "Bundle" else None


def base_literals(base: str) -> re.Pattern[bytes]:
    """Every JSON string literal in a body that starts with ``base`` and goes on, if at all,
    with ``/``, ``?`` or ``#`` (``http://up:8081/base2`` is not under ``http://up:8081/base``):
    written plainly or with ``\\/`` escapes. Compiled once per upstream."""
    plain = json.dumps(base, ensure_ascii=False).encode()[:-1]  # without its closing quote
    escaped = plain.replace(b"/", b"\\/")
    prefix = (
        re.escape(plain) if plain == escaped else b"(?:" + re.escape(plain) + b"|" + re.escape(escaped) + b")"
    )
    return re.compile(prefix + rb'(?:(?:[/?#]|\\/)(?:[^"\\]|\\.)*)?"')


def inspect(
    body: bytes, old_base: str, literals: re.Pattern[bytes], new_base: str | None, want_entries: bool
) -> Inspection | None:
    """Rewrite a Bundle's URLs from ``old_base`` (whose literals ``base_literals`` finds) to
    ``new_base`` and read its entries' statuses; None when the body is not a JSON Bundle (it
    then passes unchanged). One pass over the body, whatever the number of entries."""
    doc = _bundle(body)
    if doc is None:
        return None
    rewritten: set[str] = set()
    if new_base is not None and new_base != old_base:
        urls = {u for u in _urls(doc) if u.startswith(old_base)}
        if urls:
            old_open = json.dumps(old_base, ensure_ascii=False).encode()[:-1]
            new_open = json.dumps(new_base, ensure_ascii=False).encode()[:-1]
            parts: list[bytes] = []
            last = 0
            for found in literals.finditer(body):
                literal = found.group(0)
                plain = b"\\" not in literal  # (the common case: no escapes to decode)
                value = _utf8(literal[1:-1]) if plain else _string(literal)
                if value is None or value not in urls:
                    continue
                parts.append(body[last : found.start()])
                if plain:  # the literal's own bytes after the base, as they were
                    parts.append(new_open + literal[len(old_open) :])
                else:
                    parts.append(json.dumps(new_base + value[len(old_base) :], ensure_ascii=False).encode())
                last = found.end()
                rewritten.add(value)
            if rewritten:
                parts.append(body[last:])
                body = b"".join(parts)
    statuses: list[int | None] | None = None
    if want_entries and doc.get("type") in BATCH_RESPONSE_TYPES:
        entries = doc.get("entry")
        statuses = [_entry_status(e) for e in entries] if isinstance(entries, list) else []
    return Inspection(body, len(rewritten), statuses)


def request_entries(body: bytes) -> list[tuple[str, str]] | None:
    """(method, url) of each entry of a batch or transaction request Bundle; None if not one."""
    doc = _bundle(body)
    if doc is None:
        return None
    entries = doc.get("entry")
    out: list[tuple[str, str]] = []
    for entry in entries if isinstance(entries, list) else ():
        req = entry.get("request") if isinstance(entry, dict) else None
        method = req.get("method") if isinstance(req, dict) else None
        url = req.get("url") if isinstance(req, dict) else None
        out.append(
            (
                method if isinstance(method, str) and method in ENTRY_METHODS else OTHER_METHOD,
                url if isinstance(url, str) else "",
            )
        )
    return out


def status_class(status: int | None) -> str:
    """``2xx`` .. ``5xx``, or ``invalid`` for an entry without a readable status."""
    return f"{status // 100}xx" if status is not None else "invalid"
