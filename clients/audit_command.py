"""``fedcredit privacy audit``: an institution audits what a released model leaks about its rows.

The command lives with the institution's code (``clients/``): it reads and validates the
institution's own table and re-creates its node's training/holdout split
(``clients.dataset.holdout_mask``); the attacks and the bound are in ``privacy.audit``, which
gets encoded matrices and never touches files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcredit.arguments import number

HELP = "membership-inference audit: measure what a released model leaks about an institution's rows"

DESCRIPTION = """\
Measure what a released model leaks about the borrowers it was trained on, at one institution,
with that institution's own table. Everything is computed locally; nothing is sent.

Give the model package (RUN_DIR/model) and the table your node trained on (--data, validated
against the model's schema; --mapping if it uses your own column names). The audit re-creates
your node's split — a row is on the training side or in the local holdout by a hash of its
content and your node's split-seed (--split-seed, --holdout-fraction: use your node-config
values) — so it knows which rows the model was trained on, and draws canaries from them: every
holdout row and a random share of the training rows, so that each canary's membership is an
independent fair coin.

Two attacks score every row (higher = more likely a training row):
  loss  the model's confidence in the row's true label, i.e. its loss (Yeom et al. 2018)
  lira  online LiRA (Carlini et al. 2022): K reference models of the same architecture are
        trained here, non-privately, on random halves of your rows; the model's confidence is
        compared with theirs on the same row, in and out of their training data, after mapping
        their logits onto the model's scale (the server's recalibration changes it)

For each: ROC AUC on the canaries (0.5 = nothing found), TPR at 0.1 % and 1 % FPR, and an ε
lower bound at the stated confidence: the one-training-run bound of Steinke, Nasr & Jagielski
(2023) on the attack's guesses about the canaries, corrected for the fixed grid of guess counts
it tries and for the number of attacks (Bonferroni). A positive bound is evidence that the model
is NOT (ε, δ)-DP for any smaller ε with respect to your rows. A bound of 0 does not prove
privacy: it says these attacks found nothing. Compare the bound with the ε your node spent on
training plus evaluation (`fedcredit privacy status`).

Reference models are trained the way the model was, as far as known: epochs = rounds × local
epochs, batch size and learning rate from RUN_DIR/config.resolved.toml when the package sits in
its run directory; otherwise the run defaults (or give them). They are most of the cost: on the
demo's largest lender (15,000 rows, 16 models × 10 epochs of the 64-32 network) the audit took
about 22 s of one CPU core.

The report is computed from your borrowers' data and is not differentially private: keep it
inside the institution.

Exit codes: 0 audit done; 2 a user mistake (bad package, table or option), named.
With --json the last line of standard output is one JSON object:
  {"ok", "package", "data", "rows", "members", "non_members", "member_probability", "canaries",
   "model", "confidence", "delta", "seed", "reference_models", "reference_training",
   "reference_seconds", "attacks": [{"name", "auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr",
   "epsilon_lower_bound", "test"}], "auc", "epsilon_lower_bound", "bound", "notes"}
On a failure (exit 2) it is {"ok": false, "error"}.
"""

JSON = "the audit"  # what --json prints (fedcredit.cli adds the option)

RUN_DEFAULTS = {"num-server-rounds": 20, "local-epochs": 1, "batch-size": 256, "learning-rate": 0.01,
                "optimizer": "adam"}  # the run-config defaults (pyproject.toml [tool.flwr.app.config])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="the model package (RUN_DIR/model)")
    parser.add_argument("--data", required=True, metavar="FILE",
                        help="your institution's table (CSV/Parquet), the one your node trained on")
    parser.add_argument("--mapping", default=None, metavar="M",
                        help="column mapping of the table to the schema (shipped name or path), as in your node config")
    parser.add_argument("--holdout-fraction", type=number(float, minimum=0, maximum=1, open_minimum=True,
                                                          open_maximum=True),
                        default=0.2, metavar="F", help="your node's holdout-fraction")
    parser.add_argument("--split-seed", type=int, default=0, metavar="S", help="your node's split-seed")
    parser.add_argument("--reference-models", type=number(int, minimum=0), default=16, metavar="K",
                        help="reference models of the LiRA attack (even; 0 runs the loss attack only)")
    parser.add_argument("--reference-epochs", type=number(int, minimum=1), default=None, metavar="E",
                        help="training epochs of each reference model (default: rounds × local epochs of the run)")
    parser.add_argument("--batch-size", type=number(int, minimum=1), default=None, metavar="B",
                        help="batch size of the reference models (default: the run's)")
    parser.add_argument("--learning-rate", type=number(float, minimum=0, open_minimum=True), default=None,
                        metavar="LR", help="learning rate of the reference models (default: the run's)")
    parser.add_argument("--confidence", type=number(float, minimum=0, maximum=1, open_minimum=True, open_maximum=True),
                        default=0.95, help="confidence of the ε lower bound")
    parser.add_argument("--delta", type=number(float, minimum=0, maximum=1, open_maximum=True), default=None,
                        metavar="δ", help="δ of the (ε, δ) tested (default: the node's default for the table, "
                                          "the largest power of ten ≤ 1/(10·rows))")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, help="seed of the canary draw and the reference models")


def run(args: argparse.Namespace):
    import warnings

    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from models.package import load_package
    from privacy.audit import audit_membership

    if args.reference_models % 2:
        raise UserError(f"--reference-models must be even (the reference models are trained in complementary "
                        f"pairs; 0 runs the loss attack only), got {args.reference_models}")
    package = load_package(args.model)
    x, y, member = _institution_rows(args, package)
    recipe, source = _reference_training(Path(args.model), args)
    settings = _settings(args, recipe, len(x))
    with warnings.catch_warnings(), _progress(args.reference_models) as step:
        warnings.simplefilter("ignore")
        try:
            report = audit_membership(package.model(), package.spec, x, y, member, 1 - args.holdout_fraction,
                                      settings, on_reference_model=step)
        except UserError as exc:  # e.g. too few canaries: name the table
            raise UserError(f"{args.data}: {exc}") from None
    report = {"package": str(args.model), "data": str(args.data),
              "reference_training": {**recipe, "source": source}, **report}
    _print(report)
    return Outcome({"ok": True, **report})


def _institution_rows(args: argparse.Namespace, package):
    """The table validated against the model's schema, encoded with the model's encoder, and
    which rows the node trained on (its split, re-created from the split settings)."""
    import numpy as np

    from clients.dataset import holdout_mask
    from clients.validation import load_institution_table

    # no minimum of rows or defaults (those are for DP training); the audit has its own minimum
    table = load_institution_table(args.data, package.schema, args.mapping, min_rows=0, min_positives=0).table
    member = ~holdout_mask(table, package.schema, args.holdout_fraction, args.split_seed)
    y = table[package.schema.label.name].to_numpy(dtype=np.float32)
    return package.encoder.transform(table), y, member


def _settings(args: argparse.Namespace, recipe: dict, rows: int):
    from models.training import LocalTrainConfig
    from privacy.audit import AuditSettings
    from privacy.planning import default_delta

    training = LocalTrainConfig(local_epochs=recipe["epochs"], batch_size=recipe["batch-size"],
                                learning_rate=recipe["learning-rate"], optimizer=recipe["optimizer"])
    return AuditSettings(reference_training=training, reference_models=args.reference_models,
                         confidence=args.confidence, seed=args.seed,
                         delta=args.delta if args.delta is not None else default_delta(rows))


def _reference_training(model_dir: Path, args: argparse.Namespace) -> tuple[dict, str]:
    """Epochs, batch size, learning rate and optimiser of the reference models, and where they
    came from: RUN_DIR/config.resolved.toml next to the package (else the run defaults),
    overridden by the options given."""
    from configs.toml_reader import Table, read_toml

    resolved = model_dir.parent / "config.resolved.toml"
    values, source = dict(RUN_DEFAULTS), "run defaults"
    if resolved.is_file():
        cfg = Table(read_toml(resolved, "resolved run configuration"), resolved, "").sub("run-config")
        values = {key: cfg.get(key, type(default) if key != "learning-rate" else (int, float), default)
                  for key, default in RUN_DEFAULTS.items()}
        values["optimizer"] = cfg.choice("optimizer", ("adam", "sgd"), RUN_DEFAULTS["optimizer"])
        source = str(resolved)
    recipe = {"epochs": max(1, values["num-server-rounds"] * values["local-epochs"]),
              "batch-size": values["batch-size"], "learning-rate": float(values["learning-rate"]),
              "optimizer": values["optimizer"]}
    given = {"epochs": args.reference_epochs, "batch-size": args.batch_size, "learning-rate": args.learning_rate}
    recipe.update({k: v for k, v in given.items() if v is not None})
    if any(v is not None for v in given.values()):
        source += ", with options"
    return recipe, source


class _progress:
    """Rich progress bar on standard error while the reference models train; yields the callback."""

    def __init__(self, total: int):
        self.total = total

    def __enter__(self):
        import sys

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("training reference models"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True,
                            disable=self.total == 0)
        self.bar.__enter__()
        task = self.bar.add_task("reference models", total=self.total)
        return lambda done, total: self.bar.update(task, completed=done)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def _print(r: dict) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    c, m, ref = r["canaries"], r["model"], r["reference_training"]
    console.print(f"model {escape(r['package'])}, table {escape(r['data'])}: {r['rows']} rows, {r['members']} on "
                  f"the training side, {r['non_members']} in the holdout; mean loss {m['loss_members']:.4f} "
                  f"(training side) vs {m['loss_non_members']:.4f} (holdout)")
    console.print(f"canaries: {c['total']} ({c['members']} members, {c['non_members']} non-members; "
                  f"{c['duplicates_excluded']} duplicate rows left out)")
    if r["reference_models"]:
        console.print(f"{r['reference_models']} reference models, {ref['epochs']} epochs, batch {ref['batch-size']}, "
                      f"learning rate {ref['learning-rate']:g} ({escape(ref['source'])}): "
                      f"{r['reference_seconds']:.1f} s")
    t = Table(title=f"membership-inference attacks on the canaries (ε lower bound at {r['confidence']:.0%} "
                    f"confidence, δ = {r['delta']:g})")
    for col in ("attack", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR", "ε lower bound", "guesses (correct)"):
        t.add_column(col, justify="left" if col == "attack" else "right")
    for a in r["attacks"]:
        t.add_row(a["name"], f"{a['auc']:.3f}", f"{a['tpr_at_0.1pct_fpr']:.3f}", f"{a['tpr_at_1pct_fpr']:.3f}",
                  f"{a['epsilon_lower_bound']:.3f}", f"{a['test']['guesses']} ({a['test']['correct']})")
    console.print(t)
    eps = r["epsilon_lower_bound"]
    if eps > 0:
        console.print(f"leakage shown: at {r['confidence']:.0%} confidence the model is not "
                      f"({eps:.3f}, {r['delta']:g})-DP with respect to these rows (Steinke, Nasr & Jagielski 2023 bound)")
    else:
        console.print("no leakage shown by these attacks (ε lower bound 0); this is not a proof of privacy")
    for n in r["notes"]:
        console.print(f"note: {escape(n)}")
