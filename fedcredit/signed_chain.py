"""A signed hash chain: an append-only JSON-lines file of entries, each chained and Ed25519-signed.

This is the machinery behind the consortium's audit ledger (:mod:`server.ledger`) and an
institution's decision trail (:mod:`clients.decision_log`); it knows nothing about runs or
decisions. One JSON object per line::

    {"index": 7, "time": "2026-11-29T03:02:31.233+00:00", "kind": "round",
     "payload": {...}, "prev": "<hash of entry 6>", "key_id": "1a2b3c4d5e6f7a8b",
     "hash": "<sha256 hex>", "signature": "<Ed25519 signature hex>"}

* ``hash`` = sha256 over the canonical JSON (sorted keys, no spaces, UTF-8, no NaN) of the
  entry *without* ``hash`` and ``signature`` — so it covers index, time, kind, payload, the
  previous entry's hash and the key id;
* ``prev`` of entry 0 is 64 zeros (genesis); of entry *i* the ``hash`` of entry *i − 1*;
* ``signature`` = Ed25519 signature, by the writer's private key, of the 32 raw bytes of
  ``hash``; ``key_id`` = the first 16 hex digits of sha256 over the raw 32-byte public key.
* Every line is written in exactly that canonical form, followed by ``\\n``; an entry is
  durable once the file is fsynced (:meth:`SignedChain.append` does it per entry, or a writer
  appends several with ``sync=False`` and calls :meth:`SignedChain.sync` once — group commit).

Whoever verifies with the writer's public key knows that every entry was written by the holder
of that key, in this order, and was not changed, removed, reordered or inserted since. It cannot
show that the writer did not rewrite the whole file and re-sign it: that needs someone else to
keep a head hash they were shown. The first entry of a chain (its *start kind*) carries the
writer's public key (``payload.key.public_key_pem`` and ``key_id``), so the file can be checked
for self-consistency without the key — weaker, and said so by whoever reports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from configs.errors import UserError

GENESIS = "0" * 64
HASHED_FIELDS = ("index", "time", "kind", "payload", "prev", "key_id")
ENTRY_FIELDS = HASHED_FIELDS + ("hash", "signature")
#: environment variable with the passphrase of an encrypted signing key (PEM)
PASSPHRASE_ENV = "FEDCREDIT_LEDGER_KEY_PASSPHRASE"
#: how to make a key pair, named in messages about a missing or unusable key
KEYGEN_HINT = "'fedcredit ledger keygen --out DIR'"


class ChainError(UserError):
    """A chain that cannot be continued (broken, wrong key, in use) or a key that cannot be used."""


# ------------------------------------------------------------------------- encoding
def plain(obj: Any) -> Any:
    """``obj`` as plain JSON data: NumPy scalars/arrays unwrapped, NaN/±inf → None, Paths → str."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"ledger payload: cannot record a {type(obj).__name__}")


def canonical_json(obj: Any) -> bytes:
    """The one byte string an object hashes to: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def entry_hash(entry: dict) -> str:
    """sha256 (hex) over the canonical JSON of the hashed fields of ``entry``."""
    return hashlib.sha256(canonical_json({k: entry[k] for k in HASHED_FIELDS})).hexdigest()


def is_hash(text: Any) -> bool:
    """True for a sha256 hex digest: 64 lower-case hex digits."""
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


# ------------------------------------------------------------------------------ keys
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


# ------------------------------------------------------------------------ verifying
@dataclass
class ChainCheck:
    """The outcome of :func:`verify_chain`.

    ``ok`` is True only when every entry verifies. ``entries`` is the number of entries (lines)
    in the file; ``valid`` how many of them, from the start, verify; ``first_bad_index`` the
    position of the first one that does not (None when the chain is intact); ``bad_kind`` its
    ``kind`` as far as it could be read; ``reason`` what is wrong. ``head`` is the hash of the
    last valid entry (GENESIS for none); ``torn_tail`` is True when the only fault is a last
    line without its newline (an interrupted write). ``key_from_ledger``: the key was taken
    from the chain's own first entry rather than given.
    """

    ok: bool
    entries: int
    first_bad_index: int | None = None
    reason: str = ""
    bad_kind: str | None = None
    valid: int = 0
    head: str = GENESIS
    key_id: str | None = None
    key_from_ledger: bool = False
    torn_tail: bool = False
    chain: list[dict] = field(default_factory=list, repr=False)  # the valid entries, parsed


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key '{k}'")
        out[k] = v
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_entry_line(line: bytes) -> tuple[dict | None, str]:
    """One line as an entry: ``(entry, "")``, or ``(what could be read, what is wrong)``."""
    try:
        obj = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                         parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"is not a valid JSON line ({exc})"
    if not isinstance(obj, dict):
        return None, "is not a JSON object"
    missing = [f for f in ENTRY_FIELDS if f not in obj]
    extra = sorted(set(obj) - set(ENTRY_FIELDS))
    if missing:
        what = "has no signature (unsigned entry)" if missing == ["signature"] else \
            f"lacks the field(s) {', '.join(missing)}"
        return obj, what
    if extra:
        return obj, f"has unexpected field(s) {', '.join(extra)}"
    return obj, ""


def check_entry(entry: dict, position: int, prev: str, public_key: Ed25519PublicKey, expected_key_id: str,
                line: bytes) -> str:
    """'' when ``entry`` is a valid entry at ``position`` after ``prev``; otherwise what is wrong."""
    if not isinstance(entry["index"], int) or isinstance(entry["index"], bool):
        return f"its index {entry['index']!r} is not a whole number"
    if entry["index"] != position:
        return (f"its index is {entry['index']} where {position} was expected: an entry was removed, "
                "inserted or the entries were reordered")
    if not isinstance(entry["kind"], str) or not isinstance(entry["time"], str) \
            or not isinstance(entry["payload"], dict):
        return "kind, time or payload has the wrong type"
    if entry["prev"] != prev:
        return (f"its prev hash {str(entry['prev'])[:16]}… is not the hash of the entry before it "
                f"({prev[:16]}…): an entry before it was removed, replaced or reordered")
    try:
        computed = entry_hash(entry)
    except (TypeError, ValueError) as exc:
        return f"cannot be hashed ({exc})"
    if entry["hash"] != computed:
        if is_hash(entry["hash"]):
            return ("its contents do not match its hash: the entry (index, time, kind, payload, prev or "
                    "key id) or its stored hash was modified after it was written")
        return "its hash field is not a sha256 hex digest"
    if entry["key_id"] != expected_key_id:
        return (f"it is signed by key {entry['key_id']!r}, not by the ledger's key {expected_key_id}: "
                "appended or re-signed by someone else")
    sig = entry["signature"]
    if not isinstance(sig, str) or not sig:
        return "has no signature (unsigned entry)"
    try:
        raw_sig = bytes.fromhex(sig)
    except ValueError:
        return "its signature is not hex"
    try:
        public_key.verify(raw_sig, bytes.fromhex(computed))
    except InvalidSignature:
        return f"its signature does not verify under key {expected_key_id}: modified or signed by another key"
    if line != canonical_json(entry):
        return "the line is not in the canonical form it was written in: it was edited"
    return ""


def key_from_first_entry(entry: dict, start_kind: str) -> tuple[Ed25519PublicKey | None, str]:
    """The public key a chain's first entry (of kind ``start_kind``) names, or (None, why not)."""
    payload = entry.get("payload") if isinstance(entry.get("payload"), dict) else {}
    key_info = payload.get("key") if isinstance(payload.get("key"), dict) else {}
    if entry.get("kind") != start_kind:
        return None, f"the first entry is not a {start_kind} entry, so the ledger names no key; give --public-key"
    public_key = public_key_from_pem_text(key_info.get("public_key_pem"))
    if public_key is None:
        return None, f"the {start_kind} entry carries no readable public key; give --public-key"
    if key_info.get("key_id") != key_id(public_key):
        return None, f"the {start_kind} entry's key id does not belong to its public key"
    return public_key, ""


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


def verify_chain(data: bytes, public_key: Ed25519PublicKey | None, start_kind: str,
                 keep_entries: bool = True) -> ChainCheck:
    """Check a whole chain (the file's bytes); see :class:`ChainCheck`.

    With ``public_key`` every entry must be signed by it; without, the key is the one the
    chain's first entry (kind ``start_kind``) names — which shows self-consistency only.
    ``keep_entries=False`` leaves ``chain`` empty (a long log need not be held in memory).
    """
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines = lines[:-1]
    result = ChainCheck(ok=False, entries=len(lines), key_from_ledger=public_key is None)

    def bad(i: int, reason: str, entry: dict | None = None) -> ChainCheck:
        result.first_bad_index, result.reason = i, reason
        if isinstance(entry, dict) and isinstance(entry.get("kind"), str):
            result.bad_kind = entry["kind"]
        return result

    if not lines:
        return bad(0, f"the ledger is empty: it has no {start_kind} entry")
    expected = key_id(public_key) if public_key is not None else None
    prev = GENESIS
    for i, line in enumerate(lines):
        entry, problem = parse_entry_line(line)
        if not problem and torn and i == len(lines) - 1:
            problem = "is not terminated by a newline (an incomplete write, or the file was cut)"
        if torn and i == len(lines) - 1 and problem:
            result.torn_tail = True
        if problem:
            return bad(i, f"entry {i} {problem}", entry)
        if i == 0 and public_key is None:
            public_key, why = key_from_first_entry(entry, start_kind)
            if public_key is None:
                return bad(0, why, entry)
            expected = key_id(public_key)
        result.key_id = expected
        problem = check_entry(entry, i, prev, public_key, expected, line)
        if problem:
            return bad(i, problem, entry)
        if keep_entries:
            result.chain.append(entry)
        prev = entry["hash"]
        result.valid = i + 1
        result.head = prev
    result.ok = True
    return result


def iter_entries(path: str | Path):
    """The entries of a chain file, parsed, one at a time, without verifying them."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


# -------------------------------------------------------------------------- writing
class SignedChain:
    """An open chain file that entries are appended to, signed with ``signing_key``.

    The file is locked (``flock``) against a second writer. ``head`` / ``next_index`` continue
    the chain read at open. Subclasses name the file in their messages (:meth:`busy_message`,
    :meth:`broken_message`).
    """

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey, head: str = GENESIS, next_index: int = 0):
        self.path = Path(path)
        self._key = signing_key
        self.public_key = signing_key.public_key()
        self.key_id = key_id(self.public_key)
        self.head = head
        self.next_index = next_index
        self._fh = open(self.path, "ab")
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not on POSIX
            pass
        except OSError:
            self._fh.close()
            raise ChainError(self.busy_message()) from None

    #: how messages name the file, its signer's key, and what to do about a busy or broken one
    NAME = "ledger"
    SIGNER = "key"
    BUSY_HINT = ""

    def busy_message(self) -> str:
        return f"{self.path}: another process is writing this {self.NAME}{self.BUSY_HINT}"

    @classmethod
    def broken_hint(cls, path: Path, check: ChainCheck) -> str:
        """What to do with a chain that does not verify (ends :meth:`broken_message`)."""
        return "."

    @classmethod
    def broken_message(cls, path: Path, signer: str, check: ChainCheck) -> str:
        """Why the chain in ``path`` is not continued by the holder of key ``signer`` (a key id)."""
        return (f"{path}: the existing {cls.NAME} does not verify under {cls.SIGNER} {signer} — entry "
                f"{check.first_bad_index}{f' ({check.bad_kind})' if check.bad_kind else ''}: {check.reason}. "
                f"It is not continued{cls.broken_hint(path, check)}")

    @classmethod
    def existing_chain(cls, path: Path, public_key: Ed25519PublicKey, start_kind: str,
                       keep_entries: bool = True) -> ChainCheck | None:
        """The verified chain already in ``path`` (None when there is none yet)."""
        if not (path.exists() and path.stat().st_size > 0):
            return None
        return verify_chain(read_file_bytes(path, str(path), "no such file"), public_key, start_kind, keep_entries)

    def make_entry(self, kind: str, payload: dict) -> dict:
        """The next entry (hashed and signed) after the current head; nothing is written."""
        entry = {"index": self.next_index,
                 "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                 "kind": str(kind), "payload": plain(payload), "prev": self.head, "key_id": self.key_id}
        entry["hash"] = entry_hash(entry)
        entry["signature"] = self._key.sign(bytes.fromhex(entry["hash"])).hex()
        return entry

    def append(self, kind: str, payload: dict, sync: bool = True) -> dict:
        """Append one signed entry and return it; with ``sync`` it is flushed and fsynced (durable).

        With ``sync=False`` the entry is written but becomes durable only at the next
        :meth:`sync` — a writer that appends several entries that way and syncs once pays one
        fsync for all of them (group commit).
        """
        if self._fh.closed:
            raise ValueError("the ledger is closed")
        entry = self.make_entry(kind, payload)
        self._fh.write(canonical_json(entry) + b"\n")
        self.next_index += 1
        self.head = entry["hash"]
        if sync:
            self.sync()
        return entry

    def sync(self) -> None:
        """Flush and fsync: every entry appended so far is on disk."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
