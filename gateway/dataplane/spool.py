"""Response buffering: an answer the client takes slower than the upstream sends it is held by
the gateway, so the upstream connection goes back to the pool when the upstream is done.

Without it, a client that stops reading holds an upstream connection until
``limits.client_write_timeout``: four such clients hold a ``max_connections: 4`` pool, and
every other client of that upstream gets 503. nginx answers the same attack by reading the
upstream's answer into buffers and a temporary file (``proxy_buffering``,
``proxy_max_temp_file_size``); this is the same shape:

- while the client keeps up, bytes go straight to it (no copy, no task);
- once its socket is full, what follows is queued: in memory up to ``memory_bytes``, then
  in one temporary file per response up to ``max_file_bytes``, and a task of its own sends
  the queue to the client in order (still bounded by ``client_write_timeout``);
- a file that cannot be created or written (a full disk), or that reached its limit, makes
  the rest of that response wait for the client, as without a spool (counted, never failed).

The files hold patient data. Each record is sealed with AES-GCM under a key made when the
process first spools and kept only in its memory (one key per process; a ``--workers``
worker makes its own), so a file read from the disk, or left on it, is noise. A file is
created unreadable to others (0600) in ``limits.temp_path`` and unlinked at once, so only
its open descriptor keeps it: it is gone when the response is sent or the client leaves, and
after a crash (``kill -9``) the kernel frees it; what the instant between creating and
unlinking could leave is removed when a process starts (``prepare``). ``cryptography`` is
imported only when spooling is on, when the process starts (``prepare``), never by importing
this module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
from typing import Any, Final, Protocol

from gateway.dataplane.errors import SpoolError
from gateway.dataplane.flow import wake
from gateway.dataplane.httpserver import Request
from gateway.dataplane.settings import SpoolSettings

log = logging.getLogger("vitalgate.spool")
FILE_PREFIX: Final = "vitalgate-spool-"
"""``vitalgate-spool-{pid}-{n}``: the pid says whose a leftover was."""
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16


class SpoolCounters(Protocol):
    def spooled(self, n: int) -> None:
        """``n`` bytes of a response were written to a spool file."""

    def spool_error(self, operation: str) -> None:
        """A spool file could not be created, written or read (``operation``)."""

    def spool_fallback(self, reason: str) -> None:
        """A response went on without its file (``error``, ``limit``): the client is waited for."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


class Spool:
    """Spool files of one process: where they go, how large one may grow, and the key."""

    def __init__(self, settings: SpoolSettings, counters: SpoolCounters) -> None:
        self.directory = settings.directory
        self.max_file_bytes = settings.max_file_bytes
        self.memory_bytes = settings.memory_bytes
        self.counters = counters
        self._aead: Any = None
        self._invalid: type[Exception] = ValueError
        """cryptography's InvalidTag once loaded: a record altered on disk."""
        self._pid = 0
        self._nonce_prefix = b""
        self._sealed = 0
        self._files = 0

    def prepare(self) -> int:
        """Create the directory (0700) if needed, check that a file can be made in it, and
        remove what a process that died left there; how many files were removed. Raises
        OSError (the caller names ``limits.temp_path``)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        removed = 0
        me = os.getpid()
        for name in os.listdir(self.directory):
            if not name.startswith(FILE_PREFIX):
                continue
            pid_text = name[len(FILE_PREFIX) :].partition("-")[0]
            if pid_text.isdigit() and int(pid_text) != me and _alive(int(pid_text)):
                continue  # another worker's, just created and about to be unlinked
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, name))
                removed += 1
        os.close(self.open())
        self._cipher()  # loaded now, not while the first slow client waits
        return removed

    def open(self) -> int:
        """A new spool file's descriptor: created 0600, exclusively, then unlinked."""
        self._files += 1
        path = os.path.join(self.directory, f"{FILE_PREFIX}{os.getpid()}-{self._files}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.unlink(path)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _cipher(self) -> Any:
        pid = os.getpid()
        if self._aead is None or self._pid != pid:
            # Imported here: only a process that spools pays for loading cryptography. A new
            # key in each process (a forked worker must not share the nonce sequence).
            from cryptography.exceptions import InvalidTag  # noqa: PLC0415
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

            self._invalid = InvalidTag
            self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
            self._pid = pid
            self._nonce_prefix = os.urandom(4)
            self._sealed = 0
        return self._aead

    def seal(self, data: bytes) -> bytes:
        """One record: a nonce never used before under this process's key, then the ciphertext."""
        aead = self._cipher()
        self._sealed += 1
        nonce = self._nonce_prefix + self._sealed.to_bytes(8, "big")
        sealed: bytes = aead.encrypt(nonce, data, None)
        return nonce + sealed

    def open_record(self, record: bytes) -> bytes:
        """The plaintext of a record ``seal`` made; ValueError if it was altered or cut."""
        aead = self._cipher()
        try:
            opened: bytes = aead.decrypt(record[:_NONCE_BYTES], record[_NONCE_BYTES:], None)
        except self._invalid as exc:
            raise ValueError("a spool record does not open under this process's key") from exc
        return opened

    def buffer(self, request: Request) -> ResponseBuffer:
        return ResponseBuffer(self, request)


class ResponseBuffer:
    """The rest of one response, queued for a client that is behind. ``put`` never waits for
    the client while the spool takes the bytes; ``finish`` waits until all were sent."""

    __slots__ = (
        "_broken",
        "_done",
        "_end",
        "_error",
        "_fd",
        "_limited",
        "_memory",
        "_more",
        "_on_disk",
        "_request",
        "_room",
        "_segments",
        "_spool",
        "_task",
    )

    def __init__(self, spool: Spool, request: Request) -> None:
        self._spool = spool
        self._request = request
        self._segments: collections.deque[bytes | tuple[int, int]] = collections.deque()
        """In order: bytes held in memory, or (offset, length) of a sealed record in the file."""
        self._memory = 0
        self._fd = -1
        self._end = 0
        self._on_disk = 0
        self._broken = False
        self._limited = False
        self._done = False
        self._error: BaseException | None = None
        self._more: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._task = asyncio.get_running_loop().create_task(self._send())

    async def put(self, data: bytes) -> None:
        """Queue the next part of the body; waits only when it could not go to the file."""
        if self._error is not None:
            raise self._error
        bound = self._spool.memory_bytes
        if self._memory + len(data) <= bound or not self._to_file(data):
            self._segments.append(data)
            self._memory += len(data)
        wake(self._more)
        while self._memory > bound and self._error is None:
            # No file to take it: as without a spool, the upstream waits for the client.
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        if self._error is not None:
            raise self._error

    async def finish(self) -> None:
        """Everything was put: wait until the client has it all (raises what sending raised)."""
        self._done = True
        wake(self._more)
        await self._task

    def close(self) -> None:
        """Stop sending (if still running) and let the file go: unlinked already, closing it
        frees its space."""
        task = self._task
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # raised to the handler already (by put or finish)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError as exc:
                self._spool.counters.spool_error("close")
                log.warning("closing a spool file failed: %s", exc.strerror)

    def _to_file(self, data: bytes) -> bool:
        spool = self._spool
        if self._broken:
            return False
        size = _NONCE_BYTES + len(data) + _TAG_BYTES
        if self._end + size > spool.max_file_bytes:
            if not self._limited:
                self._limited = True
                spool.counters.spool_fallback("limit")
            return False
        operation = "create"
        try:
            if self._fd < 0:
                self._fd = spool.open()
            operation = "write"
            record = spool.seal(data)
            written = os.pwrite(self._fd, record, self._end)
            if written != len(record):
                raise OSError(errno.ENOSPC, "short write: the disk took only part of a record")
        except OSError as exc:
            # A full disk or a directory gone: never the request's failure. The rest of this
            # response waits for the client, as it would without a spool.
            self._broken = True
            spool.counters.spool_error(operation)
            spool.counters.spool_fallback("error")
            log.warning(
                "spooling a response failed (%s): %s; streaming it instead",
                operation,
                exc.strerror,
                extra={"event": "spool_error", "operation": operation},
            )
            return False
        self._segments.append((self._end, len(record)))
        self._end += len(record)
        self._on_disk += 1
        spool.counters.spooled(len(data))
        return True

    def _from_file(self, offset: int, length: int) -> bytes:
        try:
            record = os.pread(self._fd, length, offset)
            data = self._spool.open_record(record)
        except (OSError, ValueError) as exc:
            # An I/O error, or a record that does not open (altered on disk):
            # what is left of the response is lost, so it cannot be completed.
            self._spool.counters.spool_error("read")
            raise SpoolError(f"a spooled part of the response could not be read back: {exc}") from exc
        self._on_disk -= 1
        if self._on_disk == 0:
            # Sent all the file held: start it again from the beginning, its space freed.
            self._end = 0
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:  # only space given back later (at close): counted, logged
                self._spool.counters.spool_error("truncate")
                log.warning("truncating a spool file failed: %s", exc.strerror)
        return data

    async def _send(self) -> None:
        segments = self._segments
        try:
            while True:
                if not segments:
                    if self._done:
                        return
                    self._more = asyncio.get_running_loop().create_future()
                    await self._more
                    self._more = None
                    continue
                segment = segments.popleft()
                if isinstance(segment, bytes):
                    self._memory -= len(segment)
                    data = segment
                    wake(self._room)
                else:
                    data = self._from_file(segment[0], segment[1])
                await self._request.write(data)
        except BaseException as exc:
            self._error = exc
            wake(self._room)
            raise
