"""The run's audit ledger: an append-only hash chain of entries signed by the operator.

``RUN_DIR/ledger.jsonl`` holds one JSON object per line, one per event of the run (run start,
the statistics round, every training round, refusals, dropouts, rejected updates, rejected
statistics or evaluation replies, a resume, a stop, run end)::

    {"index": 7, "time": "2026-11-29T03:02:31.233+00:00", "kind": "round",
     "payload": {...}, "prev": "<hash of entry 6>", "key_id": "1a2b3c4d5e6f7a8b",
     "hash": "<sha256 hex>", "signature": "<Ed25519 signature hex>"}

* ``hash`` = sha256 over the canonical JSON (sorted keys, no spaces, UTF-8, no NaN) of the
  entry *without* ``hash`` and ``signature`` — so it covers index, time, kind, payload, the
  previous entry's hash and the key id;
* ``prev`` of entry 0 is 64 zeros (genesis); of entry *i* the ``hash`` of entry *i − 1*;
* ``signature`` = Ed25519 signature, by the operator's private key, of the 32 raw bytes of
  ``hash``; ``key_id`` = the first 16 hex digits of sha256 over the raw 32-byte public key.
* Every line is written in exactly that canonical form, followed by ``\\n``, flushed and
  fsynced before the run goes on.

What this proves, and what not: whoever verifies with the operator's published public key
knows that every entry was written by the holder of the operator's key, in this order, and
was not changed, removed, reordered or inserted since. It cannot show that the operator did
not rewrite the whole file and re-sign it — that is what the nodes' stored heads are for: each
node keeps the head hash it was shown each round (:mod:`clients.ledger_heads`), and a rewritten
or truncated history no longer contains it. It is a signed hash chain, not a blockchain.

See ``docs/ledger.md`` for the operator's view and ``fedcredit ledger verify --help``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from configs.errors import UserError

LEDGER_FILE = "ledger.jsonl"
KEY_FILE = "ledger-key.pem"
PUBLIC_KEY_FILE = "ledger-key.pub.pem"
GENESIS = "0" * 64
HASHED_FIELDS = ("index", "time", "kind", "payload", "prev", "key_id")
ENTRY_FIELDS = HASHED_FIELDS + ("hash", "signature")
#: environment variable with the passphrase of an encrypted operator key (PEM)
PASSPHRASE_ENV = "FEDCREDIT_LEDGER_KEY_PASSPHRASE"

KINDS = ("run-start", "statistics", "round", "refusal", "dropout", "rejected-update", "rejected-reply",
         "resume", "run-stopped", "run-end")


class LedgerError(UserError):
    """A ledger that cannot be continued (broken chain, wrong key) or a key that cannot be used."""


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


def generate_operator_key(directory: str | Path, name: str = "ledger-key") -> tuple[Path, Path]:
    """Create an Ed25519 key pair: ``DIR/<name>.pem`` (private, mode 0600) and ``DIR/<name>.pub.pem``.

    Existing files are never overwritten (:class:`LedgerError`).
    """
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    private_path, public_path = d / f"{name}.pem", d / f"{name}.pub.pem"
    for p in (private_path, public_path):
        if p.exists():
            raise LedgerError(f"{p}: already exists; a key is never overwritten (choose another directory "
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
    if not p.is_file():
        raise LedgerError(f"{what} {p}: not found (create an operator key pair with "
                          "'fedcredit ledger keygen --out DIR')")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise LedgerError(f"{what} {p}: cannot be read ({exc.strerror})") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The operator's Ed25519 private key from a PEM file (passphrase from $FEDCREDIT_LEDGER_KEY_PASSPHRASE)."""
    data = _read_key_file(path, "ledger key")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError:
        raise LedgerError(f"ledger key {path}: the key is encrypted; put its passphrase in "
                          f"${PASSPHRASE_ENV}") from None
    except ValueError as exc:
        raise LedgerError(f"ledger key {path}: not a readable PEM private key ({exc}); give the operator's "
                          "Ed25519 private key, e.g. from 'fedcredit ledger keygen'") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError(f"ledger key {path}: a {type(key).__name__.lstrip('_')}, not an Ed25519 key; "
                          "the ledger is signed with Ed25519 ('fedcredit ledger keygen' makes one)")
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
            raise LedgerError(f"public key {path}: not a readable PEM public key; give the operator's "
                              "Ed25519 public key (e.g. ledger-key.pub.pem)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LedgerError(f"public key {path}: a {type(key).__name__.lstrip('_')}, not an Ed25519 key")
    return key


def _public_key_from_pem_text(text: Any) -> Ed25519PublicKey | None:
    if not isinstance(text, str):
        return None
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    return key if isinstance(key, Ed25519PublicKey) else None


# ------------------------------------------------------------------------ verifying
@dataclass
class VerificationResult:
    """The outcome of :func:`verify_ledger`.

    ``ok`` is True only when every entry verifies *and* every given head is on the chain.
    ``entries`` is the number of entries (lines) in the file; ``valid`` how many of them, from
    the start, verify; ``first_bad_index`` the position of the first one that does not (None when
    the chain is intact); ``bad_kind`` its ``kind`` as far as it could be read; ``reason`` what is
    wrong. ``head`` is the hash of the last valid entry (GENESIS for none).
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
    run_ids: list[str] = field(default_factory=list)
    heads: list[dict] = field(default_factory=list)  # {"head", "found", "index", + caller's labels}
    chain: list[dict] = field(default_factory=list, repr=False)  # the valid entries, parsed

    def to_json(self) -> dict:
        return {"ok": self.ok, "entries": self.entries, "valid": self.valid,
                "first_bad_index": self.first_bad_index, "bad_kind": self.bad_kind, "reason": self.reason,
                "head": self.head, "key_id": self.key_id,
                "key_source": "ledger" if self.key_from_ledger else "given",
                "run_ids": self.run_ids, "heads": self.heads}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key '{k}'")
        out[k] = v
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_line(line: bytes) -> tuple[dict | None, str]:
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


def _check_entry(entry: dict, position: int, prev: str, public_key: Ed25519PublicKey, expected_key_id: str,
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


def _key_from_first_entry(entry: dict) -> tuple[Ed25519PublicKey | None, str]:
    payload = entry.get("payload") if isinstance(entry.get("payload"), dict) else {}
    key_info = payload.get("key") if isinstance(payload.get("key"), dict) else {}
    if entry.get("kind") != "run-start":
        return None, "the first entry is not a run-start entry, so the ledger names no key; give --public-key"
    public_key = _public_key_from_pem_text(key_info.get("public_key_pem"))
    if public_key is None:
        return None, "the run-start entry carries no readable public key; give --public-key"
    if key_info.get("key_id") != key_id(public_key):
        return None, "the run-start entry's key id does not belong to its public key"
    return public_key, ""


def _as_head_items(head: Any) -> list[dict]:
    if head is None:
        return []
    items = [head] if isinstance(head, (str, dict)) else list(head)
    return [dict(h) if isinstance(h, dict) else {"head": h} for h in items]


def verify_ledger(path: str | Path, public_key: Ed25519PublicKey | None = None,
                  head: str | Iterable[str | dict] | None = None) -> VerificationResult:
    """Check the whole ledger at ``path``; see :class:`VerificationResult`.

    With ``public_key`` every entry must be signed by it; without, the key is the one the
    ledger's own run-start entry names (which shows self-consistency only: a forger re-signs
    with a key of their own). ``head``: one hash or several (or dicts with a ``head`` key and
    labels such as ``round``/``run_id``) that nodes stored — each must be the hash of an entry.
    A missing file raises :class:`LedgerError`.
    """
    p = Path(path)
    if not p.is_file():
        raise LedgerError(f"{p}: no ledger file there (a run writes RUN_DIR/{LEDGER_FILE})")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise LedgerError(f"{p}: cannot be read ({exc.strerror})") from None
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines = lines[:-1]
    result = VerificationResult(ok=False, entries=len(lines), key_from_ledger=public_key is None)
    heads = _as_head_items(head)

    def bad(i: int, reason: str, entry: dict | None = None) -> VerificationResult:
        result.first_bad_index, result.reason = i, reason
        if isinstance(entry, dict) and isinstance(entry.get("kind"), str):
            result.bad_kind = entry["kind"]
        result.heads = [dict(h, found=False, index=None) for h in heads]
        return result

    if not lines:
        return bad(0, "the ledger is empty: it has no run-start entry")
    expected = key_id(public_key) if public_key is not None else None
    prev = GENESIS
    for i, line in enumerate(lines):
        entry, problem = _parse_line(line)
        if not problem and torn and i == len(lines) - 1:
            problem = "is not terminated by a newline (an incomplete write, or the file was cut)"
        if problem:
            return bad(i, f"entry {i} {problem}", entry)
        if i == 0 and public_key is None:
            public_key, why = _key_from_first_entry(entry)
            if public_key is None:
                return bad(0, why, entry)
            expected = key_id(public_key)
        result.key_id = expected
        problem = _check_entry(entry, i, prev, public_key, expected, line)
        if problem:
            return bad(i, problem, entry)
        if entry["kind"] in ("run-start", "resume") and entry["payload"].get("run_id") is not None:
            rid = str(entry["payload"]["run_id"])
            if rid not in result.run_ids:
                result.run_ids.append(rid)
        result.chain.append(entry)
        prev = entry["hash"]
        result.valid = i + 1
        result.head = prev
    index_of = {e["hash"]: e["index"] for e in result.chain}
    missing = []
    for h in heads:
        idx = index_of.get(h.get("head"))
        result.heads.append(dict(h, found=idx is not None, index=idx))
        if idx is None:
            missing.append(h)
    if missing:
        h = missing[0]
        where = ", ".join(f"{k} {h[k]}" for k in ("source", "run_id", "round") if h.get(k) not in (None, ""))
        result.reason = (f"node head {str(h.get('head'))[:16]}…{f' ({where})' if where else ''} is not on the "
                         f"chain{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: the ledger was "
                         "truncated or rewritten after that head was shown to the node")
        return result
    result.ok = True
    return result


def read_ledger(path: str | Path) -> list[dict]:
    """All entries of a ledger file, parsed, without verifying them."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# -------------------------------------------------------------------------- writing
class AuditLedger:
    """An open ledger file that entries are appended to, signed with the operator's key."""

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey, entries: list[dict]):
        self.path = path
        self._key = signing_key
        self.public_key = signing_key.public_key()
        self.key_id = key_id(self.public_key)
        self.entries = entries  # every entry so far (those read at open and those appended)
        self.head = entries[-1]["hash"] if entries else GENESIS
        self._fh = open(self.path, "ab")
        try:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not on POSIX
            pass
        except OSError:
            self._fh.close()
            raise LedgerError(f"{self.path}: another process is writing this ledger (is the run still going?)") \
                from None

    @classmethod
    def open(cls, path: str | Path, signing_key: Ed25519PrivateKey) -> "AuditLedger":
        """Open ``path`` for appending; an existing ledger is verified under ``signing_key`` first.

        Raises :class:`LedgerError` when the existing ledger does not verify (it is never
        continued then) or was signed by another key.
        """
        p = Path(path)
        entries: list[dict] = []
        if p.exists() and p.stat().st_size > 0:
            res = verify_ledger(p, signing_key.public_key())
            if not res.ok:
                raise LedgerError(
                    f"{p}: the existing audit ledger does not verify under the run's key "
                    f"{key_id(signing_key.public_key())} — entry {res.first_bad_index}"
                    f"{f' ({res.bad_kind})' if res.bad_kind else ''}: {res.reason}. It is not continued; "
                    f"inspect it with 'fedcredit ledger verify {p}'."
                    + (" A run that continues a ledger must use the key that started it (run config "
                       "'ledger-key')." if "key" in res.reason else "")
                    + " To start afresh use a new run-dir.")
            entries = res.chain
        p.parent.mkdir(parents=True, exist_ok=True)
        return cls(p, signing_key, entries)

    @property
    def next_index(self) -> int:
        return len(self.entries)

    def append(self, kind: str, payload: dict) -> str:
        """Append one signed entry (flushed and fsynced); returns the new head hash."""
        if self._fh.closed:
            raise ValueError("the ledger is closed")
        entry = {"index": self.next_index,
                 "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                 "kind": str(kind), "payload": plain(payload), "prev": self.head, "key_id": self.key_id}
        entry["hash"] = entry_hash(entry)
        entry["signature"] = self._key.sign(bytes.fromhex(entry["hash"])).hex()
        self._fh.write(canonical_json(entry) + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.entries.append(entry)
        self.head = entry["hash"]
        return self.head

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "AuditLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------- one run's ledger
def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunLedger:
    """What one consortium run writes to its ledger, and when (driven by :mod:`server.consortium`).

    Entries: ``run-start`` (run id, sha256 and values of the resolved config, the key and where
    it came from, what is resumed), ``statistics``, ``resume`` (checkpoint round and model hash;
    rounds of the checkpoint missing from the ledger are added as ``round`` entries marked
    ``recovered_from_checkpoint``), one ``round`` per completed training round, ``refusal`` /
    ``dropout`` / ``rejected-update`` / ``rejected-reply`` as they happen (:meth:`on_event`, a
    RunRecorder listener; a refusal to evaluate and a rejected statistics or evaluation reply
    carry ``stage``),
    ``run-stopped`` and ``run-end`` (final model hashes; its hash goes to metrics.json).
    """

    def __init__(self, ledger: AuditLedger, key_info: dict, reference_entries: list[dict],
                 resumed_ledger: dict | None):
        self.ledger = ledger
        self.key_info = key_info
        self._reference = reference_entries  # entries whose rounds a resumed checkpoint must match
        self._resumed_ledger = resumed_ledger

    @property
    def head(self) -> str:
        return self.ledger.head

    @property
    def path(self) -> Path:
        return self.ledger.path

    @classmethod
    def open(cls, run_dir: Path, key_path: str = "", resume_from: Path | None = None) -> "RunLedger":
        """Open (or continue) ``RUN_DIR/ledger.jsonl``; raises :class:`LedgerError` before writing anything
        when an existing ledger (here or in ``resume_from``) does not verify."""
        run_dir = Path(run_dir)
        path = run_dir / LEDGER_FILE
        exists = path.is_file() and path.stat().st_size > 0
        own_key = run_dir / KEY_FILE
        if key_path:
            key = load_private_key(key_path)
            info = {"source": "operator", "private_key_file": str(Path(key_path).expanduser().resolve())}
        elif own_key.is_file():
            key = load_private_key(own_key)
            info = {"source": "generated-for-run", "private_key_file": str(own_key)}
        elif exists:
            first = read_ledger(path)[:1]
            kid = first[0].get("key_id") if first else "?"
            raise LedgerError(f"{path}: this ledger was signed by key {kid}, whose private key is not in "
                              f"{run_dir}; give it as run config 'ledger-key' to continue the ledger")
        else:
            key = None
            info = {"source": "generated-for-run", "private_key_file": str(own_key)}
        resumed_ledger, reference = None, []
        if resume_from is not None and Path(resume_from).resolve() != run_dir.resolve():
            src = Path(resume_from) / LEDGER_FILE
            if src.is_file():
                res = verify_ledger(src)
                if not res.ok:
                    raise LedgerError(f"{src}: the ledger of the run being resumed does not verify — entry "
                                      f"{res.first_bad_index}: {res.reason}. The run is not resumed; inspect it "
                                      f"with 'fedcredit ledger verify {src}'.")
                resumed_ledger = {"path": str(src.resolve()), "head": res.head, "key_id": res.key_id,
                                  "entries": res.entries}
                reference = res.chain
        if key is None:  # nothing to verify against: generate the run's own key now
            generate_operator_key(run_dir, "ledger-key")
            key = load_private_key(own_key)
        ledger = AuditLedger.open(path, key)  # verifies an existing ledger first
        info.update({"key_id": ledger.key_id, "public_key_pem": public_key_pem(ledger.public_key)})
        if info["source"] == "generated-for-run":
            info["public_key_file"] = str(run_dir / PUBLIC_KEY_FILE)
            info["note"] = ("no operator key was configured (run config 'ledger-key'), so a key was generated "
                            "for this run and kept in the run directory; anyone who can write there can re-sign "
                            "the ledger, so only the nodes' stored heads make rewriting detectable")
        return cls(ledger, info, reference or list(ledger.entries), resumed_ledger)

    def close(self) -> None:
        self.ledger.close()

    # ------------------------------------------------------------------ entries
    def run_start(self, run_id: str, config_path: Path, settings: dict, resume_from: Path | None = None) -> str:
        payload = {"run_id": str(run_id), "config_file": str(config_path),
                   "config_sha256": _sha256_file(Path(config_path)), "config": settings,
                   "key": self.key_info, "continues_ledger": self.ledger.next_index > 0,
                   "resume_from": str(resume_from) if resume_from else None}
        if self._resumed_ledger:
            payload["resumed_ledger"] = self._resumed_ledger
        return self.ledger.append("run-start", payload)

    def statistics(self, statistics: dict) -> str:
        spent = {who: m.get("epsilon-spent") for who, m in (statistics.get("node_metrics") or {}).items()}
        return self.ledger.append("statistics", {
            "contributors": statistics.get("contributors", []), "refused": statistics.get("refused", {}),
            "dropped": statistics.get("dropped", {}), "rejected": statistics.get("rejected", {}),
            "epsilon_spent": spent,
            "node_metrics": statistics.get("node_metrics", {})})

    def resumed(self, checkpoint_round: int, model_sha256: str, history: list[dict], checkpoint: str = "",
                run_id: str = "") -> str:
        """Record a resume; rounds of the checkpoint the ledger lacks are added from its history.

        A checkpoint whose rounds disagree with what the ledger recorded for them (another model
        hash) is refused with :class:`LedgerError`.
        """
        recorded: dict[int, str] = {}
        for e in self._reference:
            if e.get("kind") == "round" and isinstance(e["payload"].get("round"), int):
                recorded[e["payload"]["round"]] = e["payload"].get("model_sha256_after")
        missing = []
        for record in history:
            rnd = record.get("round")
            if "model_sha256_after" not in record or not isinstance(rnd, int) or rnd > checkpoint_round:
                continue
            if rnd in recorded and recorded[rnd] != record["model_sha256_after"]:
                raise LedgerError(f"checkpoint {checkpoint}: round {rnd} produced model "
                                  f"{record['model_sha256_after'][:16]}… by the checkpoint, but the ledger "
                                  f"recorded {str(recorded[rnd])[:16]}… for it; the checkpoint is not the one the "
                                  "ledger recorded, so the run is not resumed")
            if rnd not in recorded:
                missing.append(record)
        for record in missing:
            self.round(record, recovered=True)
        return self.ledger.append("resume", {
            "run_id": str(run_id), "checkpoint": checkpoint, "checkpoint_round": checkpoint_round,
            "model_sha256": model_sha256, "next_round": checkpoint_round + 1,
            "recovered_rounds": [r["round"] for r in missing],
            "superseded_rounds": sorted(r for r in recorded if r > checkpoint_round)})

    def round(self, record: dict, recovered: bool = False) -> str:
        privacy = record.get("privacy") or {}
        institutions = {who: {k: v for k, v in m.items() if not k.startswith("_")}
                        for who, m in (record.get("institutions") or {}).items()}
        payload = {k: record.get(k) for k in (
            "round", "sampled", "participants", "refused", "dropped", "rejected", "model_sha256_before",
            "model_sha256_after", "aggregate_update_norm", "examples", "train_loss")}
        payload.update({
            "epsilon_spent": {who: p.get("epsilon_spent") for who, p in privacy.items()},
            "privacy": privacy,
            "metrics": {"global": record.get("global"), "institutions": institutions,
                        "fairness": record.get("fairness")},
            "evaluation_failed": record.get("evaluation_failed", {}),
            "evaluation_refused": record.get("evaluation_refused", {}),
            "evaluation_rejected": record.get("evaluation_rejected", {}),
        })
        for key in ("aggregation", "clipped"):  # the robust rule's choices; updates clipped by the server
            if record.get(key) is not None:
                payload[key] = record[key]
        if record.get("secure_aggregation") is not None:  # SecAgg+: the server saw only the sum
            payload["secure_aggregation"] = record["secure_aggregation"]
        if recovered:
            payload["recovered_from_checkpoint"] = True
        return self.ledger.append("round", payload)

    def on_event(self, event: dict) -> None:
        """RunRecorder listener: refusals, dropouts, rejected updates and replies and a stop become entries."""
        kind = event.get("event")
        if kind in ("refusal", "dropout", "rejected-update", "rejected-reply", "run-stopped"):
            self.ledger.append(kind, {k: v for k, v in event.items() if k not in ("event", "time")})

    def run_end(self, status: str, reason: str, rounds_completed: int, model_sha256: str | None,
                model_dir: Path | None = None, final_metrics: dict | None = None,
                last_round_model_sha256: str | None = None, calibration: dict | None = None) -> str:
        """``model_sha256`` is the exported model; when it was derived from the last round's global
        model (recalibration), ``last_round_model_sha256`` and ``calibration`` say from what and how."""
        payload: dict[str, Any] = {"status": status, "reason": reason, "rounds_completed": rounds_completed,
                                   "model_sha256": model_sha256, "final_metrics": final_metrics,
                                   "last_round_model_sha256": last_round_model_sha256 or model_sha256}
        if calibration is not None:
            payload["calibration"] = calibration
        meta = Path(model_dir) / "model.json" if model_dir else None
        if meta is not None and meta.is_file():
            m = json.loads(meta.read_text())
            payload["model_package"] = {"dir": str(model_dir), "model_json_sha256": _sha256_file(meta),
                                        "weights_sha256": m.get("weights_sha256"),
                                        "files_sha256": m.get("files_sha256")}
        return self.ledger.append("run-end", payload)
