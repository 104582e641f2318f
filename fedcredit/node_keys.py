"""Naming and fingerprinting the institutions' node keys, shared by both ends.

An institution makes its SuperNode key pair with ``fedcredit keys`` (clients) and the operator
registers the public key under the institution's name with ``fedcredit nodes register``
(server): both use the one institution-id rule and the one fingerprint here. Cryptography only;
every layer may import it.
"""

from __future__ import annotations

import base64
import hashlib
import re

from configs.errors import UserError

#: an institution id: the key file's name and comment, the node config's ``institution-id``
INSTITUTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_institution_id(name: str, what: str) -> str:
    """``name`` when it is a valid institution id, else :class:`UserError` naming ``what``."""
    if not INSTITUTION_ID.match(name or ""):
        raise UserError(f"{what} '{name}': use letters, digits, '.', '_' and '-' only (starting with a letter "
                        "or digit, at most 100 characters), e.g. regional-bank-1")
    return name


def ssh_fingerprint(public_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line (as ``ssh-keygen -lf`` prints it)."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
