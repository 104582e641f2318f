"""The run's audit ledger: an append-only hash chain of entries signed by the operator.

``RUN_DIR/ledger.jsonl`` holds one entry per event of the run (run start, the statistics round,
every training round, refusals, dropouts, rejected updates, rejected statistics or evaluation
replies, a resume, a stop, run end): a signed hash chain in the format of
:mod:`fedcredit.signed_chain` (canonical JSON lines; each entry's sha256 covers its index, time,
kind, payload, the previous entry's hash and the key id, and is signed with the operator's
Ed25519 key). Every entry is flushed and fsynced before the run goes on.

What this proves, and what not: whoever verifies with the operator's published public key
knows that every entry was written by the holder of the operator's key, in this order, and
was not changed, removed, reordered or inserted since. It cannot show that the operator did
not rewrite the whole file and re-sign it — that is what the nodes' stored heads are for: each
node keeps the head hash it was shown each round (:mod:`clients.ledger_heads`), and a rewritten
or truncated history no longer contains it. It is a signed hash chain, not a blockchain.

The chain itself — canonical encoding, hashing, signing, keys, verification, appending — lives
in :mod:`fedcredit.signed_chain`, shared with the institutions' decision trail; this module adds
what is particular to a run: the file names, the entry kinds, the run ids and nodes' heads, and
:class:`RunLedger`.

See ``docs/ledger.md`` for the operator's view and ``fedcredit ledger verify --help``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcredit.signed_chain import (ENTRY_FIELDS, GENESIS, HASHED_FIELDS, ChainCheck, SignedChain, canonical_json,
                                    entry_hash, is_hash, plain, verify_chain)
from fedcredit.signing_keys import (PASSPHRASE_ENV, ChainError, generate_key_pair, key_id, load_public_key,
                                    public_key_pem, raw_public_key, read_file_bytes)
from fedcredit.signing_keys import load_private_key as _load_private_key

__all__ = ["LEDGER_FILE", "KEY_FILE", "PUBLIC_KEY_FILE", "GENESIS", "HASHED_FIELDS", "ENTRY_FIELDS",
           "PASSPHRASE_ENV", "KINDS", "LedgerError", "plain", "canonical_json", "entry_hash", "is_hash",
           "raw_public_key", "key_id", "public_key_pem", "generate_operator_key", "load_private_key",
           "load_public_key", "VerificationResult", "verify_ledger", "read_ledger", "AuditLedger", "RunLedger"]

LEDGER_FILE = "ledger.jsonl"
KEY_FILE = "ledger-key.pem"
PUBLIC_KEY_FILE = "ledger-key.pub.pem"
#: the kind of a run ledger's first entry, which names the operator's key
START_KIND = "run-start"

KINDS = ("run-start", "statistics", "round", "evaluation", "refusal", "dropout", "rejected-update",
         "rejected-reply", "resume", "run-stopped", "run-end")

#: A ledger that cannot be continued (broken chain, wrong key) or a key that cannot be used — the
#: signed chain's own error (:class:`fedcredit.signed_chain.ChainError`), under the ledger's name.
LedgerError = ChainError


# ------------------------------------------------------------------------------ keys
def generate_operator_key(directory: str | Path, name: str = "ledger-key") -> tuple[Path, Path]:
    """Create the operator's Ed25519 key pair: ``DIR/<name>.pem`` (0600) and ``DIR/<name>.pub.pem``."""
    return generate_key_pair(directory, name)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The operator's Ed25519 private key from a PEM file (passphrase from $FEDCREDIT_LEDGER_KEY_PASSPHRASE)."""
    return _load_private_key(path, "ledger key", PASSPHRASE_ENV)


# ------------------------------------------------------------------------ verifying
@dataclass
class VerificationResult(ChainCheck):
    """The outcome of :func:`verify_ledger`: the chain's check (:class:`~fedcredit.signed_chain.ChainCheck`)
    plus the run ids it holds and the nodes' heads.

    ``ok`` is True only when every entry verifies *and* every given head is on the chain.
    """

    run_ids: list[str] = field(default_factory=list)
    heads: list[dict] = field(default_factory=list)  # {"head", "found", "index", + caller's labels}

    def to_json(self) -> dict:
        return {"ok": self.ok, "entries": self.entries, "valid": self.valid,
                "first_bad_index": self.first_bad_index, "bad_kind": self.bad_kind, "reason": self.reason,
                "head": self.head, "key_id": self.key_id,
                "key_source": "ledger" if self.key_from_ledger else "given",
                "run_ids": self.run_ids, "heads": self.heads}


def _as_head_items(head: Any) -> list[dict]:
    if head is None:
        return []
    items = [head] if isinstance(head, (str, dict)) else list(head)
    return [dict(h) if isinstance(h, dict) else {"head": h} for h in items]


def _run_ids(chain: list[dict]) -> list[str]:
    out: list[str] = []
    for entry in chain:
        if entry["kind"] in ("run-start", "resume") and entry["payload"].get("run_id") is not None:
            rid = str(entry["payload"]["run_id"])
            if rid not in out:
                out.append(rid)
    return out


def verify_ledger(path: str | Path, public_key: Ed25519PublicKey | None = None,
                  head: str | Iterable[str | dict] | None = None) -> VerificationResult:
    """Check the whole ledger at ``path``; see :class:`VerificationResult`.

    With ``public_key`` every entry must be signed by it; without, the key is the one the
    ledger's own run-start entry names (which shows self-consistency only: a forger re-signs
    with a key of their own). ``head``: one hash or several (or dicts with a ``head`` key and
    labels such as ``round``/``run_id``) that nodes stored — each must be the hash of an entry.
    A missing file raises :class:`LedgerError`.
    """
    data = read_file_bytes(path, str(path), f"no ledger file there (a run writes RUN_DIR/{LEDGER_FILE})")
    check = verify_chain(data, public_key, START_KIND)
    result = VerificationResult(**{f: getattr(check, f) for f in ChainCheck.__dataclass_fields__})
    result.run_ids = _run_ids(check.chain)
    heads = _as_head_items(head)
    if not check.ok:
        result.heads = [dict(h, found=False, index=None) for h in heads]
        return result
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
        result.ok = False
        result.reason = (f"node head {str(h.get('head'))[:16]}…{f' ({where})' if where else ''} is not on the "
                         f"chain{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: the ledger was "
                         "truncated or rewritten after that head was shown to the node")
    return result


def read_ledger(path: str | Path) -> list[dict]:
    """All entries of a ledger file, parsed, without verifying them."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# -------------------------------------------------------------------------- writing
class AuditLedger(SignedChain):
    """A run's open ledger file that entries are appended to, signed with the operator's key.

    ``entries`` holds every entry so far (those read at open and those appended).
    """

    NAME = "audit ledger"
    SIGNER = "the run's key"
    BUSY_HINT = " (is the run still going?)"

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey, entries: list[dict]):
        super().__init__(path, signing_key, entries[-1]["hash"] if entries else GENESIS, len(entries))
        self.entries = entries

    @classmethod
    def broken_hint(cls, path: Path, check: ChainCheck) -> str:
        return (f"; inspect it with 'fedcredit ledger verify {path}'."
                + (" A run that continues a ledger must use the key that started it (run config "
                   "'ledger-key')." if "key" in check.reason else "")
                + " To start afresh use a new run-dir.")

    @classmethod
    def open(cls, path: str | Path, signing_key: Ed25519PrivateKey) -> "AuditLedger":
        """Open ``path`` for appending; an existing ledger is verified under ``signing_key`` first.

        Raises :class:`LedgerError` when the existing ledger does not verify (it is never
        continued then) or was signed by another key.
        """
        p = Path(path)
        check = cls.existing_chain(p, signing_key.public_key(), START_KIND)
        p.parent.mkdir(parents=True, exist_ok=True)
        if check is not None and not check.ok:
            raise LedgerError(cls.broken_message(p, key_id(signing_key.public_key()), check))
        return cls(p, signing_key, check.chain if check is not None else [])

    def append(self, kind: str, payload: dict, sync: bool = True) -> str:
        """Append one signed entry (flushed and fsynced); returns the new head hash."""
        self.entries.append(super().append(kind, payload, sync))
        return self.head


# ------------------------------------------------------------------- one run's ledger
def _evaluation_fields(record: dict) -> dict:
    """The evaluation part of a round's ledger entry: global, per-institution and fairness figures
    (no in-memory sums) and who failed, refused or was rejected."""
    institutions = {who: {k: v for k, v in m.items() if not k.startswith("_")}
                    for who, m in (record.get("institutions") or {}).items()}
    return {"metrics": {"global": record.get("global"), "institutions": institutions,
                        "fairness": record.get("fairness")},
            "evaluation_failed": record.get("evaluation_failed", {}),
            "evaluation_refused": record.get("evaluation_refused", {}),
            "evaluation_rejected": record.get("evaluation_rejected", {})}


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunLedger:
    """What one consortium run writes to its ledger, and when (driven by :mod:`server.consortium`).

    Entries: ``run-start`` (run id, sha256 and values of the resolved config, the key and where
    it came from, what is resumed), ``statistics``, ``resume`` (checkpoint round and model hash;
    rounds of the checkpoint missing from the ledger are added as ``round`` entries marked
    ``recovered_from_checkpoint``), one ``round`` per completed training round, ``evaluation`` for
    a round whose evaluation came with the next round's train replies (:meth:`evaluation`), ``refusal`` /
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
        payload = {k: record.get(k) for k in (
            "round", "sampled", "participants", "refused", "dropped", "rejected", "model_sha256_before",
            "model_sha256_after", "aggregate_update_norm", "examples", "train_loss")}
        payload.update({
            "epsilon_spent": {who: p.get("epsilon_spent") for who, p in privacy.items()},
            "privacy": privacy,
            **_evaluation_fields(record),
        })
        if record.get("evaluation_in"):  # the evaluation comes later, in its own entry (server.folded_evaluation)
            payload["evaluation_in"] = record["evaluation_in"]
        for key in ("aggregation", "clipped"):  # the robust rule's choices; updates clipped by the server
            if record.get(key) is not None:
                payload[key] = record[key]
        if record.get("secure_aggregation") is not None:  # SecAgg+: the server saw only the sum
            payload["secure_aggregation"] = record["secure_aggregation"]
        if recovered:
            payload["recovered_from_checkpoint"] = True
        return self.ledger.append("round", payload)

    def evaluation(self, record: dict) -> str:
        """The evaluation of round ``record["round"]``'s model when it came after that round's entry
        (asked for with the next round's train message, :mod:`server.folded_evaluation`)."""
        return self.ledger.append("evaluation", {
            "round": record.get("round"), "model_sha256": record.get("model_sha256_after"),
            "evaluated_with": record.get("evaluated_with"),
            "privacy_after_evaluation": record.get("privacy_after_evaluation") or {}, **_evaluation_fields(record)})

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
