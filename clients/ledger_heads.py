"""The node's copy of the audit ledger's head: what makes a rewritten history detectable.

Every training round and every evaluation the server sends the head hash of its signed audit
ledger (config ``ledger-head``). The node appends ``{"run_id", "round", "stage", "head", "time"}``
to ``STATE_DIR/ledger-heads.jsonl`` (``stage`` is ``train`` or ``evaluate``; the final
evaluation's head covers the last round's entry). Later, anyone holding that file can check a published
ledger against it (``fedcredit ledger verify LEDGER --heads-file STATE_DIR/ledger-heads.jsonl``):
if the operator rewrote or truncated the history after showing the node a head, that head is
no longer on the chain.

A member that adopts a model after comparing it with the one in use (``fedcredit compare
--adopt``) records that decision in the same file (:func:`record_adoption`): an entry with
``stage = "adopt"``, the adopted run's id, its number of rounds and the ledger head the run ended
on (the hash of its ``run-end`` entry, which names the exported model), plus ``decision`` — the
model's weights digest, the model it replaces, the comparison's recommendation and the
committee's note. ``fedcredit ledger verify --heads-file`` then checks that head like any other:
the member can show which published model it adopted, and a rewritten ledger is detected.

The file is replaced atomically (written beside it, fsynced, renamed), so a crash never
leaves a torn line.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from configs.errors import UserError
from fedcredit.atomic_write import write_atomic

HEADS_FILE = "ledger-heads.jsonl"


def _is_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def record_ledger_head(state_dir: str | Path, run_id: str, server_round: int, head: str,
                       stage: str = "train") -> Path:
    """Append the head shown for ``server_round`` of ``run_id`` at ``stage`` to
    ``STATE_DIR/ledger-heads.jsonl``.

    A repeated (run, round, stage, head) is not written twice. A head that is not a sha256 hex digest
    raises :class:`UserError` (the node refuses the round).
    """
    head = str(head)
    if not _is_hash(head):
        raise UserError(f"the round config's ledger-head {head[:80]!r} is not a sha256 hex digest; "
                        "this node does not train for a server that does not show a valid ledger head")
    d = Path(state_dir)
    path = d / HEADS_FILE
    try:
        return _append_head(d, path, str(run_id), int(server_round), head, stage)
    except OSError as exc:
        from privacy.accountant import PrivacyStateError

        raise PrivacyStateError(f"{path}: cannot store the audit ledger's head ({exc.strerror or exc}); the node "
                                "does not train until its 'state-dir' is writable") from None


def record_adoption(state_dir: str | Path, run_id: str, rounds: int, head: str, decision: dict) -> Path:
    """Append the adoption of run ``run_id``'s model (ledger ``head`` after its run-end entry) with
    the ``decision`` record; raises :class:`UserError` when the head is malformed or the file
    cannot be written."""
    head = str(head)
    if not _is_hash(head):
        raise UserError(f"ledger head {head[:80]!r} is not a sha256 hex digest (64 hex digits): give the head the "
                        "adopted run's ledger ended on (RUN_DIR/metrics.json 'ledger_head')")
    d = Path(state_dir)
    try:
        return _append_head(d, d / HEADS_FILE, str(run_id), int(rounds), head, "adopt", {"decision": decision})
    except OSError as exc:
        raise UserError(f"{d / HEADS_FILE}: cannot record the adoption ({exc.strerror or exc}); give a writable "
                        "--state-dir (the node's state directory)") from None


def _append_head(d: Path, path: Path, run_id: str, server_round: int, head: str, stage: str,
                 extra: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.is_file() else b""
    for line in old.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if (e.get("run_id") == str(run_id) and e.get("round") == int(server_round) and e.get("head") == head
                and e.get("stage", "train") == stage):
            return path
    if old and not old.endswith(b"\n"):
        old += b"\n"
    entry = {"run_id": str(run_id), "round": int(server_round), "stage": stage, "head": head,
             "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **(extra or {})}
    return write_atomic(path, old + json.dumps(entry, sort_keys=True).encode() + b"\n")


def read_ledger_heads(state_dir: str | Path) -> list[dict]:
    """The heads this node stored (oldest first); [] when it has none."""
    path = Path(state_dir) / HEADS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
