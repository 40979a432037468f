"""Forwarding the audit trail to an audit repository: a FHIR server's ``AuditEvent`` endpoint
(IHE ATNA's RESTful feed), in batch Bundles.

Each event is sent as ``PUT AuditEvent/{id}`` with its stable id, so a batch sent twice (a
response lost, a restart before the cursor moved) changes nothing the second time: delivery
is at least once, and exactly once in effect. The cursor (the next record to send) is kept in
``forward.cursor`` beside the segments, written (fsync, rename) after each batch the server
accepted whole; a failed batch is retried, with exponential backoff up to a minute. The lag
(records on disk not yet accepted) and the failures are exported as metrics.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.audit.keys import Keyring
from gateway.audit.store import DELETIONS, GENESIS, SEGMENTS, facts_of, read_jsonl
from gateway.audit.verify import Record
from gateway.dataplane.auditrecord import aad

log = logging.getLogger("vitalgate.audit")

CURSOR = "forward.cursor"
MAX_BACKOFF_S = 60.0


class ForwardCounters(Protocol):
    def audit_forwarded(self, n: int) -> None: ...
    def audit_forward_failed(self, reason: str) -> None: ...
    def audit_forward_lag(self, records: int) -> None: ...


@dataclass(frozen=True)
class ForwardSettings:
    url: str
    """The repository's FHIR base; batches are posted to it."""
    batch_size: int
    interval_s: float
    timeout_s: float
    ca_file: str | None
    authorization: str | None


class Tail:
    """The chain's records in order from ``start``, read incrementally: it keeps its place
    (segment, byte offset, previous hash) between calls, so each batch reads only new lines."""

    def __init__(self, directory: Path, keyring: Keyring, start: int) -> None:
        self._dir = directory / SEGMENTS
        self._keyring = keyring
        self._start = start
        self._segment: str | None = None
        self._offset = 0
        self._prev = GENESIS
        self._next = 0
        # The chain's hash where each run of removed segments ended (signed deletion records).
        self._deleted = {int(d["size"]): str(d["head"]) for d in read_jsonl(directory / DELETIONS)}

    def _segments_from(self, name: str | None) -> list[Path]:
        found = sorted(self._dir.glob("*.seg")) if self._dir.exists() else []
        return [p for p in found if name is None or p.name >= name]

    def read(self, limit: int, upto: int) -> list[Record]:
        """Up to ``limit`` records with index below ``upto`` (what is durable)."""
        out: list[Record] = []
        for path in self._segments_from(self._segment):
            if path.name != self._segment:
                self._segment, self._offset = path.name, 0
            with path.open("rb") as f:
                f.seek(self._offset)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        return out  # being written
                    rec = json.loads(raw)
                    if "seal" in rec:
                        self._offset += len(raw)
                        break
                    i = int(rec["i"])
                    if i >= upto or len(out) >= limit:
                        return out
                    self._offset += len(raw)
                    if i != self._next:  # the first record after segments removed by retention
                        self._prev = self._deleted.get(i, self._prev)
                    prev, self._prev, self._next = self._prev, str(rec["h"]), i + 1
                    if i < self._start:
                        continue
                    plain = self._keyring.open(
                        rec["k"], base64.b64decode(rec["n"]), base64.b64decode(rec["c"]), aad(i, prev)
                    )
                    if plain is None:
                        raise ValueError(f"record {i} does not decrypt (run `vitalgate audit verify`)")
                    out.append(Record(i, int(rec["t"]), facts_of(plain)))
                    self._start = i + 1
        return out


def read_cursor(directory: Path) -> int:
    try:
        return int((directory / CURSOR).read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def _write_cursor(directory: Path, value: int) -> None:
    tmp = directory / (CURSOR + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{value}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(directory / CURSOR)


def batch_bundle(records: list[Record]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": r.event, "request": {"method": "PUT", "url": f"AuditEvent/{r.event['id']}"}}
            for r in records
        ],
    }


class Forwarder:
    """One thread: sends what is durable past the cursor, batch by batch."""

    def __init__(
        self,
        settings: ForwardSettings,
        directory: Path,
        keyring: Keyring,
        durable: Callable[[], int],
        counters: ForwardCounters,
    ) -> None:
        self.settings = settings
        self._directory = directory
        self._durable = durable
        self._counters = counters
        self.cursor = read_cursor(directory)
        self._tail = Tail(directory, keyring, self.cursor)
        self._context = ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vitalgate-audit-forward", daemon=True)
        self._thread.start()

    def _post(self, records: list[Record]) -> str | None:
        """None when the server took every entry; else why not (a metric label)."""
        body = json.dumps(batch_bundle(records)).encode()
        req = urllib.request.Request(self.settings.url, data=body, method="POST")  # noqa: S310  configured URL
        req.add_header("Content-Type", "application/fhir+json")
        req.add_header("Accept", "application/fhir+json")
        if self.settings.authorization:
            req.add_header("Authorization", self.settings.authorization)
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s, context=self._context) as r:  # noqa: S310
                answer = json.loads(r.read())
        except urllib.error.HTTPError as err:
            return f"http_{err.code // 100}xx"
        except (urllib.error.URLError, OSError, TimeoutError):
            return "unreachable"
        except ValueError:
            return "bad_response"
        entries = answer.get("entry") if isinstance(answer, dict) else None
        if not isinstance(entries, list) or len(entries) != len(records):
            return "bad_response"
        for e in entries:
            status = str((e.get("response") or {}).get("status", "")) if isinstance(e, dict) else ""
            if status[:1] != "2":
                return "entry_refused"
        return None

    def _run(self) -> None:
        backoff = 0.0
        pending: list[Record] = []
        while not self._stop.is_set():
            durable = self._durable()
            if not pending:
                try:
                    pending = self._tail.read(self.settings.batch_size, durable)
                except (OSError, ValueError) as exc:
                    self._counters.audit_forward_failed("read")
                    log.error(
                        "audit forward: reading the trail failed: %s",
                        exc,
                        extra={"event": "audit_forward_failed"},
                    )
                    self._stop.wait(MAX_BACKOFF_S)
                    continue
            self._counters.audit_forward_lag(max(0, durable - self.cursor))
            if not pending:
                self._stop.wait(self.settings.interval_s)
                continue
            why = self._post(pending)
            if why is not None:
                self._counters.audit_forward_failed(why)
                backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                if backoff == 1.0:
                    log.warning(
                        "audit forward: the repository did not take a batch (%s); retrying with backoff",
                        why,
                        extra={"event": "audit_forward_retry", "reason": why},
                    )
                self._stop.wait(backoff)
                continue
            if backoff:
                log.info(
                    "audit forward: the repository takes batches again",
                    extra={"event": "audit_forward_recovered"},
                )
            backoff = 0.0
            self.cursor = pending[-1].index + 1
            try:
                _write_cursor(self._directory, self.cursor)
            except OSError as exc:
                # Sent, but the cursor not saved: after a restart this batch is sent again,
                # which the stable ids make harmless.
                self._counters.audit_forward_failed("cursor")
                log.error(
                    "audit forward: the cursor was not saved: %s",
                    exc,
                    extra={"event": "audit_forward_failed"},
                )
            self._counters.audit_forwarded(len(pending))
            pending = []

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None
