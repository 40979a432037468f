"""``vitalgate audit keygen|verify|search|export``: the audit trail from the command line."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.config import AuditConfig
from gateway.audit.events import patient_id
from gateway.audit.keys import AuditKeyError, Keyring, keygen, read_signing_key
from gateway.audit.search import AuditQuery, counted, outcome_legend, summary
from gateway.audit.verify import Record, all_records, published_checkpoints, verify
from gateway.config import Config, GatewayConfig
from gateway.settings import data_key_paths


def _audit(config: Config[GatewayConfig]) -> AuditConfig | None:
    if config.gateway.audit is None:
        print(f"vitalgate: {config.path}: no audit: section", file=sys.stderr)
    return config.gateway.audit


def _keyring(config: Config[GatewayConfig], audit: AuditConfig) -> Keyring:
    return Keyring.load(data_key_paths(config, audit))


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        paths = keygen(Path(args.out))
    except (AuditKeyError, OSError) as exc:
        print(f"vitalgate: {exc}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


def _anchors(config: Config[GatewayConfig], anchor: str | None) -> list[dict[str, Any]]:
    """Published checkpoints: the ``--anchor`` file, or the configured access log."""
    log = config.gateway.telemetry.access_log.path
    path = Path(anchor) if anchor else (config.resolve(log) if log not in ("-", "") else None)
    if path is None or not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as f:
        return published_checkpoints(f)


def cmd_verify(config: Config[GatewayConfig], args: argparse.Namespace) -> int:
    audit = _audit(config)
    if audit is None:
        return 1
    signer = read_signing_key(config.resolve(audit.signing_key_file))
    report = verify(
        config.resolve(audit.path),
        _keyring(config, audit),
        signer.public_key(),
        _anchors(config, args.anchor),
        checkpoint_interval_s=audit.checkpoint_interval,
    )
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    anchor = f", anchored at {report.anchor['size']} records" if report.anchor else ""
    if report.problem is not None:
        print(f"audit trail: BAD: {report.problem}")
        return 1
    print(
        f"audit trail: OK: {counted(report.records, 'record')} in {counted(report.segments, 'segment')},"
        f" {counted(report.checkpoints, 'checkpoint')}{anchor}"
    )
    return 0


def unknown_facility(config: Config[GatewayConfig], facility: str | None) -> bool:
    """Whether ``--facility`` names no configured facility (said on stderr, as ``slo status``
    says it): a misspelt id would otherwise find nothing and look like an empty trail."""
    known = sorted(f.id for f in config.facilities())
    if facility is None or facility in known:
        return False
    print(f"vitalgate: unknown facility {facility!r} (known: {', '.join(known) or 'none'})", file=sys.stderr)
    return True


def selected(config: Config[GatewayConfig], audit: AuditConfig, args: argparse.Namespace) -> Iterator[Record]:
    query = AuditQuery.of(args.patient, args.user, args.facility, args.since, args.until)
    for rec in all_records(config.resolve(audit.path), _keyring(config, audit)):
        if query.matches(rec):
            yield rec


TABLE = "{:<24}  {:<14} {:<14} {:>2}  {:<24} {}"
CSV_COLUMNS = (
    "recorded",
    "facility",
    "interaction",
    "outcome",
    "outcome_text",
    "patient",
    "user",
    "user_id",
    "id",
)


def cmd_search(config: Config[GatewayConfig], args: argparse.Namespace) -> int:
    audit = _audit(config)
    if audit is None:
        return 1
    if unknown_facility(config, args.facility):
        return 2
    found = [r.event for r in selected(config, audit, args)]
    if args.format == "json":
        print(json.dumps(found, indent=1))
    elif args.format == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(CSV_COLUMNS)
        for ev in found:
            s = summary(ev)
            out.writerow([getattr(s, c) for c in CSV_COLUMNS])
    else:
        print(TABLE.format("RECORDED", "FACILITY", "INTERACTION", "OC", "PATIENT", "USER"))
        for ev in found:
            s = summary(ev)
            print(TABLE.format(s.recorded, s.facility, s.interaction, s.outcome, s.patient, s.user))
        print(f"{counted(len(found), 'AuditEvent')}. OC is the outcome:")
        print(outcome_legend())
    return 0


def cmd_export(config: Config[GatewayConfig], args: argparse.Namespace) -> int:
    """The selected AuditEvents as a FHIR Bundle (collection): with ``--patient``, the patient's
    accounting of disclosures."""
    audit = _audit(config)
    if audit is None:
        return 1
    if unknown_facility(config, args.facility):
        return 2
    found = [r.event for r in selected(config, audit, args)]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "total": len(found),
        "entry": [{"fullUrl": f"urn:uuid:{ev['id']}", "resource": ev} for ev in found],
    }
    out = Path(args.out)
    out.write_text(json.dumps(bundle, indent=1) + "\n")
    out.chmod(0o600)  # it names patients and users
    whose = f" of Patient/{patient_id(args.patient)}" if args.patient else ""
    print(f"{out}: {counted(len(found), 'AuditEvent')}{whose}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], with_config: Any) -> None:
    """``audit`` and its subcommands; ``with_config`` wraps a command taking a loaded config."""
    audit = sub.add_parser(
        "audit", help="the audit trail: keys, verification, search, export"
    ).add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("keygen", help="write a data key and a signing key pair into a folder")
    p.add_argument("--out", required=True, help="folder for the keys (existing keys are never overwritten)")
    p.set_defaults(func=cmd_keygen)
    p = audit.add_parser("verify", help="check every record, the chain, the seals and the checkpoints")
    p.add_argument("--config", required=True)
    p.add_argument("--anchor", help="a file of published checkpoints (default: the access log)")
    p.set_defaults(func=with_config(cmd_verify))
    for name, doc, fn in (
        ("search", "AuditEvents by patient, user, facility and time", cmd_search),
        (
            "export",
            "AuditEvents as a FHIR Bundle (with --patient: the accounting of disclosures)",
            cmd_export,
        ),
    ):
        p = audit.add_parser(name, help=doc)
        p.add_argument("--config", required=True)
        p.add_argument("--patient", help="pat-1 or Patient/pat-1")
        p.add_argument("--user", help="a user's id (sub), an admin token's name, or vitalgate-probe")
        p.add_argument("--facility", help="a facility id of the config (reads of the trail have none)")
        p.add_argument("--since", help="ISO 8601 time (UTC if no offset)")
        p.add_argument("--until", help="ISO 8601 time (UTC if no offset), excluded")
        if name == "search":
            p.add_argument(
                "--format",
                choices=["table", "json", "csv"],
                default="table",
                help="table (with a legend of the outcome codes), json (the AuditEvents) or csv",
            )
        else:
            p.add_argument("--out", required=True, help="FILE.json")
        p.set_defaults(func=with_config(fn))
