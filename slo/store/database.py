"""The store's one SQLite connection: the schema, and every read and write of its rows.

What the tables hold, and why in this shape, is in the package's docstring (``slo.store``).
Every write is one transaction: a crash loses at most the writes not yet made and never
leaves a half-written row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from slo.spec import Slo
from slo.store.cells import U32, pack, unpack, unpack_many
from slo.store.errors import StoreError
from slo.store.layouts import fold_columns, merged_bounds

SCHEMA_VERSION = 2  # 2: arrays carry a dense/sparse flag; hour roll-ups in 32-day chunks
MINUTES_PER_DAY = 1440
CHUNK_DAYS = 32
SeriesKey = tuple[str, str, str, str, int]  # facility, service, route, method, status
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

    def last_slo_day(self, key: str) -> int | None:
        """The last day with per-SLO minute counts of ``key``, None when it has none."""
        row = self.db.execute("SELECT max(day) FROM slo_minutes WHERE key=?", (key,)).fetchone()
        return None if row[0] is None else int(row[0])

    def last_raw_hour(self) -> int | None:
        """The start of the last hour with raw minute counts, None when there are none."""
        row = self.db.execute("SELECT max(hour) FROM raw_minutes").fetchone()
        return None if row[0] is None else int(row[0])

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

    def _day_rollup(self, day: int) -> list[tuple[int, int, U32]]:
        """(series, layout, hours x buckets) of one day's raw minute rows. A series counted with
        two layouts that day (a threshold changed) gets one row in their merged layout: the
        day's row is one per series, and nothing recorded is dropped."""
        by_series: dict[int, list[tuple[int, int, U32]]] = {}
        for hour, series, layout, a in self.raw_hours_between(day * 86400, (day + 1) * 86400):
            by_series.setdefault(series, []).append(
                ((hour - day * 86400) // 3600, layout, a.sum(axis=0, dtype=np.uint32))
            )
        known = self.layouts()
        out = []
        for series, hours in by_series.items():
            used = sorted({layout for _, layout, _ in hours})
            bounds = merged_bounds(*(known[lay] for lay in used))
            layout = used[0] if len(used) == 1 else self.layout_id(bounds)
            arr = np.zeros((24, len(bounds) + 1), dtype=np.uint32)
            for at, lay, sums in hours:
                arr[at] += sums if lay == layout else fold_columns(sums[None, :], known[lay], bounds)[0]
            out.append((series, layout, arr))
        return out

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
            rows = self._day_rollup(day)
            with self.transaction():
                self.db.executemany(
                    "INSERT OR REPLACE INTO raw_hours VALUES (?,?,?,?)",
                    ((day, s, lay, pack(a)) for s, lay, a in rows),
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
