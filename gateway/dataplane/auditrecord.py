"""The audit trail's per-request work that runs for every audited request, compiled with the
rest of the request path: the finished request as a flat tuple (on the event loop), its
records' rows, and each record as the line its chain appends (in the audit writer process).

Everything else of the audit trail (identity, the AuditEvent rendering, segments, seals,
checkpoints, verification) is in ``gateway/audit/``, which calls these.
"""

from __future__ import annotations

import binascii
import hashlib
import os
from collections.abc import Callable
from typing import Any, Final

from gateway.dataplane.outcome import AuditFacts, Outcome

FACTS_VERSION: Final = 1
REST: Final = "rest"


def pending(o: Outcome, f: AuditFacts) -> tuple[Any, ...]:
    """A finished request for the audit writer: strings and numbers only, so the garbage
    collector stops tracking the tuple, where a queue of outcomes (spans, dicts) held for a
    flush interval would be walked by every collection."""
    return (
        o.started,
        o.started + o.duration_s,
        f.method,
        f.path,
        f.query,
        f.prefix,
        o.route,
        o.status,
        o.error_type,
        o.facility,
        o.service,
        f.upstream,
        f.peer,
        f.forwarded_for,
        o.context.trace_hex(),
        f.request_id,
        f.authorization,
        f.user,
        f.body,
        f.request_body,
        f.probe,
    )


def base_of(p: tuple[Any, ...], address: str, bundle_type: str | None) -> list[Any]:
    """A ``pending`` request's fields in the order ``gateway.audit.events.Request`` keeps them
    (the upstream's address and the Bundle's type added, the credentials and bodies left)."""
    return [
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        p[6],
        p[7],
        p[8],
        p[9],
        p[10],
        p[11],
        address,
        p[12],
        p[13],
        p[14],
        p[15],
        bundle_type,
    ]


def request_rows(
    p: tuple[Any, ...],
    address: str,
    bundle_type: str | None,
    who: list[Any],
    patient_segments: tuple[int, ...],
    named: list[str],
    cut: int,
) -> list[list[Any]]:
    """The rows of a ``pending`` request: its fields (``base_of``), the user's, and one row per
    patient: those its path names at ``patient_segments`` (after the prefix), then ``named``
    (its query's, its results')."""
    patients = path_patients(p[3], p[5], patient_segments) if patient_segments else []
    patients.extend(named)
    return rows(base_of(p, address, bundle_type), who, patients, cut)


def path_patients(path: str, prefix: str, patient_segments: tuple[int, ...]) -> list[str]:
    """The patient ids a path names where its route template has ``Patient/{id}``
    (``patient_segments``: positions after the prefix)."""
    if not path.startswith(prefix):
        return []
    segments = path[len(prefix) :].split("/")
    return [segments[i] for i in patient_segments if i < len(segments)]


def rows(base: list[Any], who: list[Any], patients: list[str], cut: int) -> list[list[Any]]:
    """The stored records of one request (``gateway.audit.events.facts_of`` says what each
    field is): one per patient, in the order first named, or one with none."""
    head: list[Any] = [FACTS_VERSION, REST]
    head.extend(base)
    head.extend(who)
    if not patients:
        row = list(head)
        row.extend((None, 0, cut))
        return [row]
    seen: set[str] = set()
    named: list[str] = []
    for p in patients:
        if p not in seen:
            seen.add(p)
            named.append(p)
    out: list[list[Any]] = []
    last = len(named) - 1
    for i, patient in enumerate(named):
        row = list(head)
        row.extend((patient, i, cut if i == last else 0))
        out.append(row)
    return out


# Copying a hash object skips OpenSSL's digest lookup that ``hashlib.sha256()`` repeats on
# every call (never updated itself: each use is on a copy).
_SHA256: Final = hashlib.sha256()


def chain_hash(prev: str, i: int, t: int, kid: str, nonce: str, ct: str) -> str:
    h = _SHA256.copy()
    h.update(f"{prev}|{i}|{t}|{kid}|{nonce}|{ct}".encode())
    return h.hexdigest()


def aad(i: int, prev: str) -> bytes:
    """What each record's encryption is bound to: its position, and the chain before it."""
    return f"vitalgate-audit|{i}|{prev}".encode()


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def nonces(n: int) -> bytes:
    """``n`` random 96-bit GCM nonces in one read of the kernel's generator."""
    return os.urandom(12 * n)


def encode_line(
    seal: Callable[[bytes, bytes, bytes], bytes],
    kid: str,
    i: int,
    prev: str,
    plaintext: bytes,
    t_ms: int,
    nonce: bytes,
) -> tuple[bytes, str]:
    """Record ``i`` of a chain whose head hash is ``prev``: its line, and the new head hash."""
    ct = _b64(seal(nonce, plaintext, aad(i, prev)))
    n = _b64(nonce)
    h = chain_hash(prev, i, t_ms, kid, n, ct)
    # Every field is a number, a hex or a base64 string: nothing to escape.
    return f'{{"i":{i},"t":{t_ms},"k":"{kid}","n":"{n}","c":"{ct}","h":"{h}"}}\n'.encode(), h


def encode_run(
    seal: Callable[[bytes, bytes, bytes], bytes],
    dumps: Callable[[Any], bytes],
    kid: str,
    size: int,
    prev: str,
    records: list[tuple[int, Any]],
    start: int,
    day: int,
    day_ms: int,
    random: bytes,
) -> tuple[list[bytes], int, str, int]:
    """``records[start:]``, ``(t_ms, facts)``, encoded from chain position ``size`` after head
    hash ``prev``, up to the first whose UTC day (``t_ms // day_ms``) is not ``day``: the lines,
    the new size and head hash, and the index it stopped at (``len(records)`` when all were of
    ``day``). ``random``: 12 bytes of nonce per record of ``records``.

    Each record's plaintext (``dumps`` of its facts) lives only until it is sealed: a batch of
    plaintexts kept alive at once costs more in fresh memory than their encoding does."""
    lines: list[bytes] = []
    h = prev
    i = start
    n = len(records)
    while i < n:
        t_ms, facts = records[i]
        if t_ms // day_ms != day:
            break
        line, h = encode_line(seal, kid, size, h, dumps(facts), t_ms, random[12 * i : 12 * i + 12])
        lines.append(line)
        size += 1
        i += 1
    return lines, size, h, i
