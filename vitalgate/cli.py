"""The ``vitalgate`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import Config, load_config
from slo.configfile import ConfigError


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        n = len(exc.problems)
        print(f"vitalgate: {n} problem{'s' if n != 1 else ''} in configuration", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    g = config.gateway
    print(
        f"{args.config}: ok: {len(g.upstreams)} upstreams, {len(g.routes)} routes, "
        f"{len(g.facilities.known)} facilities, {len(config.slos)} SLOs"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from gateway.server import run  # noqa: PLC0415  (keeps `check` fast)

    return run(config)


def cmd_demo(args: argparse.Namespace) -> int:
    from vitalgate.demo import run_demo  # noqa: PLC0415

    return run_demo(duration_s=args.duration, out_dir=Path(args.out), rate=args.rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitalgate", description="Observability and SLO reliability gateway for clinical APIs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True, help="gateway.yaml")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate gateway.yaml and the slos.yaml it names")
    p.add_argument("--config", required=True, help="gateway.yaml")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="run the gateway in front of a demo clinical upstream with traffic")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--out", default="var/demo", help="folder for config, logs and traces (default var/demo)")
    p.add_argument("--rate", type=float, default=60.0, help="requests per second in total (default 60)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
