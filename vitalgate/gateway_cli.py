"""``vitalgate serve``, ``reload``, ``check``, ``version`` and ``demo``: running the gateway."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from gateway.config import Config
from gateway.native import build
from vitalgate.commands import Subcommands, with_config
from vitalgate.config import ProductConfig, load_config


def cmd_version(args: argparse.Namespace) -> int:
    try:
        number = version("vitalgate")
    except PackageNotFoundError:
        number = "unknown (not installed)"
    info = build()
    print(f"vitalgate {number}, {info.describe()}")
    return 1 if info.stale else 0


def cmd_check(config: Config[ProductConfig], args: argparse.Namespace) -> int:
    g = config.gateway
    print(
        f"{args.config}: ok: {len(g.upstreams)} upstreams, {len(g.routes)} routes, "
        f"{len(g.facilities.known)} facilities, {len(config.slos)} SLOs"
    )
    from vitalgate.generate import unrouted_warning  # noqa: PLC0415

    warning = unrouted_warning(config)
    if warning is not None:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    return 0


def cmd_serve(config: Config[ProductConfig], args: argparse.Namespace) -> int:
    from gateway.roles import METRICS_DIR_ENV, Role, prepare_metrics_dir, worker_role_from_env  # noqa: PLC0415

    # Before anything imports prometheus_client (it reads the folder once, at import): a worker
    # inherited it, a supervisor makes it for itself and its workers.
    worker = worker_role_from_env()
    if worker is None and args.workers > 1:
        prepare_metrics_dir()
    from gateway.server import run  # noqa: PLC0415
    from gateway.workers import run_workers  # noqa: PLC0415
    from vitalgate.admin_pages import extend_admin  # noqa: PLC0415

    path = args.config

    def load() -> Config[ProductConfig]:
        return load_config(path)

    if worker is not None:
        index, count, port = worker
        role = Role("worker", index, count, port, os.environ[METRICS_DIR_ENV])
        return run(config, role=role, load=load)
    if args.workers > 1:
        return run_workers(config, args.config, args.workers, admin_extensions=[extend_admin], load=load)
    return run(config, admin_extensions=[extend_admin], load=load)


ADMIN_TOKEN_ENV = "VITALGATE_ADMIN_TOKEN"  # noqa: S105  (the variable's name)


def cmd_reload(config: Config[ProductConfig], args: argparse.Namespace) -> int:
    """Ask the running gateway (its admin listener, from the config) to reload; the result is
    printed; exit 1 when the running config stayed in force. A config with problems is refused
    here (the gateway would refuse it too): nothing is sent."""
    import http.client  # noqa: PLC0415
    import json  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    url = args.admin_url or f"http://{config.gateway.admin.listen}"
    parts = urlsplit(url)
    headers = {"Content-Length": "0"}
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname or "127.0.0.1", parts.port, timeout=args.timeout)
    try:
        conn.request("POST", parts.path.rstrip("/") + "/api/v1/reload", headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except OSError as exc:
        print(f"vitalgate: {url}: no gateway answered: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        print(f"vitalgate: {url}: HTTP {response.status}, not a reload result", file=sys.stderr)
        return 1
    if response.status not in (200, 422):
        detail = body.get("detail") or body.get("error")
        print(f"vitalgate: {url}: HTTP {response.status}: {detail}", file=sys.stderr)
        if response.status == 401:
            said = "was refused" if token else "is not set"
            print(
                f"vitalgate: {ADMIN_TOKEN_ENV} {said}: set it to an admin token with role sre "
                "(one of admin.tokens in the gateway config)",
                file=sys.stderr,
            )
        return 1
    if body.get("result") != "success":
        for error in body.get("errors", []):
            print(error, file=sys.stderr)
        print("vitalgate: reload failed; the running config stays in force", file=sys.stderr)
        return 1
    workers = f", {body['workers']} workers" if body.get("workers") else ""
    print(f"reloaded: config {body.get('sha256', '')[:12]}{workers}")
    for name in body.get("restart_required", []):
        print(f"needs a restart to change: {name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vitalgate.demo import run_demo  # noqa: PLC0415

    return run_demo(duration_s=args.duration, out_dir=Path(args.out), rate=args.rate)


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {value!r})") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256 (got {n})")
    return n


def add_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """serve, version, check and demo: running the gateway."""
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True, help="gateway.yaml")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="proxy processes sharing the port with SO_REUSEPORT (default 1; about one per core)",
    )
    p.set_defaults(func=with_config(cmd_serve))

    p = sub.add_parser(
        "reload",
        help="the running gateway re-reads its config (as SIGHUP does)",
        description="Ask the running gateway to re-read its config (as SIGHUP does). When the "
        f"config has admin.tokens, set {ADMIN_TOKEN_ENV} to a token with role sre.",
        epilog=f"environment: {ADMIN_TOKEN_ENV}: the admin token sent as Authorization: Bearer",
    )
    p.add_argument(
        "--config", required=True, help="gateway.yaml (validated here first; names the admin listener)"
    )
    p.add_argument("--admin-url", default=None, help="the admin listener, if not admin.listen of the config")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the result (default 60)")
    p.set_defaults(func=with_config(cmd_reload))

    p = sub.add_parser("version", help="version, and whether the request path runs compiled")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("check", help="validate gateway.yaml and the slos.yaml it names")
    p.add_argument("--config", required=True, help="gateway.yaml")
    p.set_defaults(func=with_config(cmd_check))

    p = sub.add_parser("demo", help="run the gateway in front of a demo clinical upstream with traffic")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--out", default="var/demo", help="folder for config, logs and traces (default var/demo)")
    p.add_argument("--rate", type=float, default=60.0, help="requests per second in total (default 60)")
    p.set_defaults(func=cmd_demo)
