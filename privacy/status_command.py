"""``fedcredit privacy status``: the lifetime privacy spend recorded in a node's state directory."""

from __future__ import annotations

import argparse

HELP = "show the lifetime privacy spend recorded in a node's state directory"

DESCRIPTION = """\
Show the institution's lifetime privacy spend recorded in its node's state directory:
budget (max ε), δ, ε spent, ε remaining, and every recorded release (row counts, statistics,
training rounds, evaluations) with its noise multiplier σ, sample rate q and steps.

The node splits its table into training rows and a holdout. Counts of training rows, the
feature statistics and DP-SGD read only training rows; evaluations and the holdout count only
holdout rows. Each borrower is on one side, so the lifetime ε is the larger of the two sides'
(more when the table changed between versions: a borrower may then have changed side). Both
sides are shown: an evaluation after "budget exhausted" spends the holdout side, which may
still have room, and never raises the training side.

ε is recomputed from the recorded events by a fresh Opacus accountant (as the node does);
nothing is written and no lock is taken, so it is safe while the node runs. Releases before a
deliberate fresh start ('fedcredit privacy new-population') are listed apart.

Exit codes: 0 state shown; 2 the directory holds no privacy state, or a state file is damaged
or missing (restore it from the node's backup — the node refuses to release anything until then).
With --json the last line of standard output is one JSON object:
  {"ok", "state_dir", "datasets": [{"institution_id", "fingerprint", "schema_key", "accountant",
   "delta", "max_epsilon", "epsilon_spent", "epsilon_train_side", "epsilon_holdout_side",
   "epsilon_remaining", "population_started", "earlier_populations", "data_versions", "events",
   "policy_history"}]}   (one entry: the institution's ledger; none before its first release)
On a failure (exit 2) it is {"ok": false, "error"}.
"""
JSON = "the ledger and all its events"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", required=True, metavar="DIR", help="the node's state-dir (node config)")
    parser.add_argument("--events", type=int, default=50, metavar="N",
                        help="show at most the last N events in the table (0: none)")


def run(args: argparse.Namespace):
    from fedcredit.outcome import Outcome
    from privacy.status import read_state

    datasets = read_state(args.state_dir)
    _print(args, datasets)
    return Outcome({"ok": True, "state_dir": str(args.state_dir), "datasets": datasets})


def _print(args, datasets) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140, highlight=False)
    if not datasets:
        console.print(f"{escape(str(args.state_dir))}: nothing has been released yet")
        return
    t = Table(title=f"privacy spend in {escape(str(args.state_dir))}")
    for col in ("institution", "ε spent", "training side", "holdout side", "budget", "remaining", "δ",
                "accountant", "releases", "table versions"):
        t.add_column(col, justify="left" if col in ("institution", "accountant") else "right")
    for d in datasets:
        t.add_row(escape(d["institution_id"]), f"{d['epsilon_spent']:.4f}", f"{d['epsilon_train_side']:.4f}",
                  f"{d['epsilon_holdout_side']:.4f}", f"{d['max_epsilon']:g}", f"{d['epsilon_remaining']:.4f}",
                  f"{d['delta']:g}", d["accountant"], str(len(d["events"])), str(len(d["data_versions"])))
    console.print(t)
    for d in datasets:
        for p in d["earlier_populations"]:
            console.print(f"before the fresh start of {d['population_started']}: population of {p['started']} "
                          f"({escape(p['reason'])}), {p['events']} release(s), ε {p['epsilon_spent']:.4f} — "
                          "not counted against the current budget", soft_wrap=True)
        events = d["events"][-args.events:] if args.events > 0 else []
        if not events:
            continue
        et = Table(title=f"{escape(d['institution_id'])}: "
                         f"{'last ' + str(len(events)) + ' of ' if len(events) < len(d['events']) else ''}"
                         f"{len(d['events'])} release(s)")
        for col in ("time (UTC)", "kind", "side", "run", "round", "σ", "q", "steps", "table", "detail"):
            et.add_column(col, justify="right" if col in ("round", "σ", "q", "steps") else "left")
        for e in events:
            et.add_row(e["time"], e["kind"], e["rows"] or "all", escape(e["run_id"] or ""),
                       "" if e["round"] is None else str(e["round"]), f"{e['noise_multiplier']:.4g}",
                       f"{e['sample_rate']:.4g}", str(e["steps"]), (e.get("data") or "")[:12], escape(e["detail"]))
        console.print(et)
