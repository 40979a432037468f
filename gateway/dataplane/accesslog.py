"""The JSON access log: one line per proxied request, written off the event loop.

The access log is a request sink (``gateway/dataplane/outcome.py``): each
request's outcome is formatted on the event loop (about 2 us compiled) and
queued; a thread writes the queue. The queue is bounded: when the writer
cannot keep up (a full disk, a stalled stdout pipe) lines are dropped and
counted, and the proxy never waits.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from core import conventions as names
from gateway.dataplane.outcome import Outcome

log = logging.getLogger("vitalgate.accesslog")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_KEYS: Final = tuple(json.dumps(name) + ":" for name in names.REQUEST_FIELDS)
# The fixed pieces of a request line, field names spelled by core.conventions.
_K_TIMESTAMP: Final = "{" + json.dumps(names.LOG_TIMESTAMP) + ':"'
_K_EVENT: Final = (
    'Z",' + json.dumps(names.LOG_EVENT) + ":" + json.dumps(names.REQUEST_EVENT) + "," + _KEYS[0] + '"'
)
_K_SPAN: Final = '",' + _KEYS[1] + '"'
_K_FLAGS: Final = '",' + _KEYS[2] + '"'
_K_STATUS: Final = "," + _KEYS[7]
_K_DURATION: Final = "," + _KEYS[8]
_K_UPSTREAM: Final = "," + _KEYS[9]
_K_ERROR: Final = "," + _KEYS[10]
_quote = json.encoder.encode_basestring_ascii  # the C string encoder


_PAD3: Final = tuple(f"{i:03d}" for i in range(1000))


class RequestFormatter:
    """Request lines built by hand: this runs for every request, on the event loop, so it is
    kept to a couple of microseconds (json.dumps of a dict with a datetime took about 18 us
    here). The labels part of a line (facility, service, route, method) is bounded like the
    metric labels, so it is quoted once per label set and reused."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._labels: dict[tuple[Any, ...], str] = {}

    def _label_part(self, key: tuple[Any, ...]) -> str:
        part = self._labels.get(key)
        if part is None:
            part = "".join(f",{k}{_quote(v)}" for k, v in zip(_KEYS[3:7], key, strict=True) if v is not None)
            if len(self._labels) < 20_000:
                self._labels[key] = part
        return part

    def __call__(self, o: Outcome) -> str:
        ts = o.started
        second = int(ts)
        if second != self._second:  # date and time change once a second; milliseconds every line
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        key = (o.facility, o.service, o.route or None, o.method)
        labels = self._labels.get(key)
        if labels is None:
            labels = self._label_part(key)
        # Only plain interpolations of str and int: compiled, that is one concatenation, where a
        # format spec or a float repr costs more than the rest of the line. Milliseconds carry
        # three decimals, built from integers with a table of zero-padded digits.
        ms = int((ts - second) * 1000)
        us = int(o.duration_s * 1_000_000.0 + 0.5)
        ctx = o.context
        line = (
            f"{_K_TIMESTAMP}{self._prefix}.{_PAD3[ms]}{_K_EVENT}{ctx.trace_hex()}{_K_SPAN}{ctx.span_hex()}"
            f'{_K_FLAGS}{ctx.flags_hex()}"{labels}{_K_STATUS}{o.status}'
            f"{_K_DURATION}{us // 1000}.{_PAD3[us % 1000]}"
        )
        up_ms = o.upstream_ms
        if up_ms is not None:
            us = int(up_ms * 1000.0 + 0.5)
            line += f"{_K_UPSTREAM}{us // 1000}.{_PAD3[us % 1000]}"
        if o.error_type is not None:
            line += _K_ERROR + _quote(o.error_type)
        return line + "}"


def format_event(ts: float, event: str, fields: dict[str, Any]) -> str:
    return json.dumps({"timestamp": rfc3339(ts), "event": event, **fields}, separators=(",", ":"))


_PIPE_BUF: Final = 4096
WRITE_INTERVAL_S: Final = 0.05


class AccessLog:
    """A bounded, thread-written JSON lines log. ``path`` "-" is stdout."""

    def __init__(
        self,
        path: str | Path,
        queue_size: int,
        on_drop: Callable[[int], None],
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._path = str(path)
        self._on_error = on_error
        # The proxy's side is a length check and a deque append (atomic under the GIL); the
        # writer thread wakes every WRITE_INTERVAL_S and writes everything queued, so a busy
        # gateway pays no lock or thread wake-up per request.
        self._items: collections.deque[str] = collections.deque()
        self.format = RequestFormatter()
        self._queue_size = queue_size
        self._wake = threading.Event()
        self._stopping = False
        self._on_drop = on_drop
        self._writer_thread: threading.Thread | None = None
        self._fd: int | None = None
        self._regular = False  # a file (a torn line can be cut off), not a pipe or a device
        self._unwritten = 0  # lines of the batch being written not yet written (or dropped)

    def start(self) -> None:
        if self._path == "-":
            sys.stdout.flush()
            self._fd = sys.stdout.fileno()
        else:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._writer_thread = threading.Thread(target=self._run, name="vitalgate-access-log", daemon=True)
        self._writer_thread.start()

    def request(self, outcome: Outcome) -> None:
        """Format and queue a request's line (a request sink). Never blocks.

        Lines are formatted on the request path (about 2 us compiled) rather than in the
        writer thread: a thread formatting a batch holds the GIL while the event loop waits
        for it, and a queued string is nothing for the garbage collector to walk."""
        if len(self._items) >= self._queue_size:
            self._on_drop(1)
        else:
            self._items.append(self.format(outcome))

    def event(self, ts: float, event: str, fields: dict[str, Any]) -> None:
        """Queue any other event (e.g. an admin access). Never blocks."""
        if len(self._items) >= self._queue_size:
            self._on_drop(1)
        else:
            self._items.append(format_event(ts, event, fields))
            self._wake.set()  # rare: written at once

    @property
    def depth(self) -> int:
        """Lines queued and not yet written."""
        return len(self._items)

    def _run(self) -> None:
        fd = self._fd
        assert fd is not None
        items = self._items
        while True:
            self._wake.wait(WRITE_INTERVAL_S)
            self._wake.clear()
            stop = self._stopping
            while items:
                lines: list[str] = []
                while items and len(lines) < 4096:
                    lines.append(items.popleft())
                self._unwritten = len(lines)
                self._write(fd, lines)
            if stop:
                return

    def _write(self, fd: int, lines: list[str]) -> None:
        """Whole lines per write(2), at most PIPE_BUF bytes each: with several gateway workers
        appending to one file (O_APPEND) or one pipe, no line is ever split or interleaved."""
        piece: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", "replace") + b"\n"
            if piece and size + len(data) > _PIPE_BUF:
                self._write_piece(fd, piece)
                piece, size = [], 0
            piece.append(data)
            size += len(data)
        if piece:
            self._write_piece(fd, piece)

    def _write_piece(self, fd: int, piece: list[bytes]) -> None:
        data = b"".join(piece)
        start = -1
        try:
            if self._regular:
                start = os.fstat(fd).st_size
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            # A full disk: the piece is lost, and counted (as lines dropped, and as a write
            # error). Part of it may be in the file: cut it off (when no other writer appended
            # since), so no torn JSON line is left behind.
            self._on_drop(len(piece))
            if self._on_error is not None:
                self._on_error()
            if start >= 0 and len(data) < sum(len(p) for p in piece):
                self._untear(fd, start, sum(len(p) for p in piece) - len(data))
        self._unwritten -= len(piece)

    def _untear(self, fd: int, start: int, written: int) -> None:
        try:
            if os.fstat(fd).st_size == start + written:
                os.ftruncate(fd, start)
                return
        except OSError as exc:
            log.warning("access log: a partly written line could not be cut off: %s", exc)
            return
        log.warning("access log: a partly written line is followed by another writer's")

    def close(self, timeout_s: float = 10.0) -> None:
        """Write everything queued, then stop the writer."""
        if self._writer_thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._writer_thread.join(timeout_s)
        if self._writer_thread.is_alive():
            # The output is stalled (a stdout nobody reads): what is still queued, and the batch
            # being written, will never be; counted, and said.
            lost = len(self._items) + max(self._unwritten, 0)
            self._items.clear()
            if lost:
                self._on_drop(lost)
                log.warning(
                    "access log: %d lines not written at shutdown (the output did not"
                    " accept them within %g s); counted in vitalgate_telemetry_dropped_total",
                    lost,
                    timeout_s,
                )
        self._writer_thread = None
        if self._fd is not None and self._path != "-":
            os.close(self._fd)
        self._fd = None
