"""The decision trail: every credit decision the service makes, in a signed hash chain in DIR.

``DIR/decisions.jsonl`` is a chain in the format of :mod:`fedcredit.signed_chain` (canonical
JSON lines, each entry's sha256 over index, time, kind, payload, previous hash and key id,
signed with the institution's Ed25519 key). Entry kinds:

``log-start``      the first entry: the signing key (``key``: key id, public key PEM, where the
                   private key is kept)
``service-start``  each start of the service: the model package (directory, ``package_sha256`` —
                   sha256 of its ``model.json``, which holds the sha256 of every other file —
                   ``weights_sha256``, run id), the mapping (path, sha256), cut-off PD, number of
                   reasons, whether applications are stored in full or as a hash
``decision``       one decided application: ``decision_id``, ``model`` (package and weights
                   sha256), ``mapping_sha256``, ``cutoff_pd``, ``explain``, the ``application``
                   as received (or only its ``application_sha256``: sha256 of its canonical
                   JSON), ``outputs`` (``pd``, ``score``, ``decision``), ``reasons``, ``warnings``
``override``       a person's change (or confirmation) of a decision, after it on the chain:
                   ``decision_id``, ``decision_hash`` (the decision entry's hash), ``from``, ``to``,
                   ``changes_outcome``, ``reason``, ``by``
``recovered``      written at a start after a crash cut a write short: the torn bytes' length
                   and sha256, and where they were saved
``service-stop``   an orderly stop: decisions made since the start (a killed service writes none)

Durability: the service appends a group of entries and fsyncs once (group commit) before it
answers any of them, so an answered decision is on disk. A process killed in the middle of a
write can leave a torn last line; it was never answered, and the next start cuts it off (saved
to ``DIR/torn-tail-*.bin``) and records a ``recovered`` entry. Entries written but not yet
answered when the process died stay on the chain: the trail may hold a decision the applicant
never received, never lack one that was answered.

The key: ``--signing-key FILE`` (Ed25519 PEM, e.g. from ``fedcredit ledger keygen``) kept
outside DIR is the real protection; without it a key is generated into ``DIR/decisions-key.pem``
at the first start, and then anyone who can write DIR could rewrite and re-sign the whole trail —
publish or store the head hash elsewhere (``GET /healthz`` shows it) to make that detectable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from configs.errors import UserError
from fedcredit.atomic_write import fsync_directory, write_atomic
from fedcredit.signed_chain import ChainCheck, SignedChain, canonical_json, entry_hash, verify_chain
from fedcredit.signing_keys import ChainError, generate_key_pair, key_record, load_private_key, read_file_bytes

LOG_FILE = "decisions.jsonl"
KEY_NAME = "decisions-key"
START_KIND = "log-start"
KINDS = ("log-start", "service-start", "decision", "override", "recovered", "service-stop")
#: environment variable with the passphrase of an encrypted decision-log key
PASSPHRASE_ENV = "FEDCREDIT_DECISIONS_KEY_PASSPHRASE"


def application_sha256(application: dict) -> str:
    """sha256 (hex) of an application's canonical JSON (sorted keys, no spaces, UTF-8)."""
    return hashlib.sha256(canonical_json(application)).hexdigest()


def log_path(directory: str | Path) -> Path:
    """The chain file of a decisions directory (a path to the file itself is accepted too)."""
    p = Path(directory)
    return p if p.name == LOG_FILE or p.is_file() else p / LOG_FILE


# --------------------------------------------------------------------------- the index
@dataclass
class DecisionRef:
    """Where a decision is on the chain and what became of it (its overrides, in order)."""

    index: int
    hash: str
    offset: int
    decision: str  # the model's outcome
    service_start: int | None  # index of the service-start entry it was made under
    overrides: list[dict] = field(default_factory=list)  # {"index", "hash", "offset", "to"}

    @property
    def outcome(self) -> str:
        """The decision as it stands: the last override's, else the model's."""
        return self.overrides[-1]["to"] if self.overrides else self.decision


@dataclass
class DecisionIndex:
    """Decision id → :class:`DecisionRef`, built while a chain is read or written; counts per kind."""

    decisions: dict[str, DecisionRef] = field(default_factory=dict)
    service_starts: dict[int, dict] = field(default_factory=dict)  # index → payload
    counts: dict[str, int] = field(default_factory=dict)
    last_service_start: int | None = None
    hashes: set[str] | None = None  # with a set: every entry's hash (a head kept elsewhere must be one)

    def add(self, entry: dict, offset: int) -> None:
        kind, payload = entry["kind"], entry["payload"]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.hashes is not None:
            self.hashes.add(entry["hash"])
        if kind == "service-start":
            self.service_starts[entry["index"]] = payload
            self.last_service_start = entry["index"]
        elif kind == "decision":
            self.decisions[str(payload.get("decision_id"))] = DecisionRef(
                entry["index"], entry["hash"], offset, str(payload.get("outputs", {}).get("decision")),
                self.last_service_start)
        elif kind == "override":
            ref = self.decisions.get(str(payload.get("decision_id")))
            if ref is not None:
                ref.overrides.append({"index": entry["index"], "hash": entry["hash"], "offset": offset,
                                      "to": payload.get("to")})


# ------------------------------------------------------------------------------ the log
class DecisionLog(SignedChain):
    """An institution's open decision trail (``DIR/decisions.jsonl``), indexed by decision id."""

    NAME = "decision log"
    SIGNER = "the decision-log key"
    BUSY_HINT = (" (is the service running? While it runs, record overrides through its "
                 "POST /v1/decisions/ID/override)")

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey):
        super().__init__(path, signing_key)
        self.index = DecisionIndex()
        self.torn: dict | None = None  # what a crash cut short, found at open (recorded as a recovered entry)

    @classmethod
    def broken_hint(cls, path: Path, check: ChainCheck) -> str:
        return (f"; inspect it with 'fedcredit decisions verify {path.parent}'. Keep the damaged directory as "
                "evidence and start the service with a new --decisions directory.")

    @classmethod
    def open(cls, directory: str | Path, signing_key_path: str | Path | None = None) -> "DecisionLog":
        """Open (or start) the trail in ``directory`` for appending.

        An existing chain is verified first under the key; a torn last line (a crash in the
        middle of a write) is cut off and recorded; any other fault refuses to continue
        (:class:`ChainError`).
        """
        d = Path(directory).expanduser()
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--decisions {d}: cannot create the directory ({exc.strerror})") from None
        path = d / LOG_FILE
        exists = path.is_file() and path.stat().st_size > 0
        key, key_info = _signing_key(d, signing_key_path, exists)
        log = cls(path, key)  # takes the lock before anything is read or cut
        try:
            if exists:
                log._continue_chain(d)
            if log.next_index == 0:  # a new trail (or one whose first write was cut short)
                log.append(START_KIND, {"key": dict(key_record(key.public_key()), **key_info)})
                fsync_directory(d)
            if log.torn is not None:
                log.append("recovered", log.torn)
        except BaseException:
            log.close()
            raise
        return log

    def _continue_chain(self, directory: Path) -> None:
        data = read_file_bytes(self.path, str(self.path), "no such file")
        check = verify_chain(data, self.public_key, START_KIND, keep_entries=False, visit=self.index.add)
        self.head, self.next_index = check.head, check.valid
        if check.ok:
            return
        if not check.torn_tail:
            raise ChainError(self.broken_message(self.path, self.key_id, check))
        torn = data[data.rfind(b"\n") + 1:]
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        saved = write_atomic(directory / f"torn-tail-{check.valid}-{stamp}.bin", torn)  # kept before it is cut
        self.cut_torn_tail(check)
        self.torn = {"torn_bytes": len(torn), "torn_sha256": hashlib.sha256(torn).hexdigest(),
                     "saved_as": saved.name, "reason": check.reason}

    def append(self, kind: str, payload: dict, sync: bool = True) -> dict:
        """Append one entry (see :meth:`SignedChain.append`) and index it."""
        entry = super().append(kind, payload, sync)
        self.index.add(entry, self.last_offset)
        return entry

    def read_entry(self, offset: int, expected_hash: str) -> dict:
        """The entry whose line starts at byte ``offset``, checked against the hash it was written with."""
        entry = entry_at(self.path, offset)
        if entry.get("hash") != expected_hash or entry_hash(entry) != expected_hash:
            raise ChainError(f"{self.path}: the entry at byte {offset} changed on disk since it was written; "
                             f"run 'fedcredit decisions verify {self.path.parent}'")
        return entry


def _signing_key(directory: Path, given: str | Path | None, exists: bool) -> tuple[Ed25519PrivateKey, dict]:
    """The key that signs the trail and where it is kept (generated into DIR for a new trail without one)."""
    own = directory / f"{KEY_NAME}.pem"
    if given:
        return (load_private_key(given, "decision-log key", PASSPHRASE_ENV),
                {"source": "given", "private_key_file": str(Path(given).expanduser().resolve())})
    if not own.is_file():
        if exists:
            raise ChainError(f"{directory / LOG_FILE}: this decision log's private key is not in {directory}; give it "
                             "with --signing-key to continue the log")
        generate_key_pair(directory, KEY_NAME)
    return (load_private_key(own, "decision-log key", PASSPHRASE_ENV),
            {"source": "kept-in-decisions-dir", "private_key_file": str(own.resolve()),
             "note": "no --signing-key was given, so the key was generated beside the log: anyone who can write "
                     "there can rewrite and re-sign the whole trail; keep the head hash elsewhere"})


# ------------------------------------------------------------------------- reading
@dataclass
class TrailCheck:
    """A verified (or not) decision trail, with its index: what ``decisions verify`` / ``show`` read."""

    path: Path
    check: ChainCheck
    index: DecisionIndex

    def to_json(self) -> dict:
        c = self.check
        return {"ok": c.ok, "log": str(self.path), "entries": c.entries, "valid": c.valid,
                "first_bad_index": c.first_bad_index, "bad_kind": c.bad_kind, "reason": c.reason,
                "torn_tail": c.torn_tail, "head": c.head, "key_id": c.key_id,
                "key_source": "log" if c.key_from_ledger else "given",
                "decisions": len(self.index.decisions), "counts": dict(self.index.counts)}


def read_trail(directory: str | Path, public_key: Ed25519PublicKey | None = None,
               with_hashes: bool = False) -> TrailCheck:
    """Verify the whole trail in ``directory`` and index its decisions (up to the first bad entry);
    ``with_hashes`` also collects every entry's hash."""
    path = log_path(directory)
    data = read_file_bytes(path, str(path), f"no decision log there (the service writes DIR/{LOG_FILE})")
    if not data.strip():
        raise UserError(f"{path}: the file is empty — not a decision trail yet (the service's first entry is a "
                        "signed log-start entry); give the --decisions directory of a service that has started")
    index = DecisionIndex(hashes=set() if with_hashes else None)
    check = verify_chain(data, public_key, START_KIND, keep_entries=False, visit=index.add)
    return TrailCheck(path, check, index)


def entry_at(path: Path, offset: int) -> dict:
    """The entry whose line starts at byte ``offset`` of a trail already verified by :func:`read_trail`."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return json.loads(fh.readline())


def find_decision(trail: TrailCheck, decision_id: str) -> tuple[dict, list[dict], dict | None]:
    """The decision entry, its override entries and the service-start payload it was made under."""
    ref = trail.index.decisions.get(decision_id)
    if ref is None:
        raise UserError(f"{trail.path}: no decision {decision_id!r} in the {trail.check.valid} verified entries "
                        "(check the id; 'fedcredit decisions verify' shows whether the log is intact)")
    decision = entry_at(trail.path, ref.offset)
    overrides = [entry_at(trail.path, o["offset"]) for o in ref.overrides]
    start = trail.index.service_starts.get(ref.service_start) if ref.service_start is not None else None
    return decision, overrides, start
