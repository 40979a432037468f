"""The audit trail's keys: data keys (AES-256-GCM) and the checkpoint signing key (Ed25519).

A data key file holds 32 random bytes, base64, on one line; its key id is the first 16 hex
digits of the key's SHA-256, written into every record it encrypts, so that a rotated-out key
kept in ``key_files`` still opens the records it wrote. The signing key is PKCS#8 PEM, its
public half SubjectPublicKeyInfo PEM: ``verify`` needs only the public one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DATA_KEY = "audit.key"
SIGNING_KEY = "audit-signing.key"
SIGNING_PUBLIC = "audit-signing.pub"


class AuditKeyError(Exception):
    """A key file that is missing, unreadable, malformed or too open."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only; never replace an existing key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def keygen(out: Path) -> list[Path]:
    """A new data key and signing key pair in ``out`` (created if need be); refuses to
    overwrite any existing file, since a lost key makes its records unreadable."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / DATA_KEY, out / SIGNING_KEY, out / SIGNING_PUBLIC]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise AuditKeyError(f"{existing[0]}: exists; keys are never overwritten (move it away first)")
    _secret_file(paths[0], base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")
    signing = Ed25519PrivateKey.generate()
    pem = signing.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _secret_file(paths[1], pem)
    public = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    paths[2].write_bytes(public)
    return paths


def _read_secret(path: Path) -> bytes:
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"{path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise AuditKeyError(f"{path}: readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    return data


def read_data_key(path: Path) -> bytes:
    data = _read_secret(path)
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuditKeyError(f"{path}: not a base64 key (make one with `vitalgate audit keygen`)") from None
    if len(key) != 32:
        raise AuditKeyError(f"{path}: an AES-256 key is 32 bytes (this one is {len(key)})")
    return key


def read_signing_key(path: Path) -> Ed25519PrivateKey:
    data = _read_secret(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise AuditKeyError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditKeyError(f"{path}: not an Ed25519 key")
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise AuditKeyError(f"{path}: {exc.strerror or exc}") from None
    except ValueError:
        raise AuditKeyError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path}: not an Ed25519 public key")
    return key


def public_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    """The data keys: the first encrypts, every one decrypts the records it wrote."""

    keys: dict[str, AESGCM]
    current: str

    @classmethod
    def load(cls, paths: Sequence[Path]) -> Keyring:
        raw = [read_data_key(p) for p in paths]
        keys = {key_id(k): AESGCM(k) for k in raw}
        return cls(keys, key_id(raw[0]))

    def open(self, kid: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
        """The plaintext, or None when the key is unknown or the record was altered."""
        aes = self.keys.get(kid)
        if aes is None:
            return None
        try:
            return aes.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            return None
