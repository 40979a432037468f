"""The audit trail as a request sink: each finished request on an audited route is queued on
the event loop (a deque append) and turned into AuditEvents, encrypted and appended by one
writer thread, which fsyncs every ``flush_interval`` and signs a checkpoint every
``checkpoint_interval`` and at shutdown.

``batched`` durability: what a crash can lose is what was queued since the last fsync, at
most ``flush_interval`` of records (1 s by default); the records a full queue or a failing
disk could not keep are counted (``vitalgate_telemetry_dropped_total{signal="audit"}``) and
logged. A failing disk is retried every interval with the batch kept (bounded by the queue).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.audit import events
from gateway.audit.identity import Identities
from gateway.audit.keys import Keyring
from gateway.audit.search import AuditQuery
from gateway.audit.store import Appender, Head
from gateway.audit.verify import all_records, expire
from gateway.dataplane.auditrecord import pending, request_rows
from gateway.dataplane.outcome import AuditFacts, Outcome
from gateway.dataplane.tracing import AnySpan

log = logging.getLogger("vitalgate.audit")

RETENTION_EVERY_S = 3600.0
SHAPES_MAX = 10_000
HOLD_TIMEOUT_S = 10.0
"""The longest a strict response waits for its record (a disk that hangs): then 503."""


def _settle(fut: asyncio.Future[bool], ok: bool) -> None:
    if not fut.done():  # a waiter that timed out has gone
        fut.set_result(ok)


class AuditCounters(Protocol):
    def audit_written(self, n: int) -> None: ...
    def audit_dropped(self, n: int) -> None: ...
    def audit_write_error(self) -> None: ...


@dataclass(frozen=True)
class TrailSettings:
    directory: Path
    flush_interval_s: float
    checkpoint_interval_s: float
    retention_s: float
    max_queue: int
    max_patients: int
    upstream_addresses: dict[str, str]
    """Upstream name -> its base URL (the server agent's network address)."""
    chain: str = ""
    root: Path | None = None
    """The trail's folder when this chain is one of several in it (``--workers``)."""


def patients_in(body: bytes, limit: int) -> tuple[list[str], int]:
    """Patient ids in a FHIR JSON search result (the Patients themselves, and the patient or
    subject of each other resource), at most ``limit``, and how many more there were."""
    try:
        doc = json.loads(body)
    except ValueError:
        return [], 0
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        return [], 0
    found: dict[str, None] = {}
    for entry in doc.get("entry") or []:
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            continue
        if res.get("resourceType") == "Patient" and isinstance(res.get("id"), str):
            found[res["id"]] = None
            continue
        for key in ("patient", "subject"):
            ref = res.get(key)
            ref = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(ref, str) and ref.startswith("Patient/"):
                found[ref[len("Patient/") :]] = None
    ids = list(found)
    return ids[:limit], max(0, len(ids) - limit)


def bundle_type(body: bytes | None) -> str | None:
    if not body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind if kind in ("batch", "transaction") else None


Pending = tuple[Any, ...]
"""A request waiting for the writer (``auditrecord.pending``)."""


class AuditTrail:
    """A ``RequestSink``; ``start`` opens the store, ``close`` writes all and checkpoints."""

    def __init__(
        self,
        settings: TrailSettings,
        keyring: Keyring,
        signer: Any,
        identities: Identities,
        counters: AuditCounters,
        publish: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self._signer = signer
        self._identities = identities
        self._counters = counters
        self._publish = publish
        self._queue: deque[Pending | list[Any]] = deque()
        """Finished requests, and records already made (reads of the trail itself)."""
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._appender: Appender | None = None
        self._shapes: dict[tuple[str, str, str], events.Shape] = {}
        self._pending_records: list[tuple[int, bytes]] = []
        """Encoded records a failed write left, tried again first (bounded by ``max_queue``)."""
        self._failing = False
        self._held: deque[Pending] = deque()
        """Strict records of responses not yet served: written, or dropped if the write fails
        (the request is then answered 503, and that outcome recorded by ``request``)."""
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]] = deque()
        self.written = 0
        self.durable_size = 0
        """Records in the chain known to be on disk (fsynced)."""
        self.last_checkpoint: dict[str, Any] | None = None

    # -- the request path ------------------------------------------------------------------

    def request(self, outcome: Outcome) -> None:
        facts = outcome.audit
        if facts is None or facts.committed:
            return
        if len(self._queue) >= self.settings.max_queue:
            self._counters.audit_dropped(1)
            return
        self._queue.append(pending(outcome, facts))

    async def hold(
        self,
        facts: AuditFacts,
        facility: str,
        service: str,
        route: str,
        method: str,
        status: int,
        error_type: str | None,
        span: AnySpan,
    ) -> bool:
        """``durability: strict``: queue the record and wake the writer, which commits every
        record queued meanwhile with one fsync (group commit) and then answers each waiter.
        False, at once, while the disk is failing, or after ``HOLD_TIMEOUT_S``."""
        if self._failing or self._thread is None:
            return False
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        now = time.time()
        key = (facility, service, route, method, status)
        outcome = Outcome(now, 0.0, facility, service, route, method, status, error_type, None, key, span)
        if len(self._queue) >= self.settings.max_queue:
            self._counters.audit_dropped(1)
            return False
        self._waiters.append((loop, done))
        self._held.append(pending(outcome, facts))
        self._wake.set()
        try:
            return await asyncio.wait_for(done, HOLD_TIMEOUT_S)
        except TimeoutError:
            return False

    def _answer(
        self, ok: bool, waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]]
    ) -> None:
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_settle, fut, ok)

    # -- the writer thread -------------------------------------------------------------------

    def start(self) -> None:
        self._appender = Appender(self.settings.directory, self.keyring, self._signer, self.settings.chain)
        self.durable_size = self._appender.head.size
        if self._appender.torn_bytes:
            log.warning(
                "audit: a torn last record (%d bytes, never confirmed written) was cut off the store",
                self._appender.torn_bytes,
                extra={"event": "audit_torn_tail", "bytes": self._appender.torn_bytes},
            )
        self._thread = threading.Thread(target=self._run, name="vitalgate-audit", daemon=True)
        self._thread.start()

    def _facts(self, p: Pending) -> list[list[Any]]:
        """The records of one request (``events.facts_of``), built straight from the tuple: this
        runs for every request, so the route's patient positions come from a per-route cache."""
        method, query, prefix, route = p[2], p[4], p[5], p[6]
        upstream, body, request_body = p[11], p[18], p[19]
        key = (method, prefix, route)
        shape = self._shapes.get(key)
        if shape is None:
            shape = events.shape(method, prefix, route)
            if len(self._shapes) < SHAPES_MAX:  # templates are bounded; the cache is too
                self._shapes[key] = shape
        who = self._identities.resolve(p[16], p[17], p[12], p[0])
        named = events.query_patients(query) if query else []
        cut = 0
        if body and shape.searches:
            found, cut = patients_in(body, self.settings.max_patients)
            named += found
        address = self.settings.upstream_addresses.get(upstream) or str(upstream)
        btype = bundle_type(request_body) if request_body else None
        return request_rows(p, address, btype, who.row(), shape.patient_segments, named, cut)

    def _encode(self, batch: Sequence[Pending | list[Any]]) -> list[tuple[int, bytes]]:
        # orjson: a record's JSON is a tenth of the json module's cost, which per audited
        # request is most of what the trail costs the gateway.
        dumps = orjson.dumps
        out = []
        for o in batch:
            if isinstance(o, list):
                out.append((int(o[2] * 1000), dumps(o)))
                continue
            t_ms = int(o[1] * 1000)
            for record in self._facts(o):
                out.append((t_ms, dumps(record)))
        return out

    def record_read(self, token: str, peer: str | None, query: str, t_s: float) -> None:
        """A read of the trail, recorded in it like any access (by the admin token's name)."""
        if len(self._queue) >= self.settings.max_queue:
            self._counters.audit_dropped(1)
            return
        self._queue.append(events.trail_read_facts(token, peer, query, t_s))

    def search(self, query: AuditQuery) -> list[dict[str, Any]]:
        """The events ``query`` selects, of every chain of the trail, in time order (a line
        still being written, by this process or another, is not read yet)."""
        root = self.settings.root or self.settings.directory
        return [rec.event for rec in all_records(root, self.keyring, partial_tail=True) if query.matches(rec)]

    def _flush(self) -> None:
        """Append what is queued (and what a failed write left), fsync, or keep it for the next
        try. Runs on the writer thread only."""
        app = self._appender
        assert app is not None
        waiters = [self._waiters.popleft() for _ in range(len(self._waiters))]
        held = [self._held.popleft() for _ in range(len(self._held))]
        batch = [self._queue.popleft() for _ in range(len(self._queue))]
        kept = self._pending_records + self._encode(batch)
        records = kept + self._encode(held)
        if not records:
            self._answer(True, waiters)
            return
        before = Head(app.head.size, app.head.hash, app.head.segment)
        try:
            app.append(records)
            app.sync()
        except OSError as exc:
            app.rollback(before)
            self._counters.audit_write_error()
            # Strict waiters are told at once (their responses are not served); their records
            # stay pending with the rest, so the attempt is still recorded once the disk recovers.
            self._answer(False, waiters)
            if len(kept) > self.settings.max_queue:
                self._counters.audit_dropped(len(kept) - self.settings.max_queue)
                kept = kept[-self.settings.max_queue :]
            self._pending_records = kept
            if not self._failing:
                self._failing = True
                log.error(
                    "audit: writing the trail failed (%s); %d records kept for the next try",
                    exc.strerror or exc,
                    len(kept),
                    extra={"event": "audit_write_failed"},
                )
            return
        if self._failing:
            self._failing = False
            log.warning("audit: writes succeed again", extra={"event": "audit_write_recovered"})
        self._pending_records = []
        self.written += len(records)
        self.durable_size = app.head.size
        self._counters.audit_written(len(records))
        self._answer(True, waiters)

    def _checkpoint(self) -> None:
        app = self._appender
        assert app is not None
        try:
            self.last_checkpoint = app.checkpoint(self._publish)
        except OSError as exc:
            self._counters.audit_write_error()
            log.error(
                "audit: checkpoint not written (%s)",
                exc.strerror or exc,
                extra={"event": "audit_checkpoint_failed"},
            )

    def _run(self) -> None:
        s = self.settings
        next_cp = time.monotonic() + s.checkpoint_interval_s
        next_expiry = time.monotonic()
        while True:
            self._wake.wait(s.flush_interval_s)
            self._wake.clear()
            stopping = self._stopping
            self._flush()
            now = time.monotonic()
            if now >= next_cp or stopping:
                self._checkpoint()
                next_cp = now + s.checkpoint_interval_s
            if now >= next_expiry and not stopping:
                next_expiry = now + RETENTION_EVERY_S
                self._expire()
            if stopping:
                return

    def _expire(self) -> None:
        try:
            removed = expire(self.settings.directory, self._signer, self.settings.retention_s, time.time())
        except OSError as exc:
            self._counters.audit_write_error()
            log.error(
                "audit: expiring old segments failed (%s)",
                exc.strerror or exc,
                extra={"event": "audit_expiry_failed"},
            )
            return
        for name in removed:
            log.info(
                "audit: %s removed past retention, with a signed deletion record",
                name,
                extra={"event": "audit_expired"},
            )

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued, sign a last checkpoint, stop the writer."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            lost = len(self._queue)
            self._counters.audit_dropped(lost)
            log.error(
                "audit: %d records not written at shutdown (the disk did not take them within %g s)",
                lost,
                timeout_s,
                extra={"event": "audit_lost_at_shutdown"},
            )
        self._thread = None
        if self._appender is not None:
            self._appender.close()
