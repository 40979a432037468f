"""Rule generation at scale: 200 facilities x 5 SLOs.

Prints the time to build and render the rules, the rule count, and the same for
2 facilities: rules group by the facility label, so their number does not grow
with facilities.

    python -m bench.alert_rules [--facilities 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from alerts.alertmanager import Receiver, Routing, build_alertmanager
from alerts.alertmanager import render as render_am
from alerts.rules import RuleOptions, build_rules, render, rule_count
from bench.slo_engine import SLOS_YAML
from slo.spec import load_slos


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--facilities", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vitalgate-rules-bench-"))
    (tmp / "slos.yaml").write_text(SLOS_YAML)
    slos = load_slos(tmp / "slos.yaml")
    results = {}
    for n in (2, args.facilities):
        facilities = [f"f{i:03d}" for i in range(n)]
        routing = Routing(
            receivers=(
                Receiver("oncall", "http://127.0.0.1:9/oncall"),
                *(Receiver(f"{f}-it", f"http://127.0.0.1:9/{f}") for f in facilities),
            ),
            default_receiver="oncall",
            facility_receivers={f: (f"{f}-it", "oncall") for f in facilities},
        )
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            doc = build_rules(
                slos, ["fhir", "scheduling"], RuleOptions(runbook_url="https://runbooks.example/{slo}")
            )
            text = render(doc, "gateway.yaml")
            am = render_am(build_alertmanager(routing), "gateway.yaml")
            times.append(time.perf_counter() - t)
        (tmp / f"rules-{n}.yaml").write_text(text)
        (tmp / f"alertmanager-{n}.yml").write_text(am)
        results[n] = (statistics.median(times), rule_count(doc), len(text), len(am))
    print(f"{'facilities':>10}{'SLOs':>6}{'rules':>7}{'rules.yaml':>12}{'alertmanager.yml':>18}{'time':>10}")
    for n, (t, rules, size, am_size) in results.items():
        print(f"{n:>10}{len(slos):>6}{rules:>7}{size:>11,}B{am_size:>17,}B{t * 1000:>8.1f}ms")
    print(
        f"\nRules group by facility (sum by (facility)): {results[2][1]} rules for 2 facilities, "
        f"{results[args.facilities][1]} for {args.facilities}. Alertmanager routes grow with facilities "
        "(one per facility receiver), as they must."
    )
    print(f"(files in {tmp}; `promtool check rules {tmp / f'rules-{args.facilities}.yaml'}` judges them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
