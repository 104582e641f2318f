"""``fedcredit privacy plan``: the noise a node would use for a run, and ε after each round."""

from __future__ import annotations

import argparse

from fedcredit.arguments import number
from privacy.noise_defaults import (
    COUNT_NOISE_MULTIPLIER,
    EVALUATION_BIN_CHOICES,
    EVALUATION_NOISE_MULTIPLIER,
    STATISTICS_NOISE_MULTIPLIER,
)

PLANNED = "planned"

HELP = "plan DP-SGD noise for a run: noise multiplier, sample rate, steps and ε after each round"

DESCRIPTION = f"""\
Plan the differential-privacy noise of one federated run for one institution, exactly as its
node does before the first training round (nothing is read or written; no data needed). Give
--rows as the node's released (noisy) count of training rows, as the node plans with it.

The node trains with DP-SGD: Poisson sampling with rate q = batch-size / rows, per-example
clipping to norm C, Gaussian noise of std σ·C per coordinate. It chooses the smallest noise
multiplier σ such that its lifetime ε (Opacus RDP or PRV accountant, at δ) stays within its
budget over all planned rounds, counting the other releases of the run:

  - the row counts (Gaussian mechanism, σ = {COUNT_NOISE_MULTIPLIER:g}, once per table version) and the
    feature-statistics release (σ = {STATISTICS_NOISE_MULTIPLIER:g}) before training, unless --no-statistics
    (they were already spent in an earlier run on the same table);
  - when the node's release-eval is 'noised' (the deployment default): one noised evaluation
    per scheduled evaluation (every --evaluate-every rounds and the last) plus the final
    evaluation of the recalibrated model, reserved at σ = {EVALUATION_NOISE_MULTIPLIER:g} and {max(EVALUATION_BIN_CHOICES)} score bins.
    Evaluations read only the holdout, so they spend the holdout side of the budget, not
    the training side; the node then lowers their σ as far as that leaves the lifetime ε
    (and this run's ε) where the training plan puts it, and uses fewer score bins
    ({", ".join(map(str, sorted(EVALUATION_BIN_CHOICES)))}) for a small holdout. The plan shows that evaluation σ.
    None for 'exact' (simulation only) or 'off'.

With --run-epsilon the run's own ε (counts + statistics + evaluations + training) is also
capped, like the run config's target-epsilon.

The table shows, after each round, the lifetime ε (counting all of the run's other releases
from the start) and the budget left. ε is computed from the planned events by a fresh Opacus
accountant, as the node's ledger does.

Exit codes: 0 plan printed; 2 invalid arguments or the budget cannot fit the run.
With --json the last line of standard output is one JSON object:
  {{"ok", "noise_multiplier", "sample_rate", "steps_per_round", "rounds", "epsilon", "delta",
   "accountant", "epsilon_run", "evaluation_noise_multiplier", "reserved_events", "table": [{{"round", "noise_multiplier",
   "sample_rate", "steps", "epsilon_after", "epsilon_remaining"}}]}}
On a failure (exit 2) it is {{"ok": false, "error"}}.
"""
JSON = "the plan"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epsilon", type=number(float, minimum=0, open_minimum=True), required=True, metavar="E",
                        help="the institution's lifetime privacy budget (max ε)")
    parser.add_argument("--delta", type=number(float, minimum=0, open_minimum=True), default=None, metavar="D",
                        help="δ of the guarantee (default: the largest power of ten ≤ 1/(10·rows), as the node)")
    parser.add_argument("--rows", type=number(int, minimum=1), required=True, metavar="N",
                        help="the institution's training rows")
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=256, metavar="B",
                        help="expected batch size (sample rate q = B / N)")
    parser.add_argument("--local-epochs", type=number(int, minimum=1), default=1, metavar="L",
                        help="local epochs per round (steps per round = L · ceil(N / B))")
    parser.add_argument("--rounds", type=number(int, minimum=1), default=10, metavar="R", help="planned training rounds")
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="rdp",
                        help="Opacus accountant: RDP (default) or PRV (tighter, slower)")
    parser.add_argument("--run-epsilon", type=number(float, minimum=0, open_minimum=True), default=None, metavar="E",
                        help="cap on this run's own ε (the run config's target-epsilon)")
    parser.add_argument("--evaluate-every", type=number(int, minimum=1), default=1, metavar="K",
                        help="the run evaluates every K rounds and after the last (run config evaluate-every)")
    parser.add_argument("--no-statistics", action="store_true",
                        help="do not reserve the row-count and feature-statistics releases (already spent)")
    parser.add_argument("--release-eval", choices=("noised", "exact", "off"), default="noised",
                        help="the node's evaluation release (noised: one Gaussian release per evaluation)")


def run(args: argparse.Namespace):
    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from fedcredit.protocol import evaluation_rounds
    from privacy.dp_release import count_events
    from privacy.events import PrivacyEvent
    from privacy.planning import default_delta, plan_run_noise, plan_table, sample_rate_for, steps_per_epoch

    delta = args.delta if args.delta is not None else default_delta(args.rows)
    if delta >= 1.0 / args.rows:
        raise UserError(f"--delta {delta:g} is not below 1/rows = {1.0 / args.rows:g}: with δ ≥ 1/n a mechanism may "
                        f"publish a record outright. Use δ ≤ 1/(10·n), e.g. {default_delta(args.rows):g}")
    q = sample_rate_for(args.rows, args.batch_size)
    steps = args.local_epochs * steps_per_epoch(args.rows, args.batch_size)
    side = {"split": PLANNED, "data": PLANNED}  # one table version: training and holdout compose in parallel
    run_events = []
    if not args.no_statistics:
        run_events = count_events(**side) + [PrivacyEvent("statistics", STATISTICS_NOISE_MULTIPLIER, 1.0, 1,
                                                          rows="train", **side)]
    evaluations = (1 + len(evaluation_rounds(1, args.rounds, args.evaluate_every))
                   if args.release_eval == "noised" else 0)
    plan = plan_run_noise(prior_events=[], run_events=run_events, evaluations=evaluations, max_epsilon=args.epsilon,
                          delta=delta, sample_rate=q, steps_per_round=steps, rounds=args.rounds,
                          run_epsilon_cap=args.run_epsilon, accountant=args.accountant, **side)
    table = plan_table(plan)
    reserved = {"counts": 0 if args.no_statistics else 2, "statistics": 0 if args.no_statistics else 1,
                "evaluation": evaluations}
    _print(args, plan, table, delta, reserved)
    return Outcome({"ok": True, "noise_multiplier": plan.noise_multiplier, "sample_rate": q, "steps_per_round": steps,
                    "rounds": args.rounds, "epsilon": args.epsilon, "delta": delta,
                    "accountant": args.accountant, "epsilon_run": plan.epsilon_run,
                    "evaluation_noise_multiplier": plan.evaluation_noise_multiplier,
                    "reserved_events": reserved, "table": table})


def _print(args, plan, table, delta, reserved) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    console.print(f"budget ε = {args.epsilon:g} at δ = {delta:g} ({args.accountant.upper()} accountant); "
                  f"{args.rows} rows, batch {args.batch_size}, {args.local_epochs} local epoch(s), {args.rounds} round(s)")
    console.print(f"noise multiplier σ = {plan.noise_multiplier:.4f} (noise std σ·C per coordinate), "
                  f"sample rate q = {plan.sample_rate:.5g}, {plan.steps_per_round} steps per round")
    parts = []
    if reserved["statistics"]:
        parts.append("the row counts and the feature-statistics release")
    if reserved["evaluation"]:
        parts.append(f"{reserved['evaluation']} noised evaluation(s)")
    if parts:
        console.print(f"reserved besides training (counted from round 1): {' and '.join(parts)}")
    if plan.evaluation_noise_multiplier is not None:
        console.print(f"evaluation noise multiplier σ = {plan.evaluation_noise_multiplier:.4f} (holdout side; at most "
                      f"{EVALUATION_NOISE_MULTIPLIER:g})")
    t = Table(title="lifetime ε after each round")
    for col in ("round", "σ", "q", "steps", "ε after round", "ε remaining"):
        t.add_column(col, justify="right")
    for row in table:
        t.add_row(str(row["round"]), f"{row['noise_multiplier']:.4f}", f"{row['sample_rate']:.5g}", str(row["steps"]),
                  f"{row['epsilon_after']:.4f}", f"{row['epsilon_remaining']:.4f}")
    console.print(t)
    console.print(f"ε of this run's releases alone: {plan.epsilon_run:.4f}")
