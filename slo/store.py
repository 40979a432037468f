"""The embedded store: SQLite (WAL) at ``telemetry.store.path``.

Two kinds of data, both as small numpy arrays in BLOBs:

- raw counts, the durable history: per series (facility, service, route template,
  method, status) a latency-bucket histogram for every minute, one row per
  series and hour (``raw_minutes``), rolled up to one row per series and day
  with hourly resolution (``raw_hours``). Any SLO defined later can be replayed
  from these.
- per-SLO counts, what ``slo status`` and reports read: total and good requests
  per minute, one row per (SLO key, facility, UTC day) (``slo_minutes``), and per
  hour with timeslice counts, one row per (SLO key, facility, 32-day chunk)
  (``slo_hours``), so a quarter's status reads a few rows a facility, not 92.
  Facility ``*`` is all facilities.

Beside the raw minutes, the slowest requests of each series and hour (``exemplars``: at most
``EXEMPLARS_PER_HOUR``, each its duration, start, trace id and whether its trace was sampled;
no PHI) so a latency view can name the traces to look up. They are kept as long as raw minutes.

Raw minute rows are kept ``minute_days`` (35) days; hour rows and per-SLO
minutes ``hour_days`` (400), so a contract year's report has its incidents.
Arrays are stored sparsely (only non-zero cells), so idle series cost nothing.
Every write is one transaction: a crash loses at most the writes not yet made
and never leaves a half-written row.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.conventions import ALL_FACILITIES
from slo.engine import good_minutes
from slo.spec import LE_TOLERANCE_S, Slo

SCHEMA_VERSION = 2  # 2: arrays carry a dense/sparse flag; hour roll-ups in 32-day chunks
MINUTES_PER_DAY = 1440
CHUNK_DAYS = 32
SeriesKey = tuple[str, str, str, str, int]  # facility, service, route, method, status
U32 = npt.NDArray[np.uint32]
Exemplar = tuple[float, float, str, bool]
"""One slow request: duration (s), start (s since the epoch), trace id (32 hex), sampled."""
EXEMPLARS_PER_HOUR = 5
"""Slowest requests kept per series and hour: the bound on the exemplars table."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, facility TEXT NOT NULL, service TEXT NOT NULL, route TEXT NOT NULL,
    method TEXT NOT NULL, status INTEGER NOT NULL, UNIQUE (facility, service, route, method, status));
CREATE TABLE IF NOT EXISTS layouts (id INTEGER PRIMARY KEY, bounds TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS raw_minutes (
    hour INTEGER NOT NULL, series INTEGER NOT NULL, layout INTEGER NOT NULL, cells BLOB NOT NULL,
    PRIMARY KEY (hour, series)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS raw_hours (
    day INTEGER NOT NULL, series INTEGER NOT NULL, layout INTEGER NOT NULL, cells BLOB NOT NULL,
    PRIMARY KEY (day, series)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS exemplars (
    hour INTEGER NOT NULL, series INTEGER NOT NULL, items TEXT NOT NULL,
    PRIMARY KEY (hour, series)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slo_defs (key TEXT PRIMARY KEY, definition TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS slo_minutes (
    key TEXT NOT NULL, facility TEXT NOT NULL, day INTEGER NOT NULL, cells BLOB NOT NULL,
    PRIMARY KEY (day, key, facility)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slo_hours (
    key TEXT NOT NULL, facility TEXT NOT NULL, chunk INTEGER NOT NULL, cells BLOB NOT NULL,
    PRIMARY KEY (chunk, key, facility)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slo_bucket_bounds (
    key TEXT NOT NULL, bound REAL NOT NULL, last_day INTEGER NOT NULL,
    PRIMARY KEY (key, bound)) WITHOUT ROWID;
"""
# slo_bucket_bounds: a latency SLO replayed from raw history recorded without its threshold
# among the bucket bounds is counted at the nearest bound below it; which bound, and up to
# which day, so that `slo status` can say so while that history is inside the window.


_HEADER = struct.Struct("<HHIB")  # rows, cols, non-zero cells, dense flag
_DENSE, _SPARSE = 1, 0


def pack(a: npt.NDArray[np.integer]) -> bytes:
    """A 2-D count array: dense, or only its non-zero cells when that is smaller."""
    flat = np.ascontiguousarray(a, dtype="<u4").ravel()
    nz = np.flatnonzero(flat)
    if nz.size * 6 >= flat.size * 4:
        return _HEADER.pack(a.shape[0], a.shape[1], nz.size, _DENSE) + flat.tobytes()
    return (
        _HEADER.pack(a.shape[0], a.shape[1], nz.size, _SPARSE)
        + nz.astype("<u2").tobytes()
        + flat[nz].tobytes()
    )


def unpack(blob: bytes) -> U32:
    out: U32 = unpack_many([blob])[0]
    return out


def unpack_many(blobs: Sequence[bytes]) -> U32:
    """Decode blobs of one shape into one (n, rows, cols) array, dense and sparse in bulk."""
    if not blobs:
        return np.zeros((0, 0, 0), dtype=np.uint32)
    rows, cols, _, _ = _HEADER.unpack_from(blobs[0])
    size = rows * cols
    out = np.zeros((len(blobs), size), dtype=np.uint32)
    sparse_at, counts, idx_parts, val_parts = [], [], [], []
    h = _HEADER.size
    dense_len = h + 4 * size
    for i, b in enumerate(blobs):
        if b[8] == _DENSE:
            if len(b) != dense_len:
                raise StoreError(f"mixed array shapes in one read (expected {rows}x{cols})")
            out[i] = np.frombuffer(b, dtype="<u4", count=size, offset=h)
            continue
        n = int.from_bytes(b[4:8], "little")
        if n:
            view = memoryview(b)
            sparse_at.append(i)
            counts.append(n)
            idx_parts.append(view[h : h + 2 * n])
            val_parts.append(view[h + 2 * n :])
    if sparse_at:
        where = np.repeat(np.array(sparse_at), counts)
        cells = np.frombuffer(b"".join(idx_parts), dtype="<u2")
        out[where, cells] = np.frombuffer(b"".join(val_parts), dtype="<u4")
    return out.reshape(len(blobs), rows, cols)


class StoreError(Exception):
    pass


class StoreLock:
    """The one writer's claim on a store file: ``<store>.lock``, locked exclusively (flock) for
    as long as the gateway (or its supervisor) runs, with the holder's pid in it.

    Two gateways given one store would each keep their own in-memory minutes and overwrite each
    other's rows; the second is refused at start-up instead, naming the first."""

    def __init__(self, store_path: str | Path) -> None:
        self.path = Path(f"{store_path}.lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"{store_path}: in use by another vitalgate process (pid {holder}); two gateways"
                " cannot share one store file (give each its own telemetry.store.path)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class Store:
    """One connection to the store; use from one thread at a time."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise StoreError(f"{self.path}: no store here yet (the gateway creates it)")
            uri = f"file:{self.path}?mode=ro"
            self.db = sqlite3.connect(
                uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.db.execute("PRAGMA busy_timeout=30000")
        version = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: unsupported store schema {version}")
        self._series: dict[SeriesKey, int] = {}
        self._layouts: dict[tuple[float, ...], int] = {}
        self._chunks: dict[tuple[str, str, int], U32] = {}  # hour chunks this connection wrote

    def close(self) -> None:
        self.db.close()

    # -- dimensions -------------------------------------------------------------

    def series_id(self, key: SeriesKey) -> int:
        sid = self._series.get(key)
        if sid is None:
            self.db.execute(
                "INSERT OR IGNORE INTO series (facility, service, route, method, status) VALUES (?,?,?,?,?)",
                key,
            )
            row = self.db.execute(
                "SELECT id FROM series WHERE facility=? AND service=? AND route=? AND method=? AND status=?",
                key,
            ).fetchone()
            sid = self._series[key] = int(row[0])
        return sid

    def all_series(self) -> dict[int, SeriesKey]:
        rows = self.db.execute("SELECT id, facility, service, route, method, status FROM series")
        return {int(r[0]): (r[1], r[2], r[3], r[4], int(r[5])) for r in rows}

    def layout_id(self, bounds: Sequence[float]) -> int:
        key = tuple(float(b) for b in bounds)
        lid = self._layouts.get(key)
        if lid is None:
            text = json.dumps(list(key))
            self.db.execute("INSERT OR IGNORE INTO layouts (bounds) VALUES (?)", (text,))
            lid = self._layouts[key] = int(
                self.db.execute("SELECT id FROM layouts WHERE bounds=?", (text,)).fetchone()[0]
            )
        return lid

    def layouts(self) -> dict[int, tuple[float, ...]]:
        return {int(i): tuple(json.loads(b)) for i, b in self.db.execute("SELECT id, bounds FROM layouts")}

    def put_slo_defs(self, slos: Iterable[Slo]) -> None:
        for s in slos:
            definition = {
                "name": s.name,
                "kind": s.kind,
                "budgeting": s.budgeting,
                "timeslice_target": s.timeslice_target,
            }
            self.db.execute("INSERT OR REPLACE INTO slo_defs VALUES (?, ?)", (s.key, json.dumps(definition)))

    def note_bucket_bounds(self, used: Mapping[str, Mapping[float, int]]) -> None:
        """Record, per SLO key, the bucket bounds other than its threshold that a replay counted
        latency at, each with the last day it was used for."""
        for key, bounds in used.items():
            for bound, day in bounds.items():
                self.db.execute(
                    "INSERT INTO slo_bucket_bounds VALUES (?, ?, ?) ON CONFLICT (key, bound) "
                    "DO UPDATE SET last_day = max(last_day, excluded.last_day)",
                    (key, bound, day),
                )

    # -- reads ------------------------------------------------------------------

    def bucket_bounds(self, key: str, from_day: int) -> list[float]:
        """The bounds other than its threshold that the SLO ``key`` was counted at on a day from
        ``from_day`` on (a store written before this was recorded has none)."""
        has_table = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='slo_bucket_bounds'"
        ).fetchone()
        if has_table is None:
            return []
        rows = self.db.execute(
            "SELECT bound FROM slo_bucket_bounds WHERE key=? AND last_day >= ? ORDER BY bound",
            (key, from_day),
        )
        return [float(r[0]) for r in rows]

    def raw_hour(self, hour_ts: int, series: int) -> tuple[int, U32] | None:
        row = self.db.execute(
            "SELECT layout, cells FROM raw_minutes WHERE hour=? AND series=?", (hour_ts, series)
        ).fetchone()
        return (int(row[0]), unpack(row[1])) if row else None

    def raw_hours_between(self, hour_from: int, hour_to: int) -> Iterator[tuple[int, int, int, U32]]:
        """(hour, series, layout, minutes x buckets) for hours in [hour_from, hour_to)."""
        for hour, series, layout, cells in self.db.execute(
            "SELECT hour, series, layout, cells FROM raw_minutes WHERE hour >= ? AND hour < ? ORDER BY hour",
            (hour_from, hour_to),
        ):
            yield int(hour), int(series), int(layout), unpack(cells)

    def raw_days_between(self, day_from: int, day_to: int) -> Iterator[tuple[int, int, int, U32]]:
        """(day, series, layout, hours x buckets) from the hourly roll-ups."""
        for day, series, layout, cells in self.db.execute(
            "SELECT day, series, layout, cells FROM raw_hours WHERE day >= ? AND day < ? ORDER BY day",
            (day_from, day_to),
        ):
            yield int(day), int(series), int(layout), unpack(cells)

    def raw_minutes_of(
        self, series: Sequence[int], hour_from: int, hour_to: int
    ) -> list[tuple[int, int, int, U32]]:
        """(hour, series, layout, minutes x buckets) of these series for hours in [hour_from, hour_to)."""
        if not series:
            return []
        hours = list(range(hour_from - hour_from % 3600, hour_to, 3600))
        # Both as lists: SQLite then seeks each (hour, series) key instead of reading every
        # series' rows of the hour range (the other facilities' too).
        rows = self.db.execute(
            "SELECT hour, series, layout, cells FROM raw_minutes "  # noqa: S608  only placeholders added
            f"WHERE hour IN ({','.join('?' * len(hours))}) AND series IN ({','.join('?' * len(series))})",
            (*hours, *series),
        ).fetchall()
        return [(int(h), int(sid), int(lay), unpack(cells)) for h, sid, lay, cells in rows]

    def exemplars_of(
        self, series: Sequence[int], hour_from: int, hour_to: int
    ) -> list[tuple[int, list[Exemplar]]]:
        """(series, slowest requests) of these series for hours in [hour_from, hour_to); none
        from a store written before exemplars were kept."""
        if not series or not self._has_table("exemplars"):
            return []
        marks = ",".join("?" * len(series))
        rows = self.db.execute(
            "SELECT series, items FROM exemplars "  # noqa: S608  only placeholders added
            f"WHERE hour >= ? AND hour < ? AND series IN ({marks})",
            (hour_from, hour_to, *series),
        ).fetchall()
        return [(int(sid), _exemplars(items)) for sid, items in rows]

    def _has_table(self, name: str) -> bool:
        q = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
        return self.db.execute(q, (name,)).fetchone() is not None

    def merge_exemplars(self, found: Mapping[tuple[int, int], Sequence[Exemplar]]) -> None:
        """Add ``{(hour, series): slow requests}`` to what is stored, keeping the slowest
        ``EXEMPLARS_PER_HOUR`` of each row. Reads each row inside the caller's write
        transaction, so writers sharing the store (workers) merge exactly."""
        rows = []
        for (hour, sid), items in found.items():
            old = self.db.execute(
                "SELECT items FROM exemplars WHERE hour=? AND series=?", (hour, sid)
            ).fetchone()
            merged = {e[2]: e for e in (_exemplars(old[0]) if old else [])}
            for e in items:
                if e[0] > merged.get(e[2], (-1.0,))[0]:
                    merged[e[2]] = e
            keep = sorted(merged.values(), key=lambda e: (-e[0], e[2]))[:EXEMPLARS_PER_HOUR]
            rows.append((hour, sid, json.dumps([list(e) for e in keep])))
        self.db.executemany("INSERT OR REPLACE INTO exemplars VALUES (?,?,?)", rows)

    def slo_day(self, key: str, facility: str, day: int) -> U32 | None:
        row = self.db.execute(
            "SELECT cells FROM slo_minutes WHERE day=? AND key=? AND facility=?",
            (day, key, facility),
        ).fetchone()
        return unpack(row[0]) if row else None

    def slo_minutes(self, keys: Sequence[str], day_from: int, day_to: int) -> dict[tuple[str, str, int], U32]:
        """{(key, facility, day): uint32[2, 1440]} (total, good) for days in [day_from, day_to]."""
        return self._slo_rows("slo_minutes", keys, day_from, day_to)

    def _slo_rows(
        self, table: str, keys: Sequence[str], day_from: int, day_to: int
    ) -> dict[tuple[str, str, int], U32]:
        ids, arrays = self._rows(table, keys, day_from, day_to)
        return {k: arrays[i] for i, k in enumerate(ids)}

    def slo_minute_counts(self, index: Mapping[tuple[str, str], int], rows: int, start_s: int, n: int) -> U32:
        """uint32[rows, 2, n]: (total, good) per minute from ``start_s`` (minute-aligned) for
        each ``(slo key, facility)`` of ``index`` at its row; zeros where nothing is stored."""
        last = start_s + 60 * (n - 1)
        d0, d1 = start_s // 86400, last // 86400
        shape = (rows, d1 - d0 + 1, MINUTES_PER_DAY)
        off = (start_s - d0 * 86400) // 60
        return self._counts("slo_minutes", index, d0, d1, d0, shape, 2)[:, :, off : off + n]

    def slo_hour_counts(self, index: Mapping[tuple[str, str], int], rows: int, start_s: int, n: int) -> U32:
        """uint32[rows, 4, n]: per hour from ``start_s`` (hour-aligned) the total, good,
        slices with data and good slices, as ``slo_minute_counts`` places them. (Hours are
        stored in chunks of CHUNK_DAYS days: that stays in here.)"""
        last_day = (start_s + 3600 * n - 1) // 86400
        c0, c1 = (start_s // 86400) // CHUNK_DAYS, last_day // CHUNK_DAYS
        shape = (rows, c1 - c0 + 1, CHUNK_DAYS * 24)
        off = (start_s - c0 * CHUNK_DAYS * 86400) // 3600
        return self._counts("slo_hours", index, c0, c1, c0, shape, 4)[:, :, off : off + n]

    def _counts(
        self,
        table: str,
        index: Mapping[tuple[str, str], int],
        first: int,
        last: int,
        origin: int,
        shape: tuple[int, int, int],
        channels: int,
    ) -> U32:
        """Stored rows placed in bulk: out[row, channel, unit] with each stored day (or chunk)
        side by side along the last axis."""
        ids, stored = self._rows(table, sorted({k for k, _ in index}), first, last)
        out = np.zeros((shape[0], channels, shape[1], shape[2]), dtype=np.uint32)
        rows, units, picks = [], [], []
        for j, (key, fac, unit) in enumerate(ids):
            i = index.get((key, fac))
            if i is not None:
                rows.append(i)
                units.append(unit - origin)
                picks.append(j)
        if picks:
            for ch in range(channels):
                out[rows, ch, units] = stored[picks, ch]
        return out.reshape(shape[0], channels, shape[1] * shape[2])

    def _rows(
        self, table: str, keys: Sequence[str], day_from: int, day_to: int
    ) -> tuple[list[tuple[str, str, int]], U32]:
        """Rows of ``slo_minutes`` (by day) or ``slo_hours`` (by chunk: pass chunk numbers)
        as ids and one (n, rows, cols) array."""
        if table not in ("slo_minutes", "slo_hours") or not keys:
            return [], np.zeros((0, 0, 0), dtype=np.uint32)
        marks = ",".join("?" * len(keys))
        col = "day" if table == "slo_minutes" else "chunk"
        rows = self.db.execute(
            f"SELECT key, facility, {col}, cells FROM {table} "  # noqa: S608  table and column are fixed names
            f"WHERE {col} >= ? AND {col} <= ? AND key IN ({marks})",
            (day_from, day_to, *keys),
        ).fetchall()
        return [(k, f, int(d)) for k, f, d, _ in rows], unpack_many([r[3] for r in rows])

    def has_slo_data(self, key: str) -> bool:
        q = "SELECT 1 FROM slo_minutes WHERE key=? UNION ALL SELECT 1 FROM slo_hours WHERE key=? LIMIT 1"
        return self.db.execute(q, (key, key)).fetchone() is not None

    def write(
        self,
        raw: Iterable[tuple[int, int, int, U32]],
        slo_days: Iterable[tuple[str, str, int, U32, U32]],
    ) -> None:
        """One transaction: raw (hour, series, layout, minutes x buckets) rows and
        per-SLO (key, facility, day, minute counts [2, 1440], hour rollup [4, 24]) rows."""
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO raw_minutes VALUES (?,?,?,?)",
                ((h, s, lay, pack(a)) for h, s, lay, a in raw),
            )
            rows = list(slo_days)
            self.db.executemany(
                "INSERT OR REPLACE INTO slo_minutes VALUES (?,?,?,?)",
                ((k, f, d, pack(m)) for k, f, d, m, _ in rows),
            )
            self._merge_hours([(k, f, d, h) for k, f, d, _, h in rows])

    def write_hours(self, rows: Iterable[tuple[str, str, int, U32]]) -> None:
        """Hour roll-ups [4, 24] per (key, facility, day), merged into their chunks."""
        with self.transaction():
            self._merge_hours(list(rows))

    def _merge_hours(self, rows: list[tuple[str, str, int, U32]]) -> None:
        touched: dict[tuple[str, str, int], U32] = {}
        for k, f, d, h in rows:
            chunk = d // CHUNK_DAYS
            arr = touched.get((k, f, chunk))
            if arr is None:
                arr = self._chunks.get((k, f, chunk))
                if arr is None:
                    row = self.db.execute(
                        "SELECT cells FROM slo_hours WHERE chunk=? AND key=? AND facility=?", (chunk, k, f)
                    ).fetchone()
                    arr = unpack(row[0]) if row else np.zeros((4, CHUNK_DAYS * 24), dtype=np.uint32)
                touched[(k, f, chunk)] = arr
            off = (d - chunk * CHUNK_DAYS) * 24
            arr[:, off : off + 24] = h
        self.db.executemany(
            "INSERT OR REPLACE INTO slo_hours VALUES (?,?,?,?)",
            ((k, f, c, pack(a)) for (k, f, c), a in touched.items()),
        )
        newest = max((c for (_, _, c) in touched), default=0)
        for key in [key for key in self._chunks if key[2] < newest - 1]:
            del self._chunks[key]
        self._chunks.update(touched)

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def forget_cached_chunks(self) -> None:
        """Drop the hour chunks this connection remembers (another process may write them)."""
        self._chunks.clear()

    def compact_and_purge(
        self, now_s: float, minute_days: int = 35, hour_days: int = 400, slo_minute_days: int | None = None
    ) -> None:
        """Roll raw minute rows of finished days into hourly rows; drop rows past retention.
        Per-SLO minutes (small; what uptime reports' incidents need) are kept ``slo_minute_days``,
        by default as long as the hourly rows."""
        today = int(now_s // 86400)
        done = self.db.execute(
            "SELECT DISTINCT hour / 86400 FROM raw_minutes WHERE hour < ? AND hour / 86400 NOT IN "
            "(SELECT DISTINCT day FROM raw_hours)",
            (today * 86400,),
        ).fetchall()
        for (day_value,) in done:
            day = int(day_value)
            acc: dict[tuple[int, int], U32] = {}
            for hour, series, layout, a in self.raw_hours_between(day * 86400, (day + 1) * 86400):
                arr = acc.setdefault((series, layout), np.zeros((24, a.shape[1]), dtype=np.uint32))
                arr[(hour - day * 86400) // 3600] += a.sum(axis=0, dtype=np.uint32)
            with self.transaction():
                self.db.executemany(
                    "INSERT OR REPLACE INTO raw_hours VALUES (?,?,?,?)",
                    ((day, s, lay, pack(a)) for (s, lay), a in acc.items()),
                )
        with self.transaction():
            cutoff_min = (today - minute_days) * 86400
            self.db.execute("DELETE FROM raw_minutes WHERE hour < ?", (cutoff_min,))
            self.db.execute("DELETE FROM exemplars WHERE hour < ?", (cutoff_min,))
            slo_days = hour_days if slo_minute_days is None else slo_minute_days
            self.db.execute("DELETE FROM slo_minutes WHERE day < ?", (today - slo_days,))
            self.db.execute("DELETE FROM raw_hours WHERE day < ?", (today - hour_days,))
            self.db.execute(
                "DELETE FROM slo_hours WHERE (chunk + 1) * ? <= ?", (CHUNK_DAYS, today - hour_days)
            )


def _exemplars(text: str) -> list[Exemplar]:
    return [(float(d), float(at), str(t), bool(sampled)) for d, at, t, sampled in json.loads(text)]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT; inside an open transaction, part of that one."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def hour_rollup(day_counts: U32, target: float) -> U32:
    """[total, good, minutes with data, good minutes] per hour, from [2, 1440] minute counts."""
    total = day_counts[0].reshape(24, 60).astype(np.float64)
    good = day_counts[1].reshape(24, 60).astype(np.float64)
    has = total > 0
    ok = good_minutes(total, good, target)
    return np.stack([total.sum(1), good.sum(1), has.sum(1), ok.sum(1)]).astype(np.uint32)


class StoreWriter:
    """Folds minute counts into the store: raw history and per-SLO arrays.

    Keeps the current hours' and days' arrays in memory (loaded from the store on
    first touch, so a restart continues where it left off) and writes every
    changed row whole, in one transaction per ``apply``. Confined to one thread.

    ``shared``: other processes (gateway workers) write the same store, so every
    ``apply`` re-reads the rows it changes inside its write transaction and adds
    to them: the counts of all writers add up exactly.
    """

    def __init__(
        self, store: Store, slos: Sequence[Slo], bounds_s: Sequence[float], shared: bool = False
    ) -> None:
        self.store = store
        self.shared = shared
        self.slos = list(slos)
        self.bounds_s = tuple(bounds_s)
        self.layout = store.layout_id(self.bounds_s)
        self.n_cols = len(self.bounds_s) + 1  # the last column is +Inf
        store.put_slo_defs(self.slos)
        # Upper bound of each bucket column, for latency SLIs.
        self._upper = np.array([*self.bounds_s, np.inf])
        self._raw: dict[tuple[int, int], U32] = {}
        self._days: dict[tuple[str, str, int], U32] = {}
        self._matching: dict[SeriesKey, list[tuple[Slo, npt.NDArray[np.bool_] | None, bool]]] = {}
        self._lock = threading.Lock()

    def _slos_for(self, key: SeriesKey) -> list[tuple[Slo, npt.NDArray[np.bool_] | None, bool]]:
        found = self._matching.get(key)
        if found is None:
            _facility, service, route, method, status = key
            found = []
            for s in self.slos:
                if s.matches(service, route, method):
                    if s.kind == "latency":
                        found.append((s, s.good_buckets(self._upper), False))
                    else:
                        found.append((s, None, s.counts_as_good(status, 0.0)))
            self._matching[key] = found
        return found

    def _raw_state(self, hour: int, sid: int) -> U32:
        st = self._raw.get((hour, sid))
        if st is None:
            loaded = self.store.raw_hour(hour, sid)
            st = np.zeros((60, self.n_cols), dtype=np.uint32)
            if loaded is not None and loaded[1].shape == st.shape and loaded[0] == self.layout:
                st += loaded[1]
            self._raw[(hour, sid)] = st
        return st

    def _day_state(self, key: str, facility: str, day: int) -> U32:
        st = self._days.get((key, facility, day))
        if st is None:
            loaded = self.store.slo_day(key, facility, day)
            st = loaded.copy() if loaded is not None else np.zeros((2, MINUTES_PER_DAY), dtype=np.uint32)
            self._days[(key, facility, day)] = st
        return st

    def apply(
        self,
        batch: Mapping[tuple[SeriesKey, int], Sequence[int]],
        replace_minutes: Iterable[int] = (),
        exemplars: Mapping[tuple[SeriesKey, int], Sequence[Exemplar]] | None = None,
    ) -> None:
        """Add ``{(series key, minute start s): counts per bucket column}``.

        ``replace_minutes``: minutes whose recorded counts are discarded first
        (an import rebuilds the minutes its log covers). ``exemplars``: the slowest requests
        of some of those series and minutes, merged into each hour's slowest.
        """
        with self._lock:
            try:
                self._apply(batch, replace_minutes, exemplars or {})
            except BaseException:
                # The transaction rolled back, but the in-memory hours and days had the batch
                # added: forget them, so they are read again as stored and a retry of this
                # batch counts it once.
                self._raw.clear()
                self._days.clear()
                self.store.forget_cached_chunks()
                raise

    def _apply(
        self,
        batch: Mapping[tuple[SeriesKey, int], Sequence[int]],
        replace_minutes: Iterable[int],
        exemplars: Mapping[tuple[SeriesKey, int], Sequence[Exemplar]],
    ) -> None:
        with self.store.transaction():
            if self.shared:
                # Another writer may have changed any row since: start from what is stored.
                self._raw.clear()
                self._days.clear()
                self.store.forget_cached_chunks()
            dirty_raw: set[tuple[int, int]] = set()
            dirty_days: set[tuple[str, str, int]] = set()
            replaced = sorted(set(replace_minutes))
            if replaced:
                self._clear_minutes(replaced, dirty_raw, dirty_days)
            for (key, minute), counts in batch.items():
                sid = self.store.series_id(key)
                hour = minute - minute % 3600
                row = np.asarray(counts, dtype=np.uint32)
                self._raw_state(hour, sid)[(minute - hour) // 60] += row
                dirty_raw.add((hour, sid))
                total = int(row.sum())
                day = minute // 86400
                m = (minute % 86400) // 60
                for slo, good_cols, status_good in self._slos_for(key):
                    good = (
                        int(row[good_cols].sum()) if good_cols is not None else (total if status_good else 0)
                    )
                    for fac in (key[0], ALL_FACILITIES):
                        st = self._day_state(slo.key, fac, day)
                        st[0, m] += total
                        st[1, m] += good
                        dirty_days.add((slo.key, fac, day))
            targets = {s.key: s.timeslice_target for s in self.slos}
            self.store.write(
                ((h, s, self.layout, self._raw[(h, s)]) for h, s in dirty_raw),
                (
                    (
                        k,
                        f,
                        d,
                        self._days[(k, f, d)],
                        hour_rollup(self._days[(k, f, d)], targets.get(k, 0.95)),
                    )
                    for k, f, d in dirty_days
                ),
            )
            if exemplars:
                slow: dict[tuple[int, int], list[Exemplar]] = {}
                for (key, minute), found in exemplars.items():
                    slow.setdefault((minute - minute % 3600, self.store.series_id(key)), []).extend(found)
                self.store.merge_exemplars(slow)
            self._evict(max((m for (_, m) in batch), default=0))

    def _clear_minutes(
        self,
        minutes: list[int],
        dirty_raw: set[tuple[int, int]],
        dirty_days: set[tuple[str, str, int]],
    ) -> None:
        hours = sorted({m - m % 3600 for m in minutes})
        for hour in hours:
            for h, sid, layout, _a in self.store.raw_hours_between(hour, hour + 3600):
                if layout == self.layout:
                    self._raw_state(h, sid)
            for (h, sid), st in self._raw.items():
                if h == hour:
                    for m in minutes:
                        if hour <= m < hour + 3600:
                            st[(m - hour) // 60] = 0
                    dirty_raw.add((h, sid))
        days = sorted({m // 86400 for m in minutes})
        keys = [s.key for s in self.slos]
        for day in days:
            for k, f, d in self.store.slo_minutes(keys, day, day):
                self._day_state(k, f, d)
            for (k, f, d), st in self._days.items():
                if d == day:
                    for m in minutes:
                        if m // 86400 == day:
                            st[:, (m % 86400) // 60] = 0
                    dirty_days.add((k, f, d))

    def _evict(self, latest_minute: int) -> None:
        """Forget arrays of hours and days that can no longer change."""
        hour_floor = latest_minute - latest_minute % 3600 - 3600
        for raw_key in [k for k in self._raw if k[0] < hour_floor]:
            del self._raw[raw_key]
        day_floor = latest_minute // 86400 - 1
        for day_key in [k for k in self._days if k[2] < day_floor]:
            del self._days[day_key]


def replay(store: Store, slos: Sequence[Slo]) -> list[str]:
    """Compute per-SLO counts from the raw history for SLOs that have none yet (an SLO
    defined, or redefined, after the traffic was recorded). Returns the keys replayed.

    Minutes come from the raw minute rows; days older than those only from the hourly
    roll-ups, so timeslice counts there are not known (left at zero).
    """
    missing = [s for s in slos if not store.has_slo_data(s.key)]
    if missing:
        rebuild(store, missing, 0)
    return [s.key for s in missing]


def catch_up(store: Store, slos: Sequence[Slo]) -> list[str]:
    """Bring every SLO's counts up to the raw history before recording starts.

    An SLO first replayed by ``slo status`` while a gateway without it kept recording
    has a gap since; a restart continues in the middle of a day. Both are rebuilt from
    the raw rows (the record of everything), from each SLO's last day on. Returns the
    keys rebuilt in full (no counts at all before).
    """
    fresh = replay(store, slos)
    known = [s for s in slos if s.key not in fresh]
    lasts = [
        row[0]
        for s in known
        if (row := store.db.execute("SELECT max(day) FROM slo_minutes WHERE key=?", (s.key,)).fetchone())[0]
        is not None
    ]
    raw_last = store.db.execute("SELECT max(hour) FROM raw_minutes").fetchone()[0]
    if known and lasts and raw_last is not None and raw_last // 86400 >= min(lasts):
        rebuild(store, known, int(min(lasts)))
    return fresh


def rebuild(store: Store, slos: Sequence[Slo], from_day: int) -> None:
    """Recompute the per-SLO rows of ``slos`` for every day from ``from_day`` on, from raw."""
    series = store.all_series()
    layouts = {i: np.array([*b, np.inf]) for i, b in store.layouts().items()}

    def good_fraction(slo: Slo, key: SeriesKey, layout: int, arr: U32) -> npt.NDArray[np.uint64]:
        if slo.kind == "latency":
            cols = slo.good_buckets(layouts[layout])
            out: npt.NDArray[np.uint64] = arr[:, cols].sum(axis=1, dtype=np.uint64)
            return out
        total: npt.NDArray[np.uint64] = arr.sum(axis=1, dtype=np.uint64)
        return total if slo.counts_as_good(key[4], 0.0) else np.zeros_like(total)

    days: dict[tuple[str, str, int], U32] = {}
    hour_only: dict[tuple[str, str, int], U32] = {}
    rounded: dict[str, dict[float, int]] = {}
    # Per (SLO, layout): the bound its threshold is counted at, None when exact. Once per
    # layout, not per row: a replay reads every raw row of the history.
    inexact: dict[tuple[str, int], float | None] = {}

    def note_bound(slo: Slo, layout: int, day: int) -> None:
        key = (slo.key, layout)
        if key not in inexact:
            bound = slo.bucket_bound(layouts[layout])
            exact = slo.threshold_s is None or abs(bound - slo.threshold_s) <= LE_TOLERANCE_S
            inexact[key] = None if exact else bound
        bound_s = inexact[key]
        if bound_s is not None:
            by_bound = rounded.setdefault(slo.key, {})
            by_bound[bound_s] = max(day, by_bound.get(bound_s, day))

    first_minute_day: int | None = None
    for hour, sid, layout, arr in store.raw_hours_between(from_day * 86400, 2**62):
        key = series[sid]
        day = hour // 86400
        first_minute_day = day if first_minute_day is None else min(first_minute_day, day)
        off = (hour % 86400) // 60
        total = arr.sum(axis=1, dtype=np.uint64)
        for slo in slos:
            if not slo.matches(key[1], key[2], key[3]):
                continue
            if slo.kind == "latency":
                note_bound(slo, layout, day)
            good = good_fraction(slo, key, layout, arr)
            for fac in (key[0], ALL_FACILITIES):
                st = days.setdefault((slo.key, fac, day), np.zeros((2, MINUTES_PER_DAY), dtype=np.uint32))
                st[0, off : off + 60] += total.astype(np.uint32)
                st[1, off : off + 60] += good.astype(np.uint32)
    for day, sid, layout, arr in store.raw_days_between(from_day, 2**31):
        if first_minute_day is not None and day >= first_minute_day:
            continue
        key = series[sid]
        total = arr.sum(axis=1, dtype=np.uint64)
        for slo in slos:
            if slo.matches(key[1], key[2], key[3]):
                if slo.kind == "latency":
                    note_bound(slo, layout, day)
                good = good_fraction(slo, key, layout, arr)
                for fac in (key[0], ALL_FACILITIES):
                    st = hour_only.setdefault((slo.key, fac, day), np.zeros((4, 24), dtype=np.uint32))
                    st[0] += total.astype(np.uint32)
                    st[1] += good.astype(np.uint32)
    targets = {s.key: s.timeslice_target for s in slos}
    store.put_slo_defs(slos)
    store.write((), ((k, f, d, a, hour_rollup(a, targets[k])) for (k, f, d), a in days.items()))
    store.write_hours((k, f, d, a) for (k, f, d), a in hour_only.items())
    store.note_bucket_bounds(rounded)
