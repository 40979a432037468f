from pathlib import Path

import pytest

from core.configfile import ConfigError
from slo.openslo import openslo_to_slos_yaml
from slo.spec import load_slos
from tests.support.cli import vitalgate

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_import_matches_golden_and_round_trips(tmp_path: Path) -> None:
    proc = vitalgate("slo", "import-openslo", str(GOLDEN / "openslo-in.yaml"), timeout=60)
    assert proc.stdout == (GOLDEN / "openslo-out.yaml").read_text()
    f = str(GOLDEN / "openslo-in.yaml")
    assert proc.stderr.splitlines() == [
        f"{f}:6:3: spec.ratioMetric: queries not translated: measured at the gateway as availability (status < 500)",
        f"{f}:33:3: spec.alertPolicies: not imported: alerts follow the multiwindow burn-rate table (see alerting:)",
        f"{f}:44:7: spec.indicator.spec.thresholdMetric: query not translated: latency measured at the gateway against 0.3 s",
        f"{f}:50:52: spec.timeWindow[0].calendar.timeZone: not imported: calendar windows use each facility's own time zone",
        f"{f}:50:18: spec.timeWindow[0].calendar.startTime: not imported: periods start on the first of the month or quarter",
        f"{f}:60:1: kind: kind AlertPolicy not imported (only SLO, and SLI by reference)",
    ]
    out = tmp_path / "slos.yaml"
    out.write_text(proc.stdout)
    avail, latency = load_slos(out, services={"fhir"})
    assert (avail.objective, avail.window_s, avail.kind) == (0.999, 28 * 86400, "availability")
    assert (latency.calendar, latency.budgeting, latency.timeslice_target, latency.threshold_s) == (
        "month",
        "timeslices",
        0.95,
        0.3,
    )


def test_unsupported_shapes_are_errors_with_lines(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(
        "apiVersion: openslo/v1\nkind: SLO\nmetadata: {name: x}\nspec:\n  service: fhir\n"
        "  indicator: {spec: {ratioMetric: {}}}\n  timeWindow: [{duration: 12h, isRolling: true}]\n"
        "  budgetingMethod: RatioTimeslices\n  objectives: [{target: 0.99}]\n"
    )
    with pytest.raises(ConfigError) as err:
        openslo_to_slos_yaml(p)
    assert [str(e) for e in err.value.problems] == [
        f"{p}:7:27: spec.timeWindow[0].duration: rolling windows must be whole days or weeks (got '12h')"
    ]
    p.write_text(p.read_text().replace("12h", "7d"))
    with pytest.raises(
        ConfigError, match=r"bad.yaml:8:20: spec.budgetingMethod: 'RatioTimeslices' is not supported"
    ):
        openslo_to_slos_yaml(p)
