from pathlib import Path

import pytest

from core.configfile import ConfigError, parse_yaml
from core.durations import format_duration, parse_duration_s
from slo.spec import load_slos


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("30d", 2592000.0),
        ("1w", 604800.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)
    assert parse_duration_s(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5 s", "s", "1x", "-1s", "1s2"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration_s(bad)


def test_positions_are_kept() -> None:
    src = parse_yaml("a:\n  b: [1, {c: x}]\n", "f.yaml")
    assert src.data == {"a": {"b": [1, {"c": "x"}]}}
    assert src.position(("a", "b", 1, "c")) == (2, 14)
    assert src.position(("a", "b", 7)) == (2, 6)  # nearest written ancestor


def test_invalid_yaml_has_a_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_yaml("a: 1\nb: [1, 2\n", "f.yaml")
    assert str(err.value).startswith("f.yaml:3:1: invalid YAML")


def test_duplicate_keys_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"f.yaml:2:1: a: duplicate key"):
        parse_yaml("a: 1\na: 2\n", "f.yaml")


def test_slos_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "slos.yaml"
    path.write_text(
        "version: 1\n"
        "slos:\n"
        "  - name: a\n"
        "    service: fhir\n"
        "    objective: 120\n"
        "    sli: {latency: {threshold: 5}}\n"
        "  - name: a\n"
        "    service: billing\n"
        "    objective: 99\n"
        "    window: 30x\n"
        "    sli: {}\n"
        "    colour: blue\n"
    )
    with pytest.raises(ConfigError) as err:
        load_slos(path, services={"fhir"})
    lines = [str(p) for p in err.value.problems]
    f = str(path)
    assert lines == [
        f"{f}:5:16: slos[0].objective: must be between 0 and 100, exclusive (got 120.0)",
        f"{f}:6:32: slos[0].sli.latency.threshold: must be a duration with a unit, such as '300ms' or '2s' (got 5)",
        f"{f}:7:11: slos[1].name: duplicate SLO name 'a'",
        f"{f}:8:14: slos[1].service: unknown service 'billing' (upstreams: fhir)",
        f"{f}:10:13: slos[1].window: must be a rolling window in days such as '30d', or {{calendar: month}} (got '30x')",
        f"{f}:11:10: slos[1].sli: exactly one of 'availability' or 'latency' is required",
        f"{f}:12:5: slos[1].colour: unknown field",
    ]


def test_slos_model(tmp_path: Path) -> None:
    path = tmp_path / "slos.yaml"
    path.write_text(
        "version: 1\nslos:\n"
        "  - {name: avail, service: fhir, objective: 99.9, sli: {availability: {bad_statuses: [429]}}}\n"
        "  - {name: lat, service: fhir, objective: 99, window: {calendar: month},\n"
        "     filter: {methods: [get]}, sli: {latency: {threshold: 300ms}}}\n"
    )
    avail, lat = load_slos(path)
    assert avail.objective == pytest.approx(0.999)
    assert avail.error_budget == pytest.approx(0.001)
    assert avail.window_s == 30 * 86400
    assert avail.bad_statuses == (429,)
    assert lat.kind == "latency"
    assert lat.threshold_s == pytest.approx(0.3)
    assert lat.calendar == "month"
    assert lat.window_s is None
    assert lat.methods == ("GET",)
