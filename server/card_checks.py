"""What the model card checks against the evidence in the run directory, beyond metrics.json.

* :func:`read_institution_state` — in simulation the institutions' privacy state is on this
  machine (``RUN_DIR/node-state/<institution>`` or the run's state root); ε is recomputed from
  its stored events (:func:`privacy.accountant.read_state`) and compared with what the node
  reported.
* :func:`ledger_verification` — ``RUN_DIR/ledger.jsonl`` is verified (hashes, signatures, the
  key metrics.json names, metrics.json's head on the chain).

Neither check changes anything; what fails is reported on the card.
"""

from __future__ import annotations

import json
from pathlib import Path


def state_dir_of(run_dir: Path, metrics: dict, inst: str) -> Path:
    """Where a simulated institution kept its privacy state: the run's state root, else RUN_DIR/node-state."""
    root = (metrics.get("settings") or {}).get("state-root") or ""
    candidates = ([Path(root) / inst] if root else []) + [run_dir / "node-state" / inst]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def read_institution_state(state_dir: Path, fingerprint: str | None) -> dict:
    """The institution's privacy state summary (read-only) or ``{"error"/"note": …}``.

    Uses :func:`privacy.accountant.read_state` (ε recomputed from the stored events with the
    stored accountant); without that module it reads the raw JSON files and says that ε could
    not be recomputed.
    """
    if not (state_dir / "privacy").is_dir():
        return {"note": f"no privacy state at {state_dir}"}
    try:
        from privacy.accountant import read_state
    except ImportError:
        files = sorted(p for p in (state_dir / "privacy").glob("*.json") if p.name != "index.json")
        raw = []
        for p in files:
            try:
                raw.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                return {"error": f"{p}: unreadable ({exc})"}
        pick = [r for r in raw if r.get("fingerprint") == fingerprint] or (raw if len(raw) == 1 else [])
        if not pick:
            return {"note": f"{len(raw)} raw state file(s) at {state_dir}; none matches the training data"}
        r = pick[0]
        return {"path": str(state_dir), "fingerprint": r.get("fingerprint"), "delta": r.get("delta"),
                "max_epsilon": r.get("max_epsilon"), "accountant": r.get("accountant"),
                "events": len(r.get("events") or []), "epsilon_spent": None,
                "note": "privacy.accountant is not installed: ε could not be recomputed from the raw state"}
    try:
        entries = read_state(state_dir)
    except Exception as exc:  # a damaged state is reported on the card, not hidden
        return {"error": str(exc)}
    pick = [e for e in entries if fingerprint and e.get("fingerprint") == fingerprint]
    if not pick:
        pick = entries if len(entries) == 1 else []
    if not pick:
        return {"note": f"{len(entries)} dataset state(s) at {state_dir}; none matches the training data"}
    e = pick[0]
    return {"path": str(state_dir), "fingerprint": e["fingerprint"], "delta": e["delta"],
            "max_epsilon": e["max_epsilon"], "accountant": e["accountant"], "events": len(e["events"]),
            "epsilon_spent": e["epsilon_spent"], "epsilon_remaining": e["epsilon_remaining"]}


def ledger_verification(run_dir: str | Path, metrics: dict) -> dict | None:
    """Verify ``RUN_DIR/ledger.jsonl`` against what metrics.json says of it.

    None when the run kept no ledger (no file, no ``ledger_head``); else ``{"ok", "path",
    "entries", "valid", "first_bad_index", "reason", "head", "key_id", "note"}``. ``ok`` is True
    when every entry verifies under the key of its run-start entry, that key is metrics.json's
    ``ledger.key_id`` (when given) and metrics.json's ``ledger_head`` is on the chain. ``note``
    says when the ledger goes on past that head (the run directory was used again).
    """
    from server.ledger import LEDGER_FILE, LedgerError, verify_ledger

    path = Path(run_dir) / LEDGER_FILE
    head = metrics.get("ledger_head")
    if not path.is_file():
        if not head:
            return None
        return {"ok": False, "path": str(path), "entries": 0, "valid": 0, "first_bad_index": None,
                "reason": f"metrics.json names ledger head {str(head)[:16]}…, but there is no {LEDGER_FILE} "
                          "in the run directory", "head": None, "key_id": None, "note": ""}
    try:
        res = verify_ledger(path, head=[{"head": head, "source": "metrics.json"}] if head else None)
    except LedgerError as exc:
        return {"ok": False, "path": str(path), "entries": 0, "valid": 0, "first_bad_index": None,
                "reason": str(exc), "head": None, "key_id": None, "note": ""}
    ok, reason = res.ok, res.reason
    if res.first_bad_index is not None and not reason.startswith("entry "):
        reason = f"entry {res.first_bad_index}{f' ({res.bad_kind})' if res.bad_kind else ''}: {reason}"
    named = (metrics.get("ledger") or {}).get("key_id")
    if ok and named and res.key_id != named:
        ok, reason = False, (f"the ledger is signed by key {res.key_id}, but metrics.json names key {named}: "
                             "it was re-signed by another key")
    note = ""
    if ok and head and res.head != head:
        after = next((len(res.chain) - 1 - e["index"] for e in res.chain if e["hash"] == head), 0)
        note = (f"the ledger has {after} entr{'y' if after == 1 else 'ies'} after the head in metrics.json "
                "(the run directory was used again after this metrics.json was written)")
    return {"ok": ok, "path": str(path), "entries": res.entries, "valid": res.valid,
            "first_bad_index": res.first_bad_index, "reason": reason, "head": res.head, "key_id": res.key_id,
            "note": note}
