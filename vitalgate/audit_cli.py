"""``vitalgate audit keygen|verify|search|export``: the audit trail from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.config import AuditConfig
from gateway.audit.keys import AuditKeyError, Keyring, keygen, read_signing_key
from gateway.audit.search import AuditQuery
from gateway.audit.verify import Record, all_records, published_checkpoints, verify
from gateway.config import Config, GatewayConfig


def _audit(config: Config[GatewayConfig]) -> AuditConfig | None:
    if config.gateway.audit is None:
        print(f"vitalgate: {config.path}: no audit: section", file=sys.stderr)
    return config.gateway.audit


def _keyring(config: Config[GatewayConfig], audit: AuditConfig) -> Keyring:
    return Keyring.load([config.resolve(k) for k in audit.data_key_files()])


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
    )
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    anchor = f", anchored at {report.anchor['size']} records" if report.anchor else ""
    if report.problem is not None:
        print(f"audit trail: BAD: {report.problem}")
        return 1
    print(
        f"audit trail: OK: {report.records} records in {report.segments} segments,"
        f" {report.checkpoints} checkpoints{anchor}"
    )
    return 0


def selected(config: Config[GatewayConfig], audit: AuditConfig, args: argparse.Namespace) -> Iterator[Record]:
    query = AuditQuery.of(args.patient, args.user, args.facility, args.since, args.until)
    for rec in all_records(config.resolve(audit.path), _keyring(config, audit)):
        if query.matches(rec):
            yield rec


def _row(ev: dict[str, Any]) -> str:
    user: dict[str, Any] = next((a.get("who", {}) for a in ev.get("agent", []) if a.get("requestor")), {})
    who = user.get("identifier", {}).get("value", "?") if "display" not in user else user["display"]
    patient = next(
        (e["what"]["reference"] for e in ev.get("entity", []) if e.get("role", {}).get("code") == "1"), "-"
    )
    sub = ev["subtype"][0]["code"]
    return f"{ev['recorded']}  {ev['source']['site']:<14} {sub:<14} {ev['outcome']:>2}  {patient:<24} {who}"


def cmd_search(config: Config[GatewayConfig], args: argparse.Namespace) -> int:
    audit = _audit(config)
    if audit is None:
        return 1
    found = [r.event for r in selected(config, audit, args)]
    if args.format == "json":
        print(json.dumps(found, indent=1))
    else:
        print(f"{'RECORDED':<24}  {'FACILITY':<14} {'INTERACTION':<14} OC  {'PATIENT':<24} USER")
        for ev in found:
            print(_row(ev))
    return 0


def cmd_export(config: Config[GatewayConfig], args: argparse.Namespace) -> int:
    """The patient's accounting of disclosures: a FHIR Bundle (collection) of AuditEvents."""
    audit = _audit(config)
    if audit is None:
        return 1
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
    out.chmod(0o600)  # it names the patient
    print(f"{out}: {len(found)} AuditEvents of Patient/{args.patient}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], with_config: Any) -> None:
    """``audit`` and its subcommands; ``with_config`` wraps a command taking a loaded config."""
    audit = sub.add_parser(
        "audit", help="the audit trail: keys, verification, search, export"
    ).add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("keygen", help="write a data key and a signing key pair into a folder")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_keygen)
    p = audit.add_parser("verify", help="check every record, the chain, the seals and the checkpoints")
    p.add_argument("--config", required=True)
    p.add_argument("--anchor", help="a file of published checkpoints (default: the access log)")
    p.set_defaults(func=with_config(cmd_verify))
    for name, doc, fn in (
        ("search", "AuditEvents by patient, user, facility and time", cmd_search),
        ("export", "a patient's AuditEvents as a FHIR Bundle (accounting of disclosures)", cmd_export),
    ):
        p = audit.add_parser(name, help=doc)
        p.add_argument("--config", required=True)
        p.add_argument("--patient", required=name == "export")
        p.add_argument("--user")
        p.add_argument("--facility")
        p.add_argument("--since", help="ISO 8601 time (UTC if no offset)")
        p.add_argument("--until")
        if name == "search":
            p.add_argument("--format", choices=["table", "json"], default="table")
        else:
            p.add_argument("--out", required=True, help="FILE.json")
        p.set_defaults(func=with_config(fn))
