"""``fedcredit privacy new-population``: a deliberate, recorded fresh start of an institution's budget."""

from __future__ import annotations

import argparse

HELP = "start the privacy budget afresh for a wholly new population of borrowers (recorded)"

DESCRIPTION = """\
Start the institution's privacy budget afresh — only when its borrowers are a wholly new
population (e.g. a new business line, a portfolio sold and replaced), never because the same
borrowers were re-exported, corrected, re-keyed or had rows dropped: those keep their spend.

The fresh start is recorded in the ledger (time, reason, the ε spent until then); the earlier
releases stay in the file and in 'privacy status'. Afterwards the node refuses to release
anything from a table version it used before the fresh start. Stop the node first (the
command takes the ledger's lock).

Exit codes: 0 recorded; 2 no state, a damaged state, a locked state, no --reason, or no --yes.
With --json the last line of standard output is one JSON object:
  {"ok", "state_dir", "institution_id", "epsilon_spent_before", "started", "reason"}
On a failure (exit 2) it is {"ok": false, "error"}.
"""
JSON = "the recorded fresh start"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", required=True, metavar="DIR", help="the node's state-dir (node config)")
    parser.add_argument("--reason", required=True, metavar="TEXT",
                        help="why the borrowers are a wholly new population (recorded in the ledger)")
    parser.add_argument("--yes", action="store_true",
                        help="confirm: the borrowers of the earlier releases are not in the new table")


def run(args: argparse.Namespace):
    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from privacy.ledger import PrivacyLedger
    from privacy.status import read_state

    if not args.yes:
        raise UserError("a fresh start forgets the spend of every earlier release for the budget; give --yes to "
                        "confirm that the new table holds none of the borrowers released so far")
    (state,) = read_state(args.state_dir) or [None]
    if state is None:
        raise UserError(f"{args.state_dir}: nothing was ever released from this state; no fresh start is needed")
    with PrivacyLedger.open(args.state_dir, institution_id=state["institution_id"],
                            max_epsilon=state["max_epsilon"], delta=None, accountant=state["accountant"]) as ledger:
        before = ledger.new_population(args.reason)
        started = ledger.populations[-1]["started"]
    print(f"{args.state_dir}: fresh start recorded at {started} ({args.reason}); ε {before:.4f} spent by the earlier "
          "population no longer counts against the budget")
    return Outcome({"ok": True, "state_dir": str(args.state_dir), "institution_id": state["institution_id"],
                    "epsilon_spent_before": before, "started": started, "reason": args.reason})
