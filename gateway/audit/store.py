"""The audit store: append-only daily segment files of encrypted, hash-chained records, with
signed checkpoints and signed seals.

A segment is ``segments/YYYY-MM-DD.seg`` (the UTC day of writing), one JSON object a line::

    {"i": 17, "t": 1764640000123, "k": "<key id>", "n": "<nonce>", "c": "<ciphertext>", "h": "<hash>"}

``c`` is the record's facts (``events.facts``: a JSON array the AuditEvent is rendered from
when read), AES-256-GCM under key ``k`` with the record's position and the previous hash as
associated data, so a record cannot be moved or replayed elsewhere in the
chain. ``h`` = SHA-256 of the previous record's ``h`` and this record's other fields: changing,
removing, inserting or reordering a record breaks every hash after it. The first day a record
is written into a new segment, the previous one gets a last line ``{"seal": ...}`` (signed)
and becomes read-only.

A checkpoint is a signed ``(size, head hash, time)``: written to ``checkpoints.jsonl`` every
``checkpoint_interval`` and at shutdown, and handed to ``publish`` (the access log), so that
the chain's length and head are also held somewhere the store's owner cannot rewrite alone:
truncating the tail or replacing the whole store no longer matches a published checkpoint.
This is a hash chain with signed checkpoints, not an RFC 6962 Merkle tree: ``verify`` reads
the whole chain, which is a minute for a million records, rather than a logarithmic proof.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.keys import Keyring, public_id
from gateway.dataplane.auditrecord import encode_line, encode_run, nonces

GENESIS = "0" * 64
SEGMENTS = "segments"
CHECKPOINTS = "checkpoints.jsonl"
DELETIONS = "deletions.jsonl"
LOCK_FILE = ".writer.lock"
"""Held (``flock``) by the chain's one writer while it runs."""
CHECKPOINT_EVENT = "audit_checkpoint"
CHECKPOINT_SPAN = "audit checkpoint"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def facts_of(plain: bytes) -> list[Any]:
    """The facts (``events.facts``) in a record's decrypted content."""
    try:
        fields = orjson.loads(plain)
    except orjson.JSONDecodeError:
        raise ValueError("not an audit record") from None
    if not isinstance(fields, list):
        raise ValueError("not an audit record")
    return fields


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
DAY_MS = 86_400_000


def segment_name(t_ms: int) -> str:
    """The segment of a record written at ``t_ms``: its UTC day (asked for every record)."""
    return date.fromordinal(_EPOCH_ORDINAL + t_ms // DAY_MS).isoformat() + ".seg"


def _signed_bytes(kind: str, body: dict[str, Any]) -> bytes:
    return (kind + "|" + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()


def sign(kind: str, body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``body`` with ``signer`` (the public key's id) and ``sig`` over both."""
    body = {**body, "signer": public_id(key.public_key())}
    return {**body, "sig": _b64(key.sign(_signed_bytes(kind, body)))}


def signature_ok(kind: str, signed: dict[str, Any], key: Ed25519PublicKey) -> bool:
    body = {k: v for k, v in signed.items() if k != "sig"}
    try:
        key.verify(base64.b64decode(str(signed.get("sig", ""))), _signed_bytes(kind, body))
    except (InvalidSignature, ValueError):
        return False
    return body.get("signer") == public_id(key)


@dataclass
class Head:
    size: int
    """Records in the chain (the next record's ``i``)."""
    hash: str
    segment: str | None
    """The segment the last record is in."""


class StoreCorrupt(Exception):
    """The store cannot be appended to as found (``vitalgate audit verify`` says why)."""


def _last_line(path: Path) -> tuple[bytes | None, int]:
    """The last complete line of ``path``, and the length of a torn tail after it (a write
    cut by a crash: never confirmed, so never counted as recorded)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        window = 1 << 16
        while True:
            start = max(0, size - window)
            f.seek(start)
            data = f.read(size - start)
            end = data.rfind(b"\n")
            if end < 0 and start > 0:
                window *= 2
                continue
            if end < 0:
                return None, size
            begin = data.rfind(b"\n", 0, end) + 1
            if begin == 0 and start > 0:
                window *= 2
                continue
            return data[begin:end], len(data) - end - 1


def recover(directory: Path) -> tuple[Head, int]:
    """The chain's head as the segments hold it, a torn last line cut off; and how many bytes
    were cut."""
    seg_dir = directory / SEGMENTS
    segments = sorted(seg_dir.glob("*.seg")) if seg_dir.exists() else []
    for path in reversed(segments):
        line, torn = _last_line(path)
        if torn:
            with path.open("r+b") as f:
                f.truncate(path.stat().st_size - torn)
                os.fsync(f.fileno())
        if line is None:
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise StoreCorrupt(f"{path}: the last line is not JSON") from exc
        if "seal" in rec:
            seal = rec["seal"]
            return Head(int(seal["size"]), str(seal["head"]), path.name), torn
        return Head(int(rec["i"]) + 1, str(rec["h"]), path.name), torn
    deleted = list(read_jsonl(directory / DELETIONS))
    if deleted:
        last = deleted[-1]
        return Head(int(last["size"]), str(last["head"]), None), 0
    return Head(0, GENESIS, None), 0


def last_checkpoint_size(directory: Path) -> int | None:
    """The size the chain's last kept checkpoint signed (None: no checkpoint)."""
    path = directory / CHECKPOINTS
    if not path.exists():
        return None
    line, _ = _last_line(path)
    return int(json.loads(line)["size"]) if line else None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class Appender:
    """Writes records at the chain's head (one thread at a time: the audit writer's)."""

    def __init__(self, directory: Path, keyring: Keyring, signer: Ed25519PrivateKey, chain: str = "") -> None:
        self.directory = directory
        self.chain = chain
        """Which chain of the trail this is: "" for a single gateway process, ``worker-N`` or
        ``supervisor`` with ``--workers`` (one chain per writer); named in each checkpoint."""
        self.keyring = keyring
        self.signer = signer
        (directory / SEGMENTS).mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if chain:
            os.chmod(directory.parent, 0o700)
        self.head, self.torn_bytes = recover(directory)
        self._fd: int | None = None
        self._fd_segment: str | None = None
        self._seal = keyring.keys[keyring.current].encrypt
        self._day = -1
        """The UTC day of the open segment (``t_ms // DAY_MS``), once a record was placed."""

    def encode(self, plaintext: bytes, t_ms: int) -> bytes:
        """The next record's line (the head advances; written by ``write``)."""
        head = self.head
        line, head.hash = encode_line(
            self._seal, self.keyring.current, head.size, head.hash, plaintext, t_ms, nonces(1)
        )
        head.size += 1
        return line

    def append(self, records: list[tuple[int, Any]]) -> None:
        """Encode and write ``(t_ms, facts)`` records in order (``facts``: a JSON array, as
        ``events.facts`` makes), each in its day's segment (the previous one sealed where a new
        day starts)."""
        seal, kid, head = self._seal, self.keyring.current, self.head
        random = nonces(len(records))
        i = 0
        while i < len(records):
            if records[i][0] // DAY_MS != self._day:
                self.segment_for(records[i][0])
            lines, size, h, i = encode_run(
                seal, orjson.dumps, kid, head.size, head.hash, records, i, self._day, DAY_MS, random
            )
            head.size, head.hash = size, h
            self.write(lines)

    def segment_for(self, t_ms: int) -> None:
        """Records from ``t_ms`` on go to that day's segment: the previous one is sealed."""
        name = segment_name(t_ms)
        self._day = t_ms // DAY_MS
        if name == self.head.segment:
            return
        if self.head.segment is not None and (self.directory / SEGMENTS / self.head.segment).exists():
            seal = sign(
                "seal",
                {"segment": self.head.segment, "size": self.head.size, "head": self.head.hash, "t": t_ms},
                self.signer,
            )
            self.write([json.dumps({"seal": seal}, separators=(",", ":")).encode() + b"\n"])
            self.sync()
            self._close()
            os.chmod(self.directory / SEGMENTS / str(seal["segment"]), 0o400)
        self.head.segment = name

    def write(self, lines: list[bytes]) -> None:
        """Append whole lines; raises OSError (a full or failing disk) with none half written
        left behind for the next write to follow."""
        assert self.head.segment is not None
        if self._fd_segment != self.head.segment:
            self._close()
            path = self.directory / SEGMENTS / self.head.segment
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fd_segment = self.head.segment
        assert self._fd is not None
        data = b"".join(lines)
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            os.ftruncate(self._fd, start)
            raise

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def checkpoint(self, publish: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        """Sign the head, keep it in ``checkpoints.jsonl`` and publish it."""
        cp = sign(
            "checkpoint",
            {
                "chain": self.chain,
                "size": self.head.size,
                "head": self.head.hash,
                "t": int(time.time() * 1000),
            },
            self.signer,
        )
        fd = os.open(self.directory / CHECKPOINTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, json.dumps(cp, separators=(",", ":")).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if publish is not None:
            publish(cp)
        return cp

    def rollback(self, head: Head) -> None:
        """Back to ``head`` after a write that failed (its lines were cut off again)."""
        self.head = Head(head.size, head.hash, self.head.segment)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._fd_segment = None

    def close(self) -> None:
        self._close()
