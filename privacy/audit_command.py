"""``fedcredit privacy audit``: membership-inference audit of a model package."""

from __future__ import annotations

import argparse

from fedcredit.cli import number

HELP = "membership-inference audit: how much does a trained model leak about its training rows?"

DESCRIPTION = """\
Measure what a trained model leaks about the rows it was trained on. Give the model package
(RUN_DIR/model), a file of rows the model was trained on (--members) and a file of rows from
the same population it never saw (--non-members, e.g. the institution's holdout). Both files
are validated against the model's schema (with --mapping if they use your own column names);
they are read locally and nothing is sent.

Two attacks score every row (higher = more likely a training row):
  loss-threshold  the model's loss on the row (Yeom et al. 2018)
  calibrated      offline LiRA: the model's confidence compared with that of reference models
                  of the same architecture trained on halves of the non-members (Carlini et
                  al. 2022), which removes per-row difficulty

For each: ROC AUC (0.5 = no leakage found), TPR at 0.1 % and 1 % FPR, and an empirical ε lower
bound at the stated confidence (threshold chosen on one half of the rows, Clopper–Pearson bounds
on the other half; the maximum over attacks is Bonferroni-corrected). The bound treats rows as
independent trials of one model: read it as an indicator of leakage, not a certificate. An AUC
near 0.5 does not prove privacy; it says these attacks found nothing.

Exit codes: 0 audit done; 2 bad package, files or arguments.
With --json the last line of standard output is one JSON object:
  {"ok", "package", "members", "non_members", "confidence", "delta", "model", "attacks": [{"name",
   "auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "epsilon_lower_bound", "test"}], "auc",
   "epsilon_lower_bound", "notes"}
On a failure (exit 2) it is {"ok": false, "error"}.
"""
JSON = "the audit"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="the model package (RUN_DIR/model)")
    parser.add_argument("--members", required=True, metavar="FILE", help="rows the model was trained on (CSV/Parquet)")
    parser.add_argument("--non-members", required=True, metavar="FILE",
                        help="rows of the same population the model never saw (CSV/Parquet)")
    parser.add_argument("--mapping", default=None, metavar="M",
                        help="column mapping of both files to the schema (shipped name or path)")
    parser.add_argument("--confidence", type=number(float, minimum=0, maximum=1, open_minimum=True, open_maximum=True),
                        default=0.95, help="confidence of the ε lower bound")
    parser.add_argument("--delta", type=float, default=1e-5, help="δ used in the ε lower bound")
    parser.add_argument("--reference-models", type=int, default=4, metavar="K",
                        help="reference models of the calibrated attack (even; 0 skips the attack)")
    parser.add_argument("--reference-epochs", type=int, default=20, metavar="E",
                        help="training epochs of each reference model (match the model's training if known)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and reference models")


def run(args: argparse.Namespace) -> int:
    import warnings

    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from privacy.audit import audit_model

    if args.reference_epochs < 1:
        raise UserError(f"--reference-epochs must be at least 1, got {args.reference_epochs}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = audit_model(args.model, args.members, args.non_members, mapping=args.mapping,
                             confidence=args.confidence, seed=args.seed, delta=args.delta,
                             reference_models=args.reference_models, reference_epochs=args.reference_epochs)
    _print(report)
    return Outcome({"ok": True, **report})


def _print(r: dict) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    m = r["model"]
    console.print(f"model {escape(r['package'])}: {r['members']} members, {r['non_members']} non-members; "
                  f"model AUC {m['auc_members']:.3f} on members vs {m['auc_non_members']:.3f} on non-members, "
                  f"mean loss {m['loss_members']:.4f} vs {m['loss_non_members']:.4f}")
    t = Table(title=f"membership-inference attacks (ε lower bound at {r['confidence']:.0%} confidence, δ = {r['delta']:g})")
    for col in ("attack", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR", "ε lower bound"):
        t.add_column(col, justify="left" if col == "attack" else "right")
    for a in r["attacks"]:
        t.add_row(a["name"], f"{a['auc']:.3f}", f"{a['tpr_at_0.1pct_fpr']:.3f}", f"{a['tpr_at_1pct_fpr']:.3f}",
                  f"{a['epsilon_lower_bound']:.2f}")
    console.print(t)
    verdict = ("no leakage found by these attacks (AUC ≤ 0.55)" if r["auc"] <= 0.55 else
               "the model leaks membership" if r["auc"] > 0.6 else "weak signs of membership leakage")
    console.print(f"highest AUC {r['auc']:.3f}: {verdict}; highest ε lower bound {r['epsilon_lower_bound']:.2f}")
    for n in r["notes"]:
        console.print(f"note: {escape(n)}")
