"""The audit trail as a request sink, in the gateway's process: each finished request on an
audited route is queued on the event loop (a deque append), and every ``SHIP_INTERVAL_S``
(at once for a strict response being held) the queue goes down a pipe to the trail's writer
process (``gateway.audit.writer``), which makes the AuditEvents, encrypts, chains, appends,
fsyncs every ``flush_interval`` and checkpoints. Its replies (counts, acknowledgements,
checkpoints, log records) come back on the same loop and go to the gateway's metrics, held
responses, access log and log.

All of it on the event loop, with no thread: a thread waking in this process takes the
interpreter lock from the loop, and the handoffs cost the loop more than the thread's own work.

``batched`` durability: a crash of the gateway process loses what it had not shipped (at most
``SHIP_INTERVAL_S`` of records); a crash of the machine what the writer had not fsynced (at
most ``flush_interval`` more, 1 s by default). What a full queue, a failing disk or a writer
that died could not keep is counted (``vitalgate_telemetry_dropped_total{signal="audit"}``,
in requests) and logged; a writer that died is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import pickle
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from gateway.audit import events
from gateway.audit.keys import Keyring
from gateway.audit.search import AuditQuery
from gateway.audit.verify import all_records
from gateway.audit.writer import FRAME, SHIP_INTERVAL_S, Pending, TrailSettings, WriterSpec, frame
from gateway.dataplane.auditrecord import pending
from gateway.dataplane.outcome import AuditFacts, Outcome
from gateway.dataplane.spans import AnySpan

log = logging.getLogger("vitalgate.audit")

HOLD_TIMEOUT_S = 10.0
"""The longest a strict response waits for its record (a disk that hangs): then 503."""
START_TIMEOUT_S = 30.0
"""How long a writer may take to start (it waits for an earlier one to finish the chain)."""
RESTART_AFTER_S = 1.0
MAX_UNSENT_BYTES = 64 << 20
"""Shipped but not yet taken by the writer's pipe: past this, the queue waits here instead
(bounded by ``max_queue``, then counted as dropped)."""


class AuditCounters(Protocol):
    def audit_written(self, n: int) -> None: ...
    def audit_dropped(self, n: int) -> None: ...
    def audit_write_error(self) -> None: ...


class WriterError(OSError):
    """The writer process could not open the trail (its reason in the message)."""


Waiter = tuple[int, asyncio.Future[bool]]


class _Child:
    """One writer process, and what was shipped to it but not yet accounted for."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.shipped = 0
        self.accounted = 0
        self.dead = False
        self.reader: asyncio.Task[None] | None = None

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self.proc.stdin is not None
        return self.proc.stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout


async def _read_frame(stream: asyncio.StreamReader) -> Any:
    """The next reply, or None at the end of the pipe."""
    try:
        (n,) = FRAME.unpack(await stream.readexactly(FRAME.size))
        data = await stream.readexactly(n)
    except asyncio.IncompleteReadError:
        return None
    return marshal.loads(data)  # noqa: S302  (from the writer this process started)


class AuditTrail:
    """A ``RequestSink``; ``start`` starts the writer, ``close`` has it write all and checkpoint."""

    def __init__(
        self,
        settings: TrailSettings,
        keyring: Keyring,
        spec: WriterSpec,
        counters: AuditCounters,
        publish: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self._spec = spec
        self._counters = counters
        self._publish = publish
        self._queue: deque[Pending | list[Any]] = deque()
        """Finished requests, and records already made (reads of the trail itself)."""
        self._held: deque[tuple[int, Pending]] = deque()
        """Strict records of responses not yet served, numbered: written, or dropped if the
        write fails (the request is then answered 503, and that outcome recorded by ``request``)."""
        self._waiters: deque[Waiter] = deque()
        self._seq = 0
        self._failing = False
        self._stopping = False
        self._child: _Child | None = None
        self._shipping: asyncio.Task[None] | None = None
        self._kicked = False
        self.durable_size = 0
        """Records in the chain known to be on disk (fsynced)."""
        self.last_checkpoint: dict[str, Any] | None = None

    @property
    def depth(self) -> int:
        """Records waiting to be shipped to the writer process."""
        return len(self._queue)

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
        """``durability: strict``: ship the record at the end of this turn of the loop, with
        every other held meanwhile; the writer commits all it finds waiting with one fsync
        (group commit) and acknowledges them. False, at once, while the disk is failing or no
        writer runs, or after ``HOLD_TIMEOUT_S``."""
        child = self._child
        if self._failing or child is None or child.dead:
            return False
        if len(self._held) >= self.settings.max_queue:
            self._counters.audit_dropped(1)
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        now = time.time()
        key = (facility, service, route, method, status)
        outcome = Outcome(now, 0.0, facility, service, route, method, status, error_type, None, key, span)
        self._seq += 1
        self._waiters.append((self._seq, done))
        self._held.append((self._seq, pending(outcome, facts)))
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._ship)
        try:
            return await asyncio.wait_for(done, HOLD_TIMEOUT_S)
        except TimeoutError:
            return False

    def record_read(
        self, token: str, peer: str | None, query: str, t_s: float, denied: str | None = None
    ) -> None:
        """A read of the trail, recorded in it like any access (by the admin token's name);
        ``denied``: a refused one, with the reason."""
        if len(self._queue) >= self.settings.max_queue:
            self._counters.audit_dropped(1)
            return
        self._queue.append(events.trail_read_facts(token, peer, query, t_s, denied))

    def search(self, query: AuditQuery) -> list[dict[str, Any]]:
        """The events ``query`` selects, of every chain of the trail, in time order (a line
        still being written, by this process or another, is not read yet)."""
        root = self.settings.root or self.settings.directory
        return [rec.event for rec in all_records(root, self.keyring, partial_tail=True) if query.matches(rec)]

    # -- the writer process ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer; raises ``WriterError`` when it cannot open the trail."""
        self._child = await self._spawn()
        self._shipping = asyncio.create_task(self._ship_loop(), name="vitalgate-audit-ship")

    async def _spawn(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.audit.writer",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=FRAME.size + (1 << 20),
        )
        child = _Child(proc)
        spec = pickle.dumps(self._spec)
        child.stdin.write(FRAME.pack(len(spec)) + spec)
        reasons: list[str] = []
        try:
            while True:
                reply = await asyncio.wait_for(_read_frame(child.stdout), START_TIMEOUT_S)
                if reply is None or reply[0] == "ready":
                    break
                if reply[0] == "error":
                    reasons.append(str(reply[1]))
                else:
                    self._on_message(child, reply)
        except (TimeoutError, OSError) as exc:
            reply, reasons = None, [*reasons, f"{type(exc).__name__}: {exc}"]
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # a close during the start: this writer never took anything
            raise
        if reply is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise WriterError(f"audit writer: {'; '.join(reasons or ['it did not start'])}")
        self.durable_size = int(reply[1])
        child.reader = asyncio.create_task(self._read_loop(child), name="vitalgate-audit-replies")
        return child

    async def _ship_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(SHIP_INTERVAL_S)
            child = self._child
            if child is None or child.dead:
                await self._restart()
            self._ship()

    def _ship(self) -> None:
        self._kicked = False
        child = self._child
        if child is None or child.dead or (not self._queue and not self._held):
            return
        transport = child.stdin.transport
        if transport.get_write_buffer_size() > MAX_UNSENT_BYTES and not self._stopping:
            return  # the writer is behind: the queue waits here, bounded by max_queue
        numbered = [self._held.popleft() for _ in range(len(self._held))]
        held = [p for _, p in numbered]
        seq = numbered[-1][0] if numbered else -1
        batch = [self._queue.popleft() for _ in range(len(self._queue))]
        child.shipped += len(batch) + len(held)
        # A writer that died cannot take it: its reader counts and logs what it never
        # accounted for, this batch included, and the next writer gets what is queued after.
        with contextlib.suppress(OSError):
            child.stdin.write(frame((batch, held, seq)))

    async def _restart(self) -> None:
        try:
            self._child = await self._spawn()
        except WriterError as exc:
            self._counters.audit_write_error()
            log.error(
                "%s; trying again in %g s", exc, RESTART_AFTER_S, extra={"event": "audit_writer_failed"}
            )
            await asyncio.sleep(RESTART_AFTER_S)
            return
        log.warning("audit: writer started again", extra={"event": "audit_writer_restarted"})

    async def _read_loop(self, child: _Child) -> None:
        while (message := await _read_frame(child.stdout)) is not None:
            self._on_message(child, message)
        code = await child.proc.wait()
        child.dead = True
        lost = child.shipped - child.accounted
        # Held responses are answered 503 now, and recorded as such by ``request``.
        self._held.clear()
        self._answer(False, len(self._waiters))
        if self._stopping and code == 0:
            return
        self._counters.audit_write_error()
        if lost:
            self._counters.audit_dropped(lost)
        log.error(
            "audit: the writer exited (code %s); %d requests' records lost with it",
            code,
            lost,
            extra={"event": "audit_writer_exited", "lost": lost},
        )

    def _on_message(self, child: _Child, m: tuple[Any, ...]) -> None:
        kind = m[0]
        if kind == "accounted":
            child.accounted += m[1]
            if m[2]:
                self._counters.audit_written(m[2])
        elif kind == "ack":
            last, ok = m[1], m[2]
            n = 0
            for seq, _ in self._waiters:
                if seq > last:
                    break
                n += 1
            self._answer(ok, n)
        elif kind == "durable":
            self.durable_size = m[1]
        elif kind == "dropped":
            self._counters.audit_dropped(m[1])
        elif kind == "write_error":
            self._counters.audit_write_error()
        elif kind == "failing":
            self._failing = m[1]
        elif kind == "checkpoint":
            self.last_checkpoint = m[1]
            if self._publish is not None:
                self._publish(m[1])
        elif kind == "log":
            log.log(m[1], "%s", m[2], extra=m[3])
        else:
            log.error("audit: the writer sent %r, which this gateway does not know", kind)

    def _answer(self, ok: bool, n: int) -> None:
        """Settle the first ``n`` waiters (one that timed out has gone)."""
        for _ in range(n):
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(ok)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Ship everything queued, have the writer write it and sign a last checkpoint."""
        if self._shipping is None:
            return
        self._stopping = True
        self._shipping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._shipping
        self._shipping = None
        child = self._child
        if (child is None or child.dead) and (self._queue or self._held):
            # The writer died and its successor had not started: one more, for what is queued.
            try:
                child = self._child = await self._spawn()
            except WriterError as exc:
                log.error("%s", exc, extra={"event": "audit_writer_failed"})
        if child is not None and not child.dead:
            self._ship()
            child.stdin.close()  # the writer's signal to finish
            try:
                await asyncio.wait_for(child.proc.wait(), timeout_s)
            except TimeoutError:
                child.proc.kill()  # its reader counts and logs what it did not write
                log.error(
                    "audit: the writer did not finish within %g s (the disk did not take its records)",
                    timeout_s,
                    extra={"event": "audit_lost_at_shutdown"},
                )
                await child.proc.wait()
            if child.reader is not None:  # its last replies: the final checkpoint among them
                await child.reader
        lost = len(self._queue) + len(self._held)
        if lost:
            self._counters.audit_dropped(lost)
            log.error(
                "audit: %d requests' records not shipped to the writer at shutdown",
                lost,
                extra={"event": "audit_lost_at_shutdown"},
            )
