"""The audit writer: a process of its own beside each gateway process, which turns finished
requests into AuditEvents, encrypts, chains and appends them, fsyncs, signs checkpoints and
expires old segments.

Why a process: that work is about 9 microseconds of Python per record, and in the gateway's
process every microsecond of it holds the interpreter lock the event loop needs, so the trail
cost a fifth of the requests a gateway process could serve. Here it runs beside the event loop,
on another core when the machine has one. The gateway (``gateway.audit.trail``) ships its
queue down a pipe every ``SHIP_INTERVAL_S`` (at once for a strict response being held); this
process writes what it reads at once, so its own crash loses nothing the kernel has, and a
crash of the gateway only what it had not shipped yet. Stdin's end (the gateway gone or
closing) is the signal to write everything, checkpoint and exit.

The pipe: frames of a 4-byte length and a ``marshal`` payload (both ends are this code, of one
installation: marshal is the fastest encoding of the flat tuples the queue holds), the first
frame down being the ``WriterSpec`` (pickled). Up, the replies (``reply_*``): counts for the
gateway's metrics, acknowledgements of strict records, checkpoints to publish, and log
records for the gateway's log (this process writes no log of its own).

A lock on the chain's folder keeps a second writer off the chain while a gateway restarted
after a crash finds the old writer still finishing.
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import marshal
import os
import pickle
import select
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.conventions import PROBE_ROUTE_PREFIX
from gateway.audit import events
from gateway.audit.identity import Identities, IdentitySettings, build
from gateway.audit.keys import AuditKeyError, Keyring, read_signing_key
from gateway.audit.store import LOCK_FILE, Appender, Head, last_checkpoint_size
from gateway.audit.verify import expire
from gateway.dataplane.auditrecord import request_rows
from gateway.diagnostics import QuietThirdParty

log = logging.getLogger("vitalgate.audit")

FRAME = struct.Struct(">I")
READ_CHUNK = 1 << 20
DRAIN_CHUNKS = 16
"""At most this many reads of what is already in the pipe join a turn, so a turn ends."""
SHIP_INTERVAL_S = 0.05
"""How often the gateway ships its queue (the most a crash of the gateway process can lose)."""
RETENTION_EVERY_S = 3600.0
SHAPES_MAX = 10_000
GC_THRESHOLD = 50_000

Pending = tuple[Any, ...]
"""A finished request (``auditrecord.pending``), or a list: a record already made (a read of
the trail, ``events.trail_read_facts``)."""
Group = list[tuple[int, list[Any]]]
"""One request's records, ``(t_ms, facts)``: kept or lost together."""


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
    strict: bool = False
    """``durability: strict``: responses wait for this writer."""


@dataclass(frozen=True)
class WriterSpec:
    """All a writer process needs, sent as its first frame: key files are read by the process
    itself (``vitalgate check`` and the gateway's start have read them already)."""

    settings: TrailSettings
    key_files: tuple[Path, ...]
    signing_key_file: Path
    identity: IdentitySettings | None


# -- framing -------------------------------------------------------------------------------


def frame(message: Any) -> bytes:
    data = marshal.dumps(message)
    return FRAME.pack(len(data)) + data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Frames:
    """Reads frames from a pipe: ``wait`` for the next ones, ``eof`` once the writer closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.eof = False
        self._buf = bytearray()

    def _fill(self, timeout_s: float | None) -> bool:
        if timeout_s is not None:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout_s))
            if not ready:
                return False
        chunk = os.read(self.fd, READ_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self._buf += chunk
        return True

    def _take(self) -> list[Any]:
        out: list[Any] = []
        buf, at = self._buf, 0
        while len(buf) - at >= FRAME.size:
            (n,) = FRAME.unpack_from(buf, at)
            if len(buf) - at - FRAME.size < n:
                break
            # The pipe's other end is this installation's gateway or writer, nothing else.
            out.append(marshal.loads(bytes(buf[at + FRAME.size : at + FRAME.size + n])))  # noqa: S302
            at += FRAME.size + n
        del buf[:at]
        return out

    def raw(self, timeout_s: float | None) -> bytes | None:
        """One frame's payload, undecoded (the spec), or None at the end or the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if len(self._buf) >= FRAME.size:
                (n,) = FRAME.unpack_from(self._buf, 0)
                if len(self._buf) - FRAME.size >= n:
                    data = bytes(self._buf[FRAME.size : FRAME.size + n])
                    del self._buf[: FRAME.size + n]
                    return data
            left = None if deadline is None else deadline - time.monotonic()
            if self.eof or (left is not None and left <= 0):
                return None
            self._fill(left)

    def wait(self, timeout_s: float | None) -> list[Any]:
        """The frames that arrive within ``timeout_s`` (None: until one does, or the end), with
        those already behind them in the pipe: a writer catching up takes many at once."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        frames = self._take()
        while not frames and not self.eof:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._fill(left)
            frames = self._take()
        for _ in range(DRAIN_CHUNKS):
            if self.eof or not self._fill(0.0):
                break
            frames += self._take()
        return frames


# -- the records of a request ---------------------------------------------------------------


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


class Encoder:
    """Pending requests to their records' plaintexts (``events.facts_of`` says what each is)."""

    def __init__(self, settings: TrailSettings, identities: Identities) -> None:
        self.settings = settings
        self.identities = identities
        self._shapes: dict[tuple[str, str, str], events.Shape] = {}

    def _rows(self, p: Pending) -> list[list[Any]]:
        # Runs for every request: the route's patient positions come from a per-route cache.
        if p[20]:
            return self._probe_rows(p)
        return self._rows_of(p, self.identities.resolve(p[16], p[17], p[12], p[0]).row())

    def _rows_of(self, p: Pending, who: list[Any]) -> list[list[Any]]:
        method, query, prefix, route = p[2], p[4], p[5], p[6]
        upstream, body, request_body = p[11], p[18], p[19]
        key = (method, prefix, route)
        shape = self._shapes.get(key)
        if shape is None:
            shape = events.shape(method, prefix, route)
            if len(self._shapes) < SHAPES_MAX:  # templates are bounded; the cache is too
                self._shapes[key] = shape
        named = events.query_patients(query) if query else []
        cut = 0
        if body and shape.searches:
            found, cut = patients_in(body, self.settings.max_patients)
            named += found
        address = self.settings.upstream_addresses.get(upstream) or str(upstream)
        btype = bundle_type(request_body) if request_body else None
        return request_rows(p, address, btype, who, shape.patient_segments, named, cut)

    def _probe_rows(self, p: Pending) -> list[list[Any]]:
        """A synthetic probe's records: the gateway's system agent, never a user; under the
        route template (its telemetry route is ``probe {template}``), so with the interaction a
        client's same request has. A probe whose request and results name no patient (the
        default, ``{prefix}metadata``) touched no one's record: none, which spares the trail
        two records a minute per facility and upstream."""
        route = p[6].removeprefix(PROBE_ROUTE_PREFIX)
        rows = self._rows_of((*p[:6], route, *p[7:]), events.PROBE_WHO.row())
        if all(row[-3] is None for row in rows):
            return []
        for row in rows:
            row[1] = events.PROBE
        return rows

    def groups(self, batch: Sequence[Pending | list[Any]]) -> list[Group]:
        out: list[Group] = []
        for o in batch:
            if isinstance(o, list):
                out.append([(int(o[2] * 1000), o)])
                continue
            t_ms = int(o[1] * 1000)
            out.append([(t_ms, record) for record in self._rows(o)])
        return out


# -- the process ------------------------------------------------------------------------------


class Relay(logging.Handler):
    """Sends this process's log records to the gateway, which logs them as its own."""

    _PLAIN = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def __init__(self, up: Up) -> None:
        super().__init__()
        self.up = up

    def emit(self, record: logging.LogRecord) -> None:
        extra = {k: v for k, v in record.__dict__.items() if k not in self._PLAIN}
        message = record.getMessage()
        if not self.up.send("log", record.levelno, message, extra):
            # The gateway is gone; its stderr (which this process shares) may still be read.
            line = {"level": record.levelname.lower(), "logger": record.name, "message": message, **extra}
            sys.stderr.write(json.dumps(line, default=str) + "\n")


class Up:
    """The pipe to the gateway. Once the gateway is gone, replies are dropped: the records
    still being written matter more, and nobody is left to count for."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.gone = False

    def send(self, *message: Any) -> bool:
        if self.gone:
            return False
        try:
            write_all(self.fd, frame(message))
        except OSError:
            self.gone = True
            return False
        return True


class Writer:
    """The chain's one writer: what it is sent is appended at once, fsynced every
    ``flush_interval`` (at once for strict records), checkpointed every
    ``checkpoint_interval`` and at the end."""

    def __init__(self, spec: WriterSpec, up: Up) -> None:
        self.settings = spec.settings
        self.up = up
        keyring = Keyring.load(list(spec.key_files))
        self.signer = read_signing_key(spec.signing_key_file)
        self.encoder = Encoder(spec.settings, build(spec.identity))
        self.appender = Appender(spec.settings.directory, keyring, self.signer, spec.settings.chain)
        self.pending: list[Group] = []
        """Requests' records a failed write left, tried again first (at most ``max_queue``)."""
        self.failing = False
        self.unsynced = False

    def reply(self, *message: Any) -> None:
        self.up.send(*message)

    def commit(self, batched: list[Group], held: list[Group], sync: bool) -> bool:
        """Append the kept, the batched and the held records; fsync when ``sync`` or any are held.
        A failed write keeps the batched ones for the next try, never the held: their responses
        are answered 503, and that outcome comes as a request of its own."""
        app = self.appender
        kept = self.pending + batched
        records = [r for g in kept for r in g] + [r for g in held for r in g]
        written = False
        before = Head(app.head.size, app.head.hash, app.head.segment)
        try:
            if records:
                app.append(records)
                written = True
                self.unsynced = True
            if self.unsynced and (sync or held):
                app.sync()
                self.unsynced = False
                self.reply("durable", app.head.size)
        except OSError as exc:
            self.reply("write_error")
            if not written:
                app.rollback(before)
                # Nothing of this try is on disk (``append`` cut off what it began): kept for the
                # next. After a failed fsync the lines stay written and the head stays after
                # them; whether the kernel keeps them is what ``verify`` will tell.
                over = len(kept) - self.settings.max_queue
                if over > 0:
                    self.reply("dropped", over)
                    kept = kept[over:]
                self.pending = kept
                self.reply("accounted", len(held) + max(0, over), 0)
            else:
                self.pending = []
                self.reply("accounted", len(kept) + len(held), len(records))
            if not self.failing:
                self.failing = True
                self.reply("failing", True)
                log.error(
                    "audit: writing the trail failed (%s); %d requests' records kept for the next try",
                    exc.strerror or exc,
                    len(self.pending),
                    extra={"event": "audit_write_failed"},
                )
            return False
        if self.failing:
            self.failing = False
            self.reply("failing", False)
            log.warning("audit: writes succeed again", extra={"event": "audit_write_recovered"})
        self.pending = []
        if records:
            self.reply("accounted", len(kept) + len(held), len(records))
        return True

    def _failed(self, what: str, event: str, exc: OSError) -> None:
        """A checkpoint or an expiry the disk refused: counted and logged, tried again later."""
        self.reply("write_error")
        log.error("audit: %s (%s)", what, exc.strerror or exc, extra={"event": event})

    def checkpoint(self) -> None:
        try:
            cp = self.appender.checkpoint(None)
        except OSError as exc:
            self._failed("checkpoint not written", "audit_checkpoint_failed", exc)
            return
        self.reply("checkpoint", cp)

    def checkpoint_found(self) -> None:
        """Records no checkpoint covers at the start (a gateway stopped without shutting down:
        killed, or the machine lost power) are signed at once, as found: ``verify`` fails a
        stopped chain whose tail no checkpoint covers, and a running one whose records wait
        longer than a checkpoint interval for one."""
        try:
            covered = last_checkpoint_size(self.settings.directory)
        except (OSError, ValueError, KeyError) as exc:
            log.error(
                "audit: checkpoints.jsonl unreadable (%s); signing the chain as found",
                exc,
                extra={"event": "audit_checkpoint_unreadable"},
            )
            covered = None
        size = self.appender.head.size
        if size and (covered is None or covered < size):
            log.warning(
                "audit: %d records found that no checkpoint covers (a stop without shutdown, or"
                " checkpoints.jsonl removed); checkpointed now",
                size - (covered or 0),
                extra={"event": "audit_checkpoint_recovered"},
            )
            self.checkpoint()

    def expire(self) -> None:
        try:
            removed = expire(self.settings.directory, self.signer, self.settings.retention_s, time.time())
        except OSError as exc:
            self._failed("expiring old segments failed", "audit_expiry_failed", exc)
            return
        for name in removed:
            log.info(
                "audit: %s removed past retention, with a signed deletion record",
                name,
                extra={"event": "audit_expired"},
            )

    def run(self, frames: Frames) -> None:
        """Until stdin ends: each turn takes every frame sent meanwhile (strict records of many
        responses then share one fsync: group commit)."""
        s = self.settings
        now = time.monotonic()
        next_sync, next_cp, next_expiry = now + s.flush_interval_s, now + s.checkpoint_interval_s, now
        while True:
            got = frames.wait(max(0.0, min(next_sync, next_cp, next_expiry) - time.monotonic()))
            batched: list[Pending | list[Any]] = []
            held: list[Pending] = []
            last_seq = -1
            for items, strict, seq in got:
                batched.extend(items)
                held.extend(strict)
                last_seq = max(last_seq, seq)
            now = time.monotonic()
            sync = now >= next_sync or frames.eof
            ok = self.commit(self.encoder.groups(batched), self.encoder.groups(held), sync)
            if last_seq >= 0:
                self.reply("ack", last_seq, ok)
            if sync:
                next_sync = now + s.flush_interval_s
            if now >= next_cp or frames.eof:
                self.checkpoint()
                next_cp = now + s.checkpoint_interval_s
            if now >= next_expiry and not frames.eof:
                next_expiry = now + RETENTION_EVERY_S
                self.expire()
            if frames.eof:
                if self.pending:
                    self.reply("dropped", len(self.pending))
                    self.reply("accounted", len(self.pending), 0)
                    log.error(
                        "audit: %d requests' records not written at shutdown (the disk did not take them)",
                        len(self.pending),
                        extra={"event": "audit_lost_at_shutdown"},
                    )
                return


def _lock(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while an earlier writer finishes the chain
    return fd


def main() -> int:
    inp, up = sys.stdin.fileno(), Up(os.dup(sys.stdout.fileno()))
    # Nothing but frames goes up the pipe: a stray print goes to stderr, the gateway's.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    root = logging.getLogger()
    relay = Relay(up)
    relay.addFilter(QuietThirdParty())  # the gateway's own rule for libraries' records
    root.handlers[:] = [relay]
    root.setLevel(logging.INFO)
    frames = Frames(inp)
    raw = frames.raw(None)
    if raw is None:
        return 0
    spec: WriterSpec = pickle.loads(raw)  # noqa: S301 (from the gateway that started this process)
    try:
        lock = _lock(spec.settings.directory)
        writer = Writer(spec, up)
    except (OSError, ValueError, AuditKeyError) as exc:
        up.send("error", f"{type(exc).__name__}: {exc}")
        return 1
    if writer.appender.torn_bytes:
        log.warning(
            "audit: a torn last record (%d bytes, never confirmed written) was cut off the store",
            writer.appender.torn_bytes,
            extra={"event": "audit_torn_tail", "bytes": writer.appender.torn_bytes},
        )
    # What this process allocates per record is acyclic and short-lived, but a batch's
    # records are alive at once: with the default threshold the collector would walk them
    # (and every module object, in full collections) many times a batch.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD)
    if not spec.settings.strict:
        # Batched records may wait up to a flush interval: this process must not preempt the
        # ones serving requests (the gateway, and an upstream or a client on the same machine)
        # each time a batch arrives, as an ordinary process waking up does.
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    writer.reply("ready", writer.appender.head.size)
    writer.checkpoint_found()
    writer.run(frames)
    writer.appender.close()
    os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
