"""The embedded store and the status built on it, at chosen instants."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gateway.dataplane.metrics import duration_buckets_s
from gateway.importer import import_access_log
from slo.embedded import EmbeddedBackend
from slo.spec import Facility, Maintenance, Slo, load_slos
from slo.status import StatusRow, compute_status, period_start
from slo.store import Store, StoreWriter, catch_up, pack, replay, unpack

BOUNDS = duration_buckets_s([0.3])
SLOS_YAML = """
version: 1
slos:
  - {name: avail, service: fhir, objective: 99, window: 30d, sli: {availability: {bad_statuses: [429]}}}
  - {name: reads-fast, service: fhir, objective: 95, window: 7d, filter: {methods: [GET]}, sli: {latency: {threshold: 300ms}}}
  - {name: monthly, service: fhir, objective: 99.5, window: {calendar: month}, sli: {availability: {}}}
  - {name: uptime, service: fhir, objective: 99, window: 30d, budgeting: timeslices, timeslice: {target: 90},
     sli: {availability: {}}}
"""
FACILITIES = [
    Facility("chicago", "Chicago General", "America/Chicago", 0.999),
    Facility("quiet", "Quiet Clinic", "Europe/Berlin", 0.99),
]


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


@pytest.fixture
def slos(tmp_path: Path) -> list[Slo]:
    p = tmp_path / "slos.yaml"
    p.write_text(SLOS_YAML)
    return load_slos(p)


def bucket(duration_s: float) -> list[int]:
    row = [0] * (len(BOUNDS) + 1)
    row[int(np.searchsorted(BOUNDS, duration_s, side="left"))] = 1
    return row


Batch = dict[tuple[tuple[str, str, str, str, int], int], list[int]]


def requests(*items: tuple[str, str, int, float, str]) -> Batch:
    """{(series key, minute): bucket counts} from (iso time, facility, status, duration_s, method)."""
    batch: Batch = {}
    for when, facility, status, duration, method in items:
        t = ts(when)
        key = ((facility, "fhir", "/fhir/Patient/{id}", method, status), t - t % 60)
        row = bucket(duration)
        old = batch.get(key, [0] * len(row))
        batch[key] = [a + b for a, b in zip(old, row, strict=True)]
    return batch


def status(
    store: Store, slos: list[Slo], now: str, facilities: list[Facility] = FACILITIES
) -> dict[tuple[str, str], StatusRow]:
    rows = compute_status(slos, facilities, EmbeddedBackend(store), ts(now))
    return {(r.slo, r.facility): r for r in rows}


@settings(max_examples=50)
@given(
    arrays(np.uint32, st.tuples(st.integers(1, 60), st.integers(1, 40)), elements=st.integers(0, 2**32 - 1))
)
def test_pack_roundtrip(a: np.ndarray) -> None:
    assert np.array_equal(unpack(pack(a)), a)


def test_counts_and_restart_continue(tmp_path: Path, slos: list[Slo]) -> None:
    db = tmp_path / "s.db"
    store = Store(db)
    w = StoreWriter(store, slos, BOUNDS)
    w.apply(
        requests(
            ("2026-11-20T10:00:05+00:00", "chicago", 200, 0.05, "GET"),
            ("2026-11-20T10:00:30+00:00", "chicago", 500, 0.05, "GET"),
            ("2026-11-20T10:01:00+00:00", "chicago", 429, 0.50, "POST"),
            ("2026-11-20T10:02:00+00:00", "chicago", 200, 0.50, "GET"),
        )
    )
    store.close()
    store = Store(db)  # a restart: a new writer continues in the same hour and day
    w = StoreWriter(store, slos, BOUNDS)
    w.apply(requests(("2026-11-20T10:02:30+00:00", "chicago", 200, 0.01, "GET")))
    got = status(store, slos, "2026-11-20T10:05:00+00:00")
    avail = got[("avail", "chicago")]
    assert (avail.total, avail.good) == (5, 3)  # 500 and 429 are bad
    assert avail.sli == pytest.approx(0.6)
    fast = got[("reads-fast", "chicago")]
    # GET only; 0.5 s is over 300 ms; the fast 500 is good here (failures count against availability)
    assert (fast.total, fast.good) == (4, 3)
    assert got[("avail", "*")].total == 5
    assert got[("avail", "chicago")].facility_name == "Chicago General"
    assert got[("avail", "chicago")].sla == 0.999
    assert got[("avail", "chicago")].sla_met is False
    # Burn rates: every request in the last 5 minutes (5 < min_events 10: no data for 5m).
    assert avail.burn_rates["5m"] is None
    quiet = got[("avail", "quiet")]
    assert (quiet.total, quiet.sli, quiet.budget_remaining, quiet.alert) == (0, None, 1.0, "none")


def test_replay_a_later_slo_gives_what_live_recording_gives(tmp_path: Path, slos: list[Slo]) -> None:
    batch = requests(
        *(
            (f"2026-11-20T09:{m:02d}:00+00:00", "chicago", 500 if m % 7 == 0 else 200, 0.05 * (m % 9), "GET")
            for m in range(60)
        )
    )
    live = Store(tmp_path / "live.db")
    StoreWriter(live, slos, BOUNDS).apply(batch)
    later = Store(tmp_path / "later.db")
    StoreWriter(later, slos[:1], BOUNDS).apply(batch)  # only the first SLO existed then
    assert sorted(replay(later, slos)) == sorted(s.key for s in slos[1:])
    assert replay(later, slos) == []  # nothing left to replay
    a = status(live, slos, "2026-11-20T11:00:00+00:00")
    b = status(later, slos, "2026-11-20T11:00:00+00:00")
    assert {k: (r.total, r.good, r.sli) for k, r in a.items()} == {
        k: (r.total, r.good, r.sli) for k, r in b.items()
    }


def test_calendar_month_is_the_facilitys_own_across_dst(tmp_path: Path, slos: list[Slo]) -> None:
    store = Store(tmp_path / "s.db")
    StoreWriter(store, slos, BOUNDS).apply(
        requests(
            ("2026-10-01T03:00:00+00:00", "chicago", 200, 0.01, "GET"),  # local Sep 30 22:00 CDT
            ("2026-10-01T06:00:00+00:00", "chicago", 200, 0.01, "GET"),  # local Oct 1 01:00 CDT
            ("2026-11-01T02:00:00+00:00", "chicago", 200, 0.01, "GET"),  # local Oct 31 21:00: UTC November
            (
                "2026-11-01T06:30:00+00:00",
                "chicago",
                200,
                0.01,
                "GET",
            ),  # local Nov 1 01:30 CDT (before the fall back)
        )
    )
    # Local Oct 31 23:30 CDT: October (local) holds the 2nd and 3rd requests; UTC November the 3rd.
    got = status(store, slos, "2026-11-01T04:30:00+00:00")
    assert got[("monthly", "chicago")].total == 2
    assert got[("monthly", "chicago")].window_start == "2026-10-01T00:00:00-05:00"
    assert got[("monthly", "*")].total == 1
    # Local Nov 1 02:30 CST, after clocks fell back: November began at 05:00Z.
    got = status(store, slos, "2026-11-01T08:30:00+00:00")
    assert got[("monthly", "chicago")].total == 1
    assert got[("monthly", "chicago")].window_start == "2026-11-01T00:00:00-05:00"
    start = period_start("month", "America/Chicago", ts("2026-11-01T08:30:00+00:00"))
    assert start.astimezone(UTC).isoformat() == "2026-11-01T05:00:00+00:00"


def test_maintenance_is_excluded_and_listed(tmp_path: Path, slos: list[Slo]) -> None:
    store = Store(tmp_path / "s.db")
    items = [(f"2026-11-20T02:{m:02d}:00+00:00", "chicago", 503, 0.01, "GET") for m in range(30)]
    items += [(f"2026-11-20T04:{m:02d}:00+00:00", "chicago", 200, 0.01, "GET") for m in range(30)]
    StoreWriter(store, slos, BOUNDS).apply(requests(*items))
    tz = ZoneInfo("America/Chicago")
    window = Maintenance(
        datetime(2026, 11, 19, 20, 0, tzinfo=tz), datetime(2026, 11, 19, 21, 0, tzinfo=tz), "EHR upgrade"
    )
    facs = [Facility("chicago", "Chicago General", "America/Chicago", 0.999, (window,)), FACILITIES[1]]
    got = status(store, slos, "2026-11-20T06:00:00+00:00", facs)
    row = got[("avail", "chicago")]
    assert (row.total, row.good, row.sli) == (30, 30, 1.0)
    assert row.maintenance == [
        {"start": "2026-11-19T20:00:00-06:00", "end": "2026-11-19T21:00:00-06:00", "reason": "EHR upgrade"}
    ]
    assert (got[("avail", "*")].total, got[("avail", "*")].good) == (30, 30)
    without = status(store, slos, "2026-11-20T06:00:00+00:00")
    assert without[("avail", "chicago")].total == 60


def test_timeslices_count_minutes(tmp_path: Path, slos: list[Slo]) -> None:
    store = Store(tmp_path / "s.db")
    items = []
    for m in range(10):  # ten minutes with traffic; minutes 3 and 4 have 2 of 4 requests failing
        for i in range(4):
            items.append(
                (
                    f"2026-11-20T03:{m:02d}:{i * 10:02d}+00:00",
                    "chicago",
                    500 if m in (3, 4) and i < 2 else 200,
                    0.01,
                    "GET",
                )
            )
    StoreWriter(store, slos, BOUNDS).apply(requests(*items))
    row = status(store, slos, "2026-11-20T05:00:00+00:00")[("uptime", "chicago")]
    assert (row.total, row.good) == (10, 8)  # minutes with data, good minutes: idle minutes are not counted
    assert (row.requests_total, row.requests_good) == (40, 36)
    assert row.sli == pytest.approx(0.8)


def test_old_days_roll_up_to_hours_and_still_count(tmp_path: Path, slos: list[Slo]) -> None:
    store = Store(tmp_path / "s.db")
    StoreWriter(store, slos, BOUNDS).apply(
        requests(
            ("2026-10-01T10:00:00+00:00", "chicago", 200, 0.01, "GET"),
            ("2026-10-01T10:30:00+00:00", "chicago", 500, 0.01, "GET"),
            ("2026-11-20T10:00:00+00:00", "chicago", 200, 0.01, "GET"),
        )
    )
    store.compact_and_purge(
        ts("2026-11-21T00:00:00+00:00"), minute_days=35, hour_days=400, slo_minute_days=35
    )
    assert (
        store.db.execute(
            "SELECT count(*) FROM raw_minutes WHERE hour < ?", (ts("2026-10-15T00:00:00+00:00"),)
        ).fetchone()[0]
        == 0
    )
    assert store.db.execute("SELECT count(*) FROM raw_hours").fetchone()[0] >= 1
    assert store.db.execute("SELECT count(*) FROM slo_minutes WHERE day < 20400").fetchone()[0] == 0
    # A 30-day window at Oct 25 still sees Oct 1 through the hourly roll-up.
    got = status(store, slos, "2026-10-25T00:00:00+00:00")
    assert (got[("avail", "chicago")].total, got[("avail", "chicago")].good) == (2, 1)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_access_log_import_is_idempotent(tmp_path: Path, slos: list[Slo]) -> None:
    lines = [
        '{"timestamp":"2026-11-20T10:00:01.000Z","event":"request","trace_id":"a","span_id":"b","trace_flags":"01",'
        f'"facility":"chicago","service":"fhir","http.route":"/fhir/Patient/{{id}}","http.request.method":"GET",'
        f'"http.response.status_code":{500 if i % 10 == 0 else 200},"duration_ms":{i * 7 % 400}.5}}'
        for i in range(200)
    ]
    lines += ["not json", '{"event":"admin_access","timestamp":"2026-11-20T10:00:02Z"}']
    store = Store(tmp_path / "s.db")
    first = import_access_log(store, slos, BOUNDS, lines)
    assert (first.requests, first.skipped, first.minutes) == (200, 2, 1)

    def snapshot() -> list[tuple[object, ...]]:
        tables = ("raw_minutes", "slo_minutes", "slo_hours", "series")
        return [tuple(r) for t in tables for r in store.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3")]  # noqa: S608

    before = snapshot()
    import_access_log(store, slos, BOUNDS, lines)
    assert snapshot() == before
    row = status(store, slos, "2026-11-20T10:05:00+00:00")[("avail", "chicago")]
    assert (row.total, row.good) == (200, 180)


def test_readonly_store_must_exist(tmp_path: Path) -> None:
    from slo.store import StoreError

    with pytest.raises(StoreError, match="no store here yet"):
        Store(tmp_path / "missing.db", readonly=True)
    Store(tmp_path / "s.db").close()
    ro = Store(tmp_path / "s.db", readonly=True)
    with pytest.raises(sqlite3.OperationalError):
        ro.db.execute("CREATE TABLE x (a)")


def test_catch_up_fills_the_gap_after_a_replay(tmp_path: Path, slos: list[Slo]) -> None:
    """`slo status` replays a new SLO while the running gateway (old config) keeps recording
    only the old ones; the gateway restarted with the new SLO rebuilds the gap from raw."""
    first = requests(
        *(
            (f"2026-11-20T09:{m:02d}:00+00:00", "chicago", 500 if m % 5 == 0 else 200, 0.05, "GET")
            for m in range(30)
        )
    )
    later = requests(
        *(
            (f"2026-11-21T10:{m:02d}:00+00:00", "chicago", 500 if m % 3 == 0 else 200, 0.5, "GET")
            for m in range(30)
        )
    )
    live = Store(tmp_path / "live.db")  # a gateway that always had every SLO
    w = StoreWriter(live, slos, BOUNDS)
    w.apply(first)
    w.apply(later)
    store = Store(tmp_path / "s.db")
    old = StoreWriter(store, slos[:1], BOUNDS)
    old.apply(first)
    assert replay(store, slos) == [s.key for s in slos[1:]]  # `slo status` with the new config
    old.apply(later)  # the old gateway records on, without the new SLOs
    stale = status(store, slos, "2026-11-21T12:00:00+00:00")
    assert stale[("reads-fast", "chicago")].total == 30  # only the first half hour
    assert catch_up(store, slos) == []  # the restarted gateway: nothing new, gaps rebuilt
    got = status(store, slos, "2026-11-21T12:00:00+00:00")
    want = status(live, slos, "2026-11-21T12:00:00+00:00")
    assert {k: (r.total, r.good) for k, r in got.items()} == {k: (r.total, r.good) for k, r in want.items()}
    assert got[("reads-fast", "chicago")].total == 60


def test_status_pages_only_when_an_alert_would(tmp_path: Path) -> None:
    """An outage pages an SLO with pages on; an SLO with ``page: false`` shows a ticket at most,
    as its generated alert rules do (Slo.alerting_windows decides both)."""
    p = tmp_path / "slos.yaml"
    p.write_text(
        "version: 1\nslos:\n"
        "  - {name: paged, service: fhir, objective: 99, window: 30d, sli: {availability: {}}}\n"
        "  - {name: quiet, service: fhir, objective: 99, window: 30d, sli: {availability: {}},\n"
        "     alerting: {page: false}}\n"
    )
    slos = load_slos(p)
    store = Store(tmp_path / "s.db")
    w = StoreWriter(store, slos, BOUNDS)
    start = ts("2026-11-20T10:00:00+00:00")
    failing = [
        (datetime.fromtimestamp(start + 20 * i, UTC).isoformat(), "chicago", 500, 0.05, "GET")
        for i in range(180)
    ]
    w.apply(requests(*failing))  # an hour of nothing but 500s
    got = status(store, slos, "2026-11-20T11:00:00+00:00")
    assert got[("paged", "chicago")].alert == "page"
    assert got[("quiet", "chicago")].alert == "ticket"


def _slos_with_threshold(tmp_path: Path, threshold: str) -> list[Slo]:
    p = tmp_path / f"slos-{threshold}.yaml"
    p.write_text(
        "version: 1\nslos:\n  - {name: avail, service: fhir, objective: 99, sli: {availability: {}}}\n"
        f"  - {{name: fast, service: fhir, objective: 95, sli: {{latency: {{threshold: {threshold}}}}}}}\n"
    )
    return load_slos(p)


def _raw_totals(store: Store) -> tuple[int, int]:
    """Requests in the raw minute rows and in the daily roll-ups, over every layout."""
    minutes = sum(int(a.sum()) for *_, a in store.raw_hours_between(0, 2**40))
    hours = sum(int(a.sum()) for *_, a in store.raw_days_between(0, 2**31))
    return minutes, hours


def test_a_threshold_changed_within_the_hour_loses_no_recorded_count(tmp_path: Path) -> None:
    """A gateway restarted with another latency threshold (so other bucket bounds) in the
    middle of an hour continues that hour's rows: what the first run recorded is still there,
    each count at its own bound, in the minutes, in the day's roll-up and in a replay."""
    db = tmp_path / "s.db"
    at_300, at_200 = _slos_with_threshold(tmp_path, "300ms"), _slos_with_threshold(tmp_path, "200ms")
    bounds_300, bounds_200 = duration_buckets_s([0.3]), duration_buckets_s([0.2])
    key = ("chicago", "fhir", "/fhir/Patient/{id}", "GET", 200)
    minute = ts("2026-11-20T10:00:00+00:00")

    def one(bounds: tuple[float, ...], duration_s: float, n: int) -> list[int]:
        row = [0] * (len(bounds) + 1)
        row[int(np.searchsorted(bounds, duration_s, side="left"))] = n
        return row

    store = Store(db)
    # First run, threshold 300ms: 10 requests at 0.28 s, 5 at 0.1 s in 10:00; 4 at 0.28 s in 11:00.
    StoreWriter(store, at_300, bounds_300).apply(
        {
            (key, minute): [
                a + b for a, b in zip(one(bounds_300, 0.28, 10), one(bounds_300, 0.1, 5), strict=True)
            ]
        }
    )
    store.close()
    store = Store(db)  # restarted at 10:20 with the threshold at 200ms: 7 requests at 0.15 s
    writer = StoreWriter(store, at_200, bounds_200)
    writer.apply({(key, minute + 1200): one(bounds_200, 0.15, 7)})
    writer.apply({(key, minute + 1260): one(bounds_200, 0.15, 1)})  # a later flush, same hour
    assert _raw_totals(store) == (23, 0)

    # Each count is at its own bound: a 300ms SLO defined now counts the first run's 0.28 s
    # requests good (at 300ms, exactly) and the second run's 0.15 s too; 200ms: only the 0.1 s
    # and 0.15 s ones.
    for threshold, good in (("300ms", 23), ("200ms", 13)):
        later = [
            Slo(**{**s.__dict__, "name": f"later-{threshold}"}) if s.kind == "latency" else s
            for s in _slos_with_threshold(tmp_path, threshold)
        ]
        replayed = Store(db)
        replay(replayed, later)
        row = status(replayed, later, "2026-11-20T10:30:00+00:00")[(f"later-{threshold}", "chicago")]
        assert (row.total, row.good, row.threshold_buckets) == (23, good, [])
        replayed.close()

    # The day's roll-up keeps both layouts' counts too.
    store.compact_and_purge(ts("2026-11-22T00:00:00+00:00"))
    assert _raw_totals(store) == (23, 23)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_day_counted_with_two_layouts_rolls_up_whole(tmp_path: Path) -> None:
    """Hours of one day counted with different bucket bounds (the gateway restarted with a new
    threshold in between) roll up into one row per series and day with every request."""
    store = Store(tmp_path / "s.db")
    at_300, at_200 = _slos_with_threshold(tmp_path, "300ms"), _slos_with_threshold(tmp_path, "200ms")
    bounds_300, bounds_200 = duration_buckets_s([0.3]), duration_buckets_s([0.2])
    key = ("chicago", "fhir", "/fhir/Patient/{id}", "GET", 500)
    StoreWriter(store, at_300, bounds_300).apply(
        {(key, ts("2026-11-20T09:00:00+00:00")): [3] * (len(bounds_300) + 1)}
    )
    StoreWriter(store, at_200, bounds_200).apply(
        {(key, ts("2026-11-20T15:00:00+00:00")): [2] * (len(bounds_200) + 1)}
    )
    total = 3 * (len(bounds_300) + 1) + 2 * (len(bounds_200) + 1)
    store.compact_and_purge(ts("2026-11-21T00:00:00+00:00"))
    assert _raw_totals(store) == (total, total)
    assert store.db.execute("SELECT count(*) FROM raw_hours").fetchone()[0] == 1
    # Minutes past retention: a status of that day reads the roll-up, and finds every request.
    store.compact_and_purge(ts("2027-01-10T00:00:00+00:00"), minute_days=35)
    assert _raw_totals(store) == (0, total)
