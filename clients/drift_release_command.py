"""``fedcredit drift release``: a member shares DP-noised drift figures with the operator (optional)."""

from __future__ import annotations

import argparse

from fedcredit.arguments import add_package_and_table, number
from privacy.noise_defaults import DRIFT_NOISE_MULTIPLIER

HELP = "member: release DP-noised score-band counts (drift, backtest) for the consortium's view, on your own ledger"
DESCRIPTION = f"""\
Share how your current population (or your backtest) looks against the model's development
population with the consortium operator — optionally, when your institution decides to. What
leaves is not the table nor an exact figure: the rows per score band of the package's
development deciles (the same bands `fedcredit monitor` uses; a function of the package only),
and with --outcomes the defaulters, non-defaulters and the sum of PDs per band, each plus
Gaussian noise. The release is one event in your node's lifetime privacy ledger (--state-dir:
the node's state-dir) — the same accountant and budget as training. It is checked before
anything is released: a release that would exceed the budget is refused (exit 2) and nothing
is written. The noise is drawn from the operating system, fresh for every release.

  cells       population: rows per band (L2 sensitivity 1: a row is in one band)
              --outcomes: non-defaults, defaults and sum of PDs per band (sensitivity √2:
              a row adds 1 to one count and its PD ≤ 1 to its band's sum)
  noise       std = σ · sensitivity per cell (σ = --noise-multiplier, default {DRIFT_NOISE_MULTIPLIER:g}:
              std 20 per band, ≈ 28 per cell with --outcomes)
  cost        one release alone ε ≈ 0.18 at δ = 1e-5; on a ledger with a typical training plan
              (ε = 3) it adds ≈ 0.008, twelve of them ≈ 0.09 (`fedcredit privacy status`)

The file (--out FILE, JSON) is what you send to the operator, who aggregates the members' files
with `fedcredit drift view`. --key signs it with your node key (the private key of `fedcredit
keys`, whose .pub the operator registered), so the operator can check it came from you.

The table is read, validated and scored exactly as `fedcredit monitor` (or with --outcomes
`fedcredit backtest`) reads it. --json prints the summary as the last line of stdout:
  {{"ok", "model", "data", "out", "institution", "kind", "bands", "noise_std_per_cell",
   "epsilon_before", "epsilon_spent", "epsilon_budget", "delta", "signed", "seconds"}}

Exit codes: 0 released; 2 a user mistake (missing or invalid file, wrong column, damaged model
package, a package without development score histograms, no privacy ledger in --state-dir, an
existing --out file, an unreadable --key) or a release the budget does not allow.
"""
JSON = "the release: kind, noise, ε before and after"  # fedcredit.cli adds --json


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_package_and_table(p, "the monitored applicants or book (CSV or Parquet); with --outcomes the label column")
    p.add_argument("--state-dir", required=True, metavar="DIR", help="the node's state-dir (its privacy ledger)")
    p.add_argument("--out", required=True, metavar="FILE", help="the release file to send to the operator (JSON)")
    p.add_argument("--outcomes", action="store_true",
                   help="release the backtest cells (defaults, non-defaults, sum of PDs per band): the file needs "
                        "the label column with both outcomes")
    p.add_argument("--period", metavar="TEXT", help="your label for the release, e.g. 'applicants 2025-07'")
    p.add_argument("--noise-multiplier", type=number(float, minimum=0.5, maximum=1000),
                   default=DRIFT_NOISE_MULTIPLIER, help="σ: noise std per cell / sensitivity")
    p.add_argument("--key", metavar="KEY", help="sign the file with this node private key (fedcredit keys)")


def run(args: argparse.Namespace):
    import time
    from pathlib import Path

    from clients.drift_release import drift_release
    from clients.scored_table import check_command_paths, load_scored_table
    from configs.errors import UserError
    from fedcredit.atomic_write import write_json_atomic
    from fedcredit.outcome import Outcome
    from fedcredit.progress import stage_progress

    t0 = time.time()
    out = Path(args.out)
    check_command_paths([args.model], None)
    if out.exists():
        raise UserError(f"--out {out}: already exists; a release file is never overwritten (each one is a separate "
                        "release on your ledger) — choose a new name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the directory {out.parent} does not exist")
    with stage_progress("drift release") as stage:
        stage(f"verifying the package, reading and scoring {args.data}")
        scored = load_scored_table(args.model, args.data, args.mapping, outcomes=args.outcomes)
        stage("releasing through the privacy ledger")
        body = drift_release(scored, args.state_dir, with_outcomes=args.outcomes,
                             noise_multiplier=args.noise_multiplier, period=args.period or "", key=args.key)
        write_json_atomic(out, body, allow_nan=False)
    p = body["privacy"]
    before = p["epsilon_before"]
    print(f"{out}: {body['kind']} drift release of {body['institution']} over {body['bands']['count']} score bands, "
          f"noise std {body['noise']['std_per_cell']:.1f} per cell; ε {before:.4f} → {p['epsilon_spent']:.4f} of "
          f"{p['epsilon_budget']:g} (δ = {p['delta']:g}){'; signed' if 'signature' in body else ''}. "
          "Send this file to the operator.")
    return Outcome({"ok": True, "model": args.model, "data": args.data, "out": str(out),
                    "institution": body["institution"], "kind": body["kind"], "bands": body["bands"]["count"],
                    "noise_std_per_cell": body["noise"]["std_per_cell"], "epsilon_before": before,
                    "epsilon_spent": p["epsilon_spent"], "epsilon_budget": p["epsilon_budget"], "delta": p["delta"],
                    "signed": "signature" in body, "seconds": time.time() - t0})
