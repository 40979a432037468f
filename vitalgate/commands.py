"""What the ``vitalgate`` commands share: loading ``--config`` (``with_config``, the one way a
command gets its config), ``--prometheus-url`` and opening the embedded store.

The commands themselves live by group: ``gateway_cli`` (serve, reload, check, demo),
``slo_cli`` (slo, alerts, dashboards), ``report_cli`` (report, store), ``audit_cli``; the
parser is put together in ``cli``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable

from core.configfile import ConfigError
from gateway.audit.keys import AuditKeyError
from gateway.config import Config
from slo.store import Store, StoreError
from vitalgate.config import ProductConfig, load_config

Subcommands = argparse._SubParsersAction
"""What ``add_subparsers`` returns (argparse exports no public name for it)."""

Command = Callable[[Config[ProductConfig], argparse.Namespace], int]
"""A command run with its loaded config; returns the exit status."""


def print_problems(exc: ConfigError) -> None:
    """Every problem of a config, one ``file:line:column: field: message`` per line, and how many."""
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    n = len(exc.problems)
    print(f"vitalgate: {n} problem{'s' if n != 1 else ''} in configuration", file=sys.stderr)


def with_config(command: Command) -> Callable[[argparse.Namespace], int]:
    """``command`` run with its ``--config`` loaded: exit 1 with every problem when the config
    is bad (nothing of the command runs then), and exit 1 with the message when the command
    meets a key it cannot read or a value it cannot use (``AuditKeyError``, ``ValueError``)."""

    def run(args: argparse.Namespace) -> int:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print_problems(exc)
            return 1
        try:
            return command(config, args)
        except (AuditKeyError, ValueError) as exc:
            print(f"vitalgate: {exc}", file=sys.stderr)
            return 1

    return run


def prometheus_url(args: argparse.Namespace) -> str | None:
    """``--prometheus-url``, else $PROMETHEUS_URL; None (said on stderr) when neither is set."""
    url: str | None = args.prometheus_url or os.environ.get("PROMETHEUS_URL")
    if not url:
        print("vitalgate: this needs --prometheus-url URL (or PROMETHEUS_URL)", file=sys.stderr)
        return None
    return url


def open_store(config: Config[ProductConfig], readonly: bool = True) -> Store | None:
    """The embedded store of ``telemetry.store.path``; None (said on stderr) when it cannot open."""
    path = config.resolve(config.gateway.telemetry.store.path)
    try:
        return Store(path, readonly=readonly)
    except (StoreError, sqlite3.Error) as exc:
        print(f"vitalgate: store {path}: {exc}", file=sys.stderr)
        return None
