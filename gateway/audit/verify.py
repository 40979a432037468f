"""Reading the audit store back: every record checked (``verify``), decrypted (``search``,
``export``), and expired segments removed under a signed deletion record (retention)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import heapq
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit import events
from gateway.audit.keys import Keyring
from gateway.audit.store import (
    CHECKPOINT_EVENT,
    CHECKPOINTS,
    DELETIONS,
    GENESIS,
    LOCK_FILE,
    SEGMENTS,
    facts_of,
    read_jsonl,
    sign,
    signature_ok,
)
from gateway.dataplane.auditrecord import aad, chain_hash


@dataclass
class Report:
    records: int = 0
    segments: int = 0
    checkpoints: int = 0
    anchor: dict[str, Any] | None = None
    problem: str | None = None
    """The first thing wrong (the record and what), or None when the trail is whole."""
    warnings: list[str] = field(default_factory=list)


class _Bad(Exception):
    pass


CHECKPOINT_GRACE_S = 60.0
"""How much later than ``checkpoint_interval`` after a record a running writer's checkpoint
may come: the ship interval, a writer's restart (which checkpoints what it finds at once) and
a queue catching up, with room to spare."""


@dataclass
class Coverage:
    """What ``_records`` notes for the checkpoint rules of ``_check_coverage``."""

    cutoff_ms: int | None = None
    """Records older than this must be covered by a checkpoint (a running writer)."""
    covered: int = 0
    """Records the chain's kept checkpoints cover."""
    first_due: tuple[int, int] | None = None
    """The first record (index, time) older than ``cutoff_ms`` that no checkpoint covers."""


@contextlib.contextmanager
def _stopped(directory: Path) -> Iterator[bool | None]:
    """Whether no writer runs on the chain: True (and kept so while the chain is verified:
    a writer starting meanwhile waits), False when one holds its lock, None when this user
    cannot tell (the lock file unreadable)."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        yield True  # never written here (or a copy of the trail): nothing runs on it
        return
    except PermissionError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


@dataclass
class Record:
    index: int
    t_ms: int
    fields: list[Any]
    """What the store holds of the event (``events.facts``)."""

    @property
    def event(self) -> dict[str, Any]:
        """The FHIR AuditEvent (rendered on each use)."""
        return events.render(self.fields)


def _after_deletions(
    directory: Path, public: Ed25519PublicKey | None, heads: dict[int, str]
) -> tuple[int, str]:
    """Where the kept chain starts: the size and head hash the last deletion record names
    (each checked: signed, and starting where the one before it ended), noted in ``heads``."""
    expected, prev = 0, GENESIS
    for d in read_jsonl(directory / DELETIONS):
        if public is not None and not signature_ok("deletion", d, public):
            raise _Bad(
                f"{DELETIONS}: the deletion record of {d.get('segment')} is not signed by the audit key"
            )
        if int(d["first"]) != expected:
            raise _Bad(f"{DELETIONS}: {d.get('segment')} starts at record {d['first']}, expected {expected}")
        expected, prev = int(d["size"]), str(d["head"])
        heads[expected] = prev
    return expected, prev


def _check_seal(
    seal: Any, segment: str, where: str, expected: int, prev: str, public: Ed25519PublicKey | None
) -> None:
    """A segment's seal: signed, and naming this segment and the chain as read up to it."""
    if public is not None and not signature_ok("seal", seal, public):
        raise _Bad(f"{where}: the seal is not signed by the audit key")
    if (seal.get("segment"), seal.get("size"), seal.get("head")) != (segment, expected, prev):
        raise _Bad(f"{where}: the seal does not match the chain (records removed or added)")


def _open_record(
    rec: Any, where: str, expected: int, prev: str, keyring: Keyring
) -> tuple[int, int, str, bytes]:
    """(index, time ms, hash, plaintext) of the record ``expected`` after the hash ``prev``:
    in its place in the chain, unaltered, and decrypted."""
    try:
        i, t, kid, nonce, ct, h = (rec[k] for k in ("i", "t", "k", "n", "c", "h"))
    except (KeyError, TypeError):
        raise _Bad(f"record {expected} ({where}): not a record") from None
    if i != expected:
        what = "missing" if isinstance(i, int) and i > expected else "out of order or inserted"
        raise _Bad(f"record {expected} ({where}): found record {i}: records {what}")
    if chain_hash(prev, i, t, kid, nonce, ct) != h:
        raise _Bad(f"record {i} ({where}): its hash does not match (the record was altered)")
    plain = keyring.open(kid, base64.b64decode(nonce), base64.b64decode(ct), aad(i, prev))
    if plain is None:
        known = "unknown key " + kid if kid not in keyring.keys else "does not decrypt"
        raise _Bad(f"record {i} ({where}): {known}")
    return i, int(t), h, plain


def _note_due(coverage: Coverage | None, i: int, t: int) -> None:
    """The first record past the checkpoint cut-off that no checkpoint covers."""
    if (
        coverage is not None
        and coverage.cutoff_ms is not None
        and coverage.first_due is None
        and i >= coverage.covered
        and t < coverage.cutoff_ms
    ):
        coverage.first_due = (i, t)


def _records(
    directory: Path,
    keyring: Keyring,
    public: Ed25519PublicKey | None,
    report: Report,
    heads: dict[int, str],
    partial_tail: bool = False,
    coverage: Coverage | None = None,
) -> Iterator[Record]:
    """Every record in order, each checked against the chain. ``heads`` comes in with the
    chain sizes whose hash the checkpoints need (as keys) and leaves with those hashes, and
    the chain's length under -1. Raises ``_Bad`` at the first wrong thing."""
    needed = set(heads)
    heads.clear()
    expected, prev = _after_deletions(directory, public, heads)
    seg_dir = directory / SEGMENTS
    segments = sorted(seg_dir.glob("*.seg")) if seg_dir.exists() else []
    for n, path in enumerate(segments):
        report.segments += 1
        sealed = False
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{SEGMENTS}/{path.name}:{lineno}"
                if partial_tail and not raw.endswith(b"\n") and n == len(segments) - 1:
                    # Being written (a reader beside a running gateway): the chain ends before it.
                    heads[expected] = prev
                    heads[-1] = str(expected)
                    return
                try:
                    rec = json.loads(raw)
                except ValueError:
                    raise _Bad(f"record {expected} ({where}): not a JSON line (altered or torn)") from None
                if sealed:
                    raise _Bad(f"record {expected} ({where}): a line after the segment's seal")
                if "seal" in rec:
                    _check_seal(rec["seal"], path.name, where, expected, prev, public)
                    sealed = True
                    continue
                i, t, prev, plain = _open_record(rec, where, expected, prev, keyring)
                expected += 1
                report.records += 1
                _note_due(coverage, i, t)
                if expected in needed:
                    heads[expected] = prev
                try:
                    fields = facts_of(plain)
                except ValueError:
                    raise _Bad(f"record {i} ({where}): decrypts, but is not an audit record") from None
                yield Record(i, t, fields)
        if not sealed and n < len(segments) - 1:
            raise _Bad(f"{SEGMENTS}/{path.name}: not sealed, yet a later segment exists (cut or replaced)")
    heads[expected] = prev
    heads[-1] = str(expected)  # the chain's length, for the checkpoint checks


def published_checkpoints(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The checkpoints published in an access log (or an anchor file of them, one a line)."""
    out = []
    for line in lines:
        if CHECKPOINT_EVENT not in line and '"sig"' not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            # Not a whole JSON line (a line a full disk cut off, or another program's): it holds
            # no checkpoint; verify reports a checkpoint missing from the chain on its own.
            continue
        cp = doc.get("checkpoint") if doc.get("event") == CHECKPOINT_EVENT else doc
        if isinstance(cp, dict) and {"size", "head", "sig"} <= cp.keys():
            out.append(cp)
    return out


def chains(root: Path) -> list[tuple[str, Path]]:
    """The trail's chains: the folder itself (one gateway process), and one folder per writer
    with ``--workers`` (``worker-0`` ..., ``supervisor``)."""
    found = [("", root)] if (root / SEGMENTS).exists() or (root / CHECKPOINTS).exists() else []
    if root.exists():
        found += [
            (p.name, p)
            for p in sorted(root.iterdir())
            if p.is_dir() and p.name != SEGMENTS and ((p / SEGMENTS).exists() or (p / CHECKPOINTS).exists())
        ]
    return found


def verify(
    root: Path,
    keyring: Keyring,
    public: Ed25519PublicKey,
    anchors: list[dict[str, Any]],
    checkpoint_interval_s: float | None = None,
    now_s: float | None = None,
) -> Report:
    """Every chain of the trail, against its own checkpoints and the published ones naming it.

    The checkpoints must also be there (``_check_coverage``): every published one kept in the
    store, the whole chain covered when no writer runs (a writer signs one as it shuts down),
    and, while one runs with ``checkpoint_interval_s`` given, every record older than that
    interval (and ``CHECKPOINT_GRACE_S``) before ``now_s``."""
    report = Report()
    valid = [a for a in anchors if signature_ok("checkpoint", a, public)]
    if len(valid) < len(anchors):
        report.warnings.append(f"{len(anchors) - len(valid)} published checkpoints not signed by the key")
    found = chains(root)
    names = {name for name, _ in found}
    for a in valid:
        if str(a.get("chain", "")) not in names:
            report.problem = f"a published checkpoint names chain {a.get('chain')!r}, which is gone"
            return report
    for name, directory in found:
        mine = [a for a in valid if str(a.get("chain", "")) == name]
        problem = _verify_chain(
            directory,
            keyring,
            public,
            mine,
            report,
            checkpoint_interval_s,
            time.time() if now_s is None else now_s,
        )
        if problem is not None:
            report.problem = f"{name}: {problem}" if name else problem
            return report
    return report


def _verify_chain(
    directory: Path,
    keyring: Keyring,
    public: Ed25519PublicKey,
    anchors: list[dict[str, Any]],
    report: Report,
    checkpoint_interval_s: float | None = None,
    now_s: float = 0.0,
) -> str | None:
    # Whether a writer runs is decided before the checkpoints are read: one that shuts down
    # meanwhile signs a last checkpoint this read would miss.
    with _stopped(directory) as stopped:
        return _verify_stopped_or_running(
            directory, keyring, public, anchors, report, stopped, checkpoint_interval_s, now_s
        )


def _verify_stopped_or_running(
    directory: Path,
    keyring: Keyring,
    public: Ed25519PublicKey,
    anchors: list[dict[str, Any]],
    report: Report,
    stopped: bool | None,
    checkpoint_interval_s: float | None,
    now_s: float,
) -> str | None:
    if stopped is None:
        report.warnings.append(
            f"{directory / LOCK_FILE}: not readable by this user: whether a writer runs, and so"
            " whether every record must be checkpointed, cannot be told"
        )
    coverage = Coverage()
    if stopped is False and checkpoint_interval_s is not None:
        coverage.cutoff_ms = int((now_s - checkpoint_interval_s - CHECKPOINT_GRACE_S) * 1000)
    stored = list(read_jsonl(directory / CHECKPOINTS))
    coverage.covered = max((int(c["size"]) for c in stored), default=0)
    report.checkpoints += len(stored)
    anchor = max(anchors, key=lambda a: (int(a["size"]), int(a["t"])), default=None)
    if anchor is None:
        what = (
            f"chain {directory.name}" if directory.name.startswith(("worker-", "supervisor")) else "the trail"
        )
        report.warnings.append(
            f"no published checkpoint of {what}: a cut tail or a replaced store cannot be detected"
        )
    elif report.anchor is None or int(anchor["size"]) > int(report.anchor["size"]):
        report.anchor = anchor
    heads = {int(c["size"]): "" for c in stored + anchors}
    try:
        # Beside a running writer, a last line still being written is not read yet.
        for _record in _records(directory, keyring, public, report, heads, stopped is False, coverage):
            pass
        _check_checkpoints(stored, anchors, heads, public)
        _check_coverage(stored, anchors, int(heads[-1]), stopped, coverage, checkpoint_interval_s)
    except _Bad as bad:
        return str(bad)
    return None


def _check_checkpoints(
    stored: list[dict[str, Any]],
    anchors: list[dict[str, Any]],
    heads: dict[int, str],
    public: Ed25519PublicKey,
) -> None:
    """Every checkpoint, kept in the store or published outside it, must match the chain:
    one the chain is shorter than means records are gone; one whose hash differs, a store
    written afresh (with the same keys) in place of the one it signed."""
    length = int(heads[-1])
    for n, cp in enumerate(stored, 1):
        if not signature_ok("checkpoint", cp, public):
            raise _Bad(f"{CHECKPOINTS}:{n}: not signed by the audit key")
    checks = [(c, f"{CHECKPOINTS}:{n}") for n, c in enumerate(stored, 1)]
    checks += [(a, "published") for a in anchors]
    for cp, where in checks:
        size = int(cp["size"])
        if size > length:
            raise _Bad(
                f"{where} checkpoint: {size} records, the chain has {length}: records {length} to {size - 1}"
                " are gone (the tail was cut or a segment deleted)"
            )
        if heads.get(size) != cp["head"]:
            raise _Bad(
                f"{where} checkpoint: the chain's hash at {size} records differs (the store was replaced)"
            )


def _check_coverage(
    stored: list[dict[str, Any]],
    anchors: list[dict[str, Any]],
    length: int,
    stopped: bool | None,
    coverage: Coverage,
    interval_s: float | None,
) -> None:
    """The checkpoints that must be in the store are: removing ``checkpoints.jsonl`` (or its
    last lines) would otherwise go unnoticed whenever nothing was published outside it."""
    kept = {(int(c["size"]), c["head"], c.get("sig")) for c in stored}
    for a in sorted(anchors, key=lambda a: int(a["size"])):
        if (int(a["size"]), a["head"], a.get("sig")) not in kept:
            when = _when(int(a.get("t", 0)))
            raise _Bad(
                f"{CHECKPOINTS}: the checkpoint published at {a['size']} records ({when}) is not in"
                f" the store: {CHECKPOINTS} was removed or cut"
            )
    covered = max((int(c["size"]) for c in stored), default=0)
    if stopped and length > covered:
        what = f"{CHECKPOINTS} is missing" if not stored else f"its last checkpoint covers {covered}"
        raise _Bad(
            f"records {covered} to {length - 1} are covered by no checkpoint ({what}) and no writer"
            " runs; a gateway that shuts down signs a last checkpoint, so the checkpoints were"
            " removed or cut, or the gateway was killed (started again, it checkpoints what it finds)"
        )
    if coverage.first_due is not None:
        i, t = coverage.first_due
        raise _Bad(
            f"record {i} ({_when(t)}): no checkpoint covers it, though its writer runs and"
            f" checkpoints every {interval_s:g} s: the checkpoints were removed or cut, or the"
            " writer cannot write them (audit_checkpoint_failed in the gateway's log)"
        )


def _when(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def records(directory: Path, keyring: Keyring, partial_tail: bool = False) -> Iterator[Record]:
    """Every record of one chain, decrypted, in order (checked as ``verify`` checks the chain)."""
    report = Report()
    try:
        yield from _records(directory, keyring, None, report, {}, partial_tail)
    except _Bad as bad:
        raise ValueError(f"the audit trail is damaged: {bad} (run `vitalgate audit verify`)") from None


def all_records(root: Path, keyring: Keyring, partial_tail: bool = False) -> Iterator[Record]:
    """The records of every chain of the trail, merged in time order."""
    streams = [records(d, keyring, partial_tail) for _, d in chains(root)]
    return heapq.merge(*streams, key=lambda r: r.t_ms)


def expire(directory: Path, signer: Ed25519PrivateKey, retention_s: float, now_s: float) -> list[str]:
    """Remove sealed segments older than the retention, oldest first, each after a signed
    deletion record saying which records it held and the chain's hash after them."""
    seg_dir = directory / SEGMENTS
    removed: list[str] = []
    cutoff = datetime.fromtimestamp(now_s - retention_s, UTC).strftime("%Y-%m-%d") + ".seg"
    for path in sorted(seg_dir.glob("*.seg")) if seg_dir.exists() else []:
        if path.name >= cutoff:
            break
        lines = path.read_bytes().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        if "seal" not in last:
            break  # the open segment is never removed
        first = (
            json.loads(lines[0]).get("i", last["seal"]["size"]) if len(lines) > 1 else last["seal"]["size"]
        )
        seal = last["seal"]
        body = {
            "segment": path.name,
            "first": first,
            "size": seal["size"],
            "head": seal["head"],
            "t": int(now_s * 1000),
        }
        record = sign("deletion", body, signer)
        fd = os.open(directory / DELETIONS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        path.chmod(0o600)
        path.unlink()
        removed.append(path.name)
    return removed
