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
  durable once the file is synced (:meth:`SignedChain.append` does it per entry, or a writer
  appends several with ``sync=False`` and calls :meth:`SignedChain.sync` once — group commit).

Whoever verifies with the writer's public key knows that every entry was written by the holder
of that key, in this order, and was not changed, removed, reordered or inserted since. It cannot
show that the writer did not rewrite the whole file and re-sign it: that needs someone else to
keep a head hash they were shown. The first entry of a chain (its *start kind*) carries the
writer's public key (``payload.key.public_key_pem`` and ``key_id``), so the file can be checked
for self-consistency without the key — weaker, and said so by whoever reports it.

The keys (Ed25519 PEM files, key ids) are :mod:`fedcredit.signing_keys`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcredit.json_values import loads_strict
from fedcredit.signing_keys import ChainError, key_id, public_key_from_pem_text, read_file_bytes

GENESIS = "0" * 64
HASHED_FIELDS = ("index", "time", "kind", "payload", "prev", "key_id")
ENTRY_FIELDS = HASHED_FIELDS + ("hash", "signature")
_datasync = getattr(os, "fdatasync", os.fsync)


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


def parse_entry_line(line: bytes) -> tuple[dict | None, str]:
    """One line as an entry: ``(entry, "")``, or ``(what could be read, what is wrong)``."""
    try:
        obj = loads_strict(line)
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


def verify_chain(data: bytes, public_key: Ed25519PublicKey | None, start_kind: str,
                 keep_entries: bool = True, visit: Callable[[dict, int], None] | None = None) -> ChainCheck:
    """Check a whole chain (the file's bytes); see :class:`ChainCheck`.

    With ``public_key`` every entry must be signed by it; without, the key is the one the
    chain's first entry (kind ``start_kind``) names — which shows self-consistency only.
    ``keep_entries=False`` leaves ``chain`` empty (a long log need not be held in memory);
    ``visit(entry, offset)`` is called for every valid entry with the byte offset of its line.
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
    offset = 0
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
        if visit is not None:
            visit(entry, offset)
        offset += len(line) + 1
        prev = entry["hash"]
        result.valid = i + 1
        result.head = prev
    result.ok = True
    return result


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
        self.size = os.fstat(self._fh.fileno()).st_size  # bytes in the file, written or buffered
        self.last_offset: int | None = None  # where the last appended entry's line starts

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
        line = canonical_json(entry) + b"\n"
        self._fh.write(line)
        self.last_offset = self.size
        self.size += len(line)
        self.next_index += 1
        self.head = entry["hash"]
        if sync:
            self.sync()
        return entry

    def cut_torn_tail(self, check: ChainCheck) -> bytes:
        """Cut an interrupted last write off the file and return the bytes cut.

        Only for a chain whose one fault is its last line lacking the newline
        (``check.torn_tail``): a writer killed in the middle of a write. Such a line was never
        synced as a whole, so no reader was told of it; the chain continues from ``check.head``.
        """
        if not check.torn_tail or self.next_index != check.valid:
            raise ValueError("only a torn last line of the chain this writer continues can be cut")
        self._fh.flush()
        with open(self.path, "rb") as fh:
            data = fh.read()
        keep = data.rfind(b"\n") + 1
        os.ftruncate(self._fh.fileno(), keep)
        os.fsync(self._fh.fileno())
        self.size = keep
        return data[keep:]

    def sync(self) -> None:
        """Flush and sync: every entry appended so far is on disk.

        ``fdatasync`` where the OS has it: it writes the data and the metadata needed to read it
        back (the file's new size) — all an append needs — without the inode's times, which made
        ``fsync`` ~10× slower at the 90th percentile on the ext4 disk measured here.
        """
        self.flush()
        self.datasync()

    def flush(self) -> None:
        """Hand what was appended to the operating system (a write; not yet durable)."""
        self._fh.flush()

    def datasync(self) -> None:
        """Make what was flushed durable (``fdatasync``); may run in another thread than the writer."""
        _datasync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
