"""``fedcredit decisions override``: record a person's override of a decision in the trail."""

from __future__ import annotations

import argparse

HELP = "record a person's override (or confirmation) of a decision, chained after it in the trail"
DESCRIPTION = """\
Record that a person changed (or, after review, confirmed) decision ID: an `override` entry is
appended to the trail in --decisions DIR, signed and chained after the decision, holding the
decision's hash, the outcome before and after, the reason and who decided.

While the service runs it holds the trail: record overrides through its endpoint instead,
  curl -X POST http://127.0.0.1:8080/v1/decisions/ID/override \\
       -H 'Content-Type: application/json' \\
       -d '{"decision": "approve", "reason": "verified income documents", "by": "j.doe"}'

Exit codes: 0 recorded; 2 a user mistake (no such decision, the service is running, bad key).
With --json the last line of stdout is the override record.
"""
JSON = "the override record"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="the decision id")
    p.add_argument("--decisions", required=True, metavar="DIR", help="the decision trail's directory")
    p.add_argument("--decision", required=True, choices=("approve", "decline"), help="the outcome that stands now")
    p.add_argument("--reason", required=True, help="why the decision is changed or confirmed")
    p.add_argument("--by", required=True, help="who decides (name or staff id)")
    p.add_argument("--signing-key", metavar="FILE", help="the trail's private key, if kept outside DIR")


def run(args: argparse.Namespace) -> int:
    from clients.decision_log import DecisionLog
    from configs.errors import UserError
    from fedcredit.outcome import Outcome

    for name in ("reason", "by"):
        if not getattr(args, name).strip():
            raise UserError(f"--{name} must not be empty")
    with DecisionLog.open(args.decisions, args.signing_key) as log:
        ref = log.index.decisions.get(args.id)
        if ref is None:
            raise UserError(f"{log.path}: no decision {args.id!r} on the trail (check the id)")
        before = ref.outcome
        entry = log.append("override", {"decision_id": args.id, "decision_hash": ref.hash, "from": before,
                                        "to": args.decision, "changes_outcome": before != args.decision,
                                        "reason": args.reason.strip(), "by": args.by.strip()})
    print(f"override of {args.id} recorded at entry {entry['index']}: {before} → {args.decision}")
    return Outcome({"ok": True, **entry["payload"], "time": entry["time"],
                    "trail": {"index": entry["index"], "hash": entry["hash"]}})
