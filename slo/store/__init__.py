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
A raw row counted with two bucket layouts (a latency threshold changed and the gateway
restarted within the hour, or within the day for the roll-up) is kept in the merged layout
of both, each count at its own bound: nothing recorded is overwritten.
Every write is one transaction: a crash loses at most the writes not yet made
and never leaves a half-written row.

One module per job: ``cells`` (the BLOB format of the arrays), ``layouts`` (bucket bounds, and
merging two of them), ``database`` (``Store``: the schema and every read and write of rows),
``writer`` (``StoreWriter``: minute counts folded into rows), ``replay`` (per-SLO counts rebuilt
from raw history), ``lock`` (the one writer's claim on a file). Import from here.
"""

from slo.store.cells import U32, pack, unpack, unpack_many
from slo.store.database import (
    CHUNK_DAYS,
    EXEMPLARS_PER_HOUR,
    MINUTES_PER_DAY,
    SCHEMA_VERSION,
    Exemplar,
    SeriesKey,
    Store,
)
from slo.store.errors import StoreError
from slo.store.lock import StoreLock
from slo.store.replay import catch_up, rebuild, replay
from slo.store.writer import StoreWriter, hour_rollup

__all__ = [
    "CHUNK_DAYS",
    "EXEMPLARS_PER_HOUR",
    "MINUTES_PER_DAY",
    "SCHEMA_VERSION",
    "U32",
    "Exemplar",
    "SeriesKey",
    "Store",
    "StoreError",
    "StoreLock",
    "StoreWriter",
    "catch_up",
    "hour_rollup",
    "pack",
    "rebuild",
    "replay",
    "unpack",
    "unpack_many",
]
