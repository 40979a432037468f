"""The ``vitalgate`` command: its parser, put together from the command groups (each a module
of its own: ``gateway_cli``, ``slo_cli``, ``report_cli``, ``audit_cli``), and ``main``.

Every command that reads ``--config`` gets it through one helper, ``commands.with_config``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway.diagnostics import configure as configure_diagnostics
from vitalgate import audit_cli, gateway_cli, report_cli, slo_cli
from vitalgate.commands import with_config
from vitalgate.gateway_cli import cmd_version


class _VersionAction(argparse.Action):
    """``vitalgate --version``: what ``vitalgate version`` prints, with its exit status."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit (as `version`)")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        parser.exit(cmd_version(namespace))


CONFIG_HELP = "the gateway config, gateway.yaml (it names slos.yaml)"


def _list_commands(parser: argparse.ArgumentParser) -> int:
    """A command group run alone: its commands, on stderr, and the usage error's status."""
    parser.print_help(sys.stderr)
    return 2


def _complete_help(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """Every subcommand group shows COMMAND (not its internal dest) in usage and errors, lists
    its commands when run alone, and every ``--config`` says what it takes, whichever module
    added the command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if action.metavar is None:
                action.metavar = "COMMAND"
            if not top:
                action.required = False
                parser.set_defaults(func=lambda _args, group=parser: _list_commands(group))
            for child in dict.fromkeys(action.choices.values()):
                _complete_help(child, top=False)
        elif "--config" in action.option_strings and not action.help:
            action.help = CONFIG_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitalgate", description="Observability and SLO reliability gateway for clinical APIs."
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gateway_cli.add_commands(sub)
    slo_cli.add_commands(sub)
    report_cli.add_commands(sub)
    audit_cli.add_commands(sub, with_config)
    _complete_help(parser)
    return parser


SIGPIPE_EXIT = 128 + 13
"""What a command whose reader went away exits with, as ``cat`` or ``grep`` would (``| head``)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_diagnostics()  # the process's own log records: JSON lines on stderr
    try:
        code = int(args.func(args))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader closed the pipe (``| head``): no traceback, and nothing more to write. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_EXIT
    return code
