"""Ed25519 signing keys for the signed hash chains (:mod:`fedcredit.signed_chain`): files, names, loading.

A key pair lives in two PEM files: ``<name>.pem`` (PKCS#8 private key, mode 0600; may be
encrypted, its passphrase then in an environment variable) and ``<name>.pub.pem``
(SubjectPublicKeyInfo). A key's short name, its *key id*, is the first 16 hex digits of sha256
over the raw 32-byte public key; every chain entry names the key that signed it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from configs.errors import UserError

#: environment variable with the passphrase of an encrypted signing key (PEM)
PASSPHRASE_ENV = "FEDCREDIT_LEDGER_KEY_PASSPHRASE"
#: how to make a key pair, named in messages about a missing or unusable key
KEYGEN_HINT = "'fedcredit ledger keygen --out DIR'"


class ChainError(UserError):
    """A chain that cannot be continued (broken, wrong key, in use) or a key that cannot be used."""


def read_file_bytes(path: str | Path, name: str, missing: str) -> bytes:
    """The file's bytes; :class:`ChainError` ``"{name}: {missing}"`` when there is no such file and
    ``"{name}: cannot be read (…)"`` when it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise ChainError(f"{name}: {missing}")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ChainError(f"{name}: cannot be read ({exc.strerror})") from None


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's short name: the first 16 hex digits of sha256 over the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def key_record(public_key: Ed25519PublicKey) -> dict:
    """What a chain's first entry says about its key: ``{"key_id", "public_key_pem"}``."""
    return {"key_id": key_id(public_key), "public_key_pem": public_key_pem(public_key)}


def generate_key_pair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create an Ed25519 key pair: ``DIR/<name>.pem`` (private, mode 0600) and ``DIR/<name>.pub.pem``.

    Existing files are never overwritten (:class:`ChainError`).
    """
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    private_path, public_path = d / f"{name}.pem", d / f"{name}.pub.pem"
    for p in (private_path, public_path):
        if p.exists():
            raise ChainError(f"{p}: already exists; a key is never overwritten (choose another directory "
                             "or remove the old key pair yourself)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(private_path, 0o600)
    public_path.write_text(public_key_pem(key.public_key()))
    return private_path, public_path


def _read_key_file(path: str | Path, what: str) -> bytes:
    p = Path(path).expanduser()
    return read_file_bytes(p, f"{what} {p}", f"not found (create a key pair with {KEYGEN_HINT})")


def load_private_key(path: str | Path, what: str = "ledger key",
                     passphrase_env: str = PASSPHRASE_ENV) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (an encrypted one's passphrase from ``$passphrase_env``).

    ``what`` names the key in messages (e.g. "ledger key", "decision-log key").
    """
    data = _read_key_file(path, what)
    passphrase = os.environ.get(passphrase_env)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError:
        raise ChainError(f"{what} {path}: the key is encrypted; put its passphrase in ${passphrase_env}") from None
    except ValueError as exc:
        raise ChainError(f"{what} {path}: not a readable PEM private key ({exc}); give an Ed25519 private key, "
                         f"e.g. from {KEYGEN_HINT}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ChainError(f"{what} {path}: a {type(key).__name__.lstrip('_')}, not an Ed25519 key; the "
                         f"entries are signed with Ed25519 ({KEYGEN_HINT} makes one)")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (a private key file is accepted too)."""
    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise ChainError(f"public key {path}: not a readable PEM public key; give the signer's "
                             "Ed25519 public key (e.g. ledger-key.pub.pem)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ChainError(f"public key {path}: a {type(key).__name__.lstrip('_')}, not an Ed25519 key")
    return key


def public_key_from_pem_text(text: Any) -> Ed25519PublicKey | None:
    """The Ed25519 public key in a PEM string, or None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    return key if isinstance(key, Ed25519PublicKey) else None
