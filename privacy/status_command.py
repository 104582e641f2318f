"""``fedcredit privacy status``: the lifetime privacy spend recorded in a node's state directory."""

from __future__ import annotations

import argparse

HELP = "show the lifetime privacy spend recorded in a node's state directory"

DESCRIPTION = """\
Show, for every dataset (data fingerprint) a node has ever accounted for in its state
directory: institution, schema, budget (max ε), δ, ε spent, ε remaining and every recorded
release (statistics, training rounds, evaluations) with its noise multiplier σ, sample rate q
and steps.

ε spent is recomputed from the recorded events by a fresh Opacus accountant (as the node
does); nothing is written and no lock is taken, so it is safe while the node runs.

Exit codes: 0 state shown; 2 the directory holds no privacy state, or a state file is damaged
or missing (restore it from the node's backup — the node refuses to train until then).
With --json the last line of standard output is one JSON object:
  {"ok", "state_dir", "datasets": [{"fingerprint", "institution_id", "schema_key", "accountant",
   "delta", "max_epsilon", "epsilon_spent", "epsilon_remaining", "events", "policy_history"}]}
On a failure (exit 2) it is {"ok": false, "error"}.
"""
JSON = "all datasets and all their events"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", required=True, metavar="DIR", help="the node's state-dir (node config)")
    parser.add_argument("--events", type=int, default=50, metavar="N",
                        help="show at most the last N events per dataset in the table (0: none)")


def run(args: argparse.Namespace) -> int:
    from fedcredit.outcome import Outcome
    from privacy.accountant import read_state

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
        console.print(f"{escape(str(args.state_dir))}: no dataset has been accounted for yet")
        return
    t = Table(title=f"privacy spend in {escape(str(args.state_dir))}")
    for col, j in (("institution", "left"), ("schema", "left"), ("fingerprint", "left"), ("ε spent", "right"),
                   ("budget", "right"), ("remaining", "right"), ("δ", "right"), ("accountant", "left"),
                   ("events", "right")):
        t.add_column(col, justify=j)
    for d in datasets:
        t.add_row(escape(d["institution_id"]), escape(d["schema_key"]), d["fingerprint"][:12],
                  f"{d['epsilon_spent']:.4f}", _num(d["max_epsilon"]), _num(d["epsilon_remaining"], 4),
                  _num(d["delta"]), d["accountant"] or "", str(len(d["events"])))
    console.print(t)
    if args.events <= 0:
        return
    for d in datasets:
        events = d["events"][-args.events:]
        if not events:
            continue
        et = Table(title=f"{escape(d['institution_id'])} ({d['fingerprint'][:12]}): "
                         f"{'last ' + str(len(events)) + ' of ' if len(events) < len(d['events']) else ''}"
                         f"{len(d['events'])} release(s)")
        for col in ("time (UTC)", "kind", "run", "round", "σ", "q", "steps", "detail"):
            et.add_column(col, justify="right" if col in ("round", "σ", "q", "steps") else "left")
        for e in events:
            et.add_row(e["time"], e["kind"], escape(e["run_id"] or ""), "" if e["round"] is None else str(e["round"]),
                       f"{e['noise_multiplier']:.4g}", f"{e['sample_rate']:.4g}", str(e["steps"]), escape(e["detail"]))
        console.print(et)


def _num(x, digits: int | None = None) -> str:
    if x is None:
        return ""
    return f"{x:.{digits}f}" if digits is not None else f"{x:g}"
