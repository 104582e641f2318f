"""Files an institution signs with its node key, and their check at the operator.

The natural key is the one the operator already bound to the institution: the SuperNode key
pair from ``fedcredit keys`` (ECDSA on a NIST curve, OpenSSH format), whose public key the
operator registered under the institution's name (``fedcredit nodes register NAME.pub``). A
signature is ECDSA with SHA-256 over the bytes the caller gives (a canonical JSON body). It
names the public key (the OpenSSH line) and its fingerprint (:func:`fedcredit.node_keys.ssh_fingerprint`),
so the operator can check it against the ``.pub`` file the institution registered.
Cryptography only; every layer may import it.
"""

from __future__ import annotations

import base64
from pathlib import Path

from configs.errors import UserError
from fedcredit.node_keys import ssh_fingerprint

ALGORITHM = "ecdsa-sha256"


def _openssh_line(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def load_node_private_key(private_key_path: str | Path):
    """The node's OpenSSH ECDSA private key (``fedcredit keys``; the file ``--key`` of ``node start``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p = Path(private_key_path).expanduser()
    if not p.is_file():
        raise UserError(f"--key {p}: no such file; give the node's private key (fedcredit keys --out DIR --name NAME "
                        "writes DIR/NAME)")
    try:
        key = serialization.load_ssh_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise UserError(f"--key {p}: not an unencrypted OpenSSH private key ({exc}); give the node key written "
                        "by 'fedcredit keys' (the .pub goes to the operator, the private file is used here)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UserError(f"--key {p}: a {type(key).__name__.lstrip('_')}, not the node's ECDSA key ('fedcredit keys')")
    return key


def sign_with_node_key(key, payload: bytes) -> dict:
    """``{"algorithm", "public_key", "fingerprint", "signature"}`` of ``payload`` with the node's
    private key (:func:`load_node_private_key`)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    line = _openssh_line(key.public_key())
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return {"algorithm": ALGORITHM, "public_key": line, "fingerprint": ssh_fingerprint(line),
            "signature": base64.b64encode(signature).decode("ascii")}


def verify_node_signature(signature: dict, payload: bytes, where: str) -> str:
    """The signer's fingerprint when ``signature`` (:func:`sign_with_node_key`) is valid for
    ``payload``; :class:`UserError` naming ``where`` otherwise."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM:
        raise UserError(f"{where}: the signature is not an {ALGORITHM} signature of fedcredit")
    try:
        key = serialization.load_ssh_public_key(str(signature.get("public_key", "")).encode())
        raw = base64.b64decode(str(signature.get("signature", "")), validate=True)
    except (ValueError, IndexError, UnsupportedAlgorithm):
        raise UserError(f"{where}: the signature's public key or value is not readable") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UserError(f"{where}: the signature's key is not an ECDSA node key")
    try:
        key.verify(raw, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise UserError(f"{where}: the signature does not match the content — the file was modified after it was "
                        "signed; ask the institution for its original file") from None
    return ssh_fingerprint(_openssh_line(key))
