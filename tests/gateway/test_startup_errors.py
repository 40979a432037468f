"""Start-up failures name the setting to change: `vitalgate serve` as a subprocess, one or
several workers, with an address already taken, a TLS file missing, a store it cannot write."""

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.server import Gateway
from gateway.startup import StartupError
from tests.support.cli import vitalgate
from tests.support.gateway import gateway_config
from vitalgate.config import load_config
from vitalgate.peers import free_port


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process listens on (a plain socket, as another server would hold it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield int(sock.getsockname()[1])
    sock.close()


def _config(tmp_path: Path, **changes: Any) -> Path:
    path = gateway_config(tmp_path, free_port())
    cfg = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _start_failed(config: Path, workers: int) -> dict[str, Any]:
    """Run `vitalgate serve`; it must exit 1 with one start_failed event on stderr."""
    done = vitalgate("serve", "--config", str(config), "--workers", str(workers), check=False, timeout=60)
    assert done.returncode == 1, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "start_failed"]
    assert len(failed) == 1, done.stderr
    event: dict[str, Any] = failed[0]
    assert "Errno" not in event["message"]
    return event


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_proxy_port_taken_names_listen(tmp_path: Path, taken: int, workers: int) -> None:
    event = _start_failed(_config(tmp_path, listen=f"127.0.0.1:{taken}"), workers)
    assert event["message"] == f"cannot start: listen: 127.0.0.1:{taken}: address already in use"
    assert event["setting"] == "listen"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_admin_port_taken_names_admin_listen(tmp_path: Path, taken: int, workers: int) -> None:
    event = _start_failed(_config(tmp_path, admin__listen=f"127.0.0.1:{taken}"), workers)
    assert event["message"] == f"cannot start: admin.listen: 127.0.0.1:{taken}: address already in use"
    assert event["setting"] == "admin.listen"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_store_path_that_cannot_be_written_names_the_store_setting(tmp_path: Path, workers: int) -> None:
    (tmp_path / "blocker").write_text("a file where the store's directory should be\n")
    event = _start_failed(_config(tmp_path, telemetry__store__path="blocker/vitalgate.db"), workers)
    db = tmp_path / "blocker" / "vitalgate.db"
    blocker = tmp_path / "blocker"
    assert event["message"] == f"cannot start: telemetry.store.path: {db}: {blocker} is not a directory"
    assert event["setting"] == "telemetry.store.path"


@pytest.mark.slow
def test_store_path_that_is_a_directory_names_the_store_setting(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    event = _start_failed(_config(tmp_path, telemetry__store__path="var"), 1)
    assert event["message"] == (
        f"cannot start: telemetry.store.path: {tmp_path / 'var'}: unable to open database file"
    )


def test_missing_tls_file_is_named_before_serving(tmp_path: Path) -> None:
    """`serve` validates the config first: the missing file is named with its line and field."""
    config = _config(tmp_path, tls={"cert_file": "missing-cert.pem", "key_file": "missing-key.pem"})
    done = vitalgate("serve", "--config", str(config), check=False, timeout=60)
    assert done.returncode == 1
    lines = (done.stdout + done.stderr).splitlines()
    cert = next(line for line in lines if "tls.cert_file" in line)
    assert cert.startswith(f"{config}:")
    assert cert.endswith("tls.cert_file: file not found: missing-cert.pem")
    assert any(line.endswith("tls.key_file: file not found: missing-key.pem") for line in lines)


async def test_tls_file_gone_after_validation_is_named_at_start(tmp_path: Path) -> None:
    """A key file removed between the config check and the listener's start (a secret rotated
    under the gateway) is named by its setting and path, not as an ssl error."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _self_signed(cert, key)
    config = load_config(_config(tmp_path, tls={"cert_file": "cert.pem", "key_file": "key.pem"}))
    key.unlink()
    gw = Gateway(config)
    with pytest.raises(StartupError) as err:
        await gw.start()
    await gw.stop()
    assert str(err.value) == f"tls.key_file: {key}: no such file or directory"
    assert err.value.setting == "tls.key_file"


def _self_signed(cert: Path, key: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(k, hashes.SHA256())
    )
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
