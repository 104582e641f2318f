"""``fedcredit data synth``: write a synthetic consortium (one CSV per institution) with known PDs."""

from __future__ import annotations

import argparse

from fedcredit.arguments import number
from fedcredit.outcome import Outcome

HELP = "synthesise a consortium of lenders (one CSV per institution, true PDs kept aside)"


def _archetype_lines() -> str:
    try:
        from simulation.archetypes import load_archetypes

        rows = []
        for a in load_archetypes():
            rows.append(f"  {a.id:<20} {a.rows:>6} rows  default ~{a.target_default_rate:>5.1%}  "
                        f"median limit {a.limit_median:>9,.0f}  {a.description.split(':')[0]}")
        return "\n".join(rows)
    except Exception as exc:  # never break --help over a broken archetypes file
        return f"  (archetypes file unreadable: {exc})"


DESCRIPTION = f"""\
Write a synthetic consortium: one table per institution in the consortium schema's clean columns
(borrower_id, the 23 features, default_next_month), drawn from a latent-creditworthiness model
whose probability of default (PD) is known for every borrower.

Archetypes (configs/archetypes.toml; sizes at --scale 1):
{_archetype_lines()}

They differ in size, borrower mix (age, education, latent creditworthiness), credit-limit policy
and product use (inactive accounts, transactors, revolvers), so the consortium is non-IID in
features and default rates; the PD is one global function of the borrower: a logistic link on
recent payment delays, utilisation, payment ratio and a latent financial health that the data
only partly reveal (pooled oracle AUC about 0.81). Repayment status is a Markov chain in which
delays persist and grow month to month.

--institutions N cycles through the archetypes in the order above: with N = 5 there is one
of each; with more, the k-th institution of an archetype is named <archetype>-k and sized by a
fixed factor (1, 0.8, 1.25, 0.65, 1.1, 0.9, 1.4, 0.7 for k = 1..8, then again).

--scale X multiplies every size (1.0 ≈ 40,000 rows for 5 institutions). Each institution
needs at least 500 rows and about 65 expected defaults (so that it has 50 for DP training);
a scale that breaks this is refused, naming the smallest scale that works (0.25 for the
default consortium).

Files written to --out DIR (which must be new or empty, unless --force):
  DIR/<institution-id>.csv        clean schema columns, e.g. national-bank-1.csv
  DIR/truth/<institution-id>.csv  borrower_id, true_pd: the known PD of each borrower, for
                                  evaluating calibration; never a column of the institution file
                                  and never to be given to a model
  DIR/manifest.json               per institution: id, archetype, rows, defaults, default_rate,
                                  oracle_auc (AUC of the true PD), file; pooled oracle_auc, seed,
                                  scale, schema key, generator version and the archetypes used

The same --seed gives byte-identical files; an institution's rows do not depend on how many
institutions are generated. --force overwrites a previous consortium in DIR (removing the files
its manifest lists; other files are left alone).

With --json the last line of standard output is a JSON summary:
  {{"out", "seed", "scale", "schema", "generator_version", "rows", "default_rate", "oracle_auc",
   "institutions": [{{"id", "archetype", "rows", "default_rate", "oracle_auc", "file"}}, ...]}}
"""
JSON = "a summary (or, with --list-archetypes, the archetypes)"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="directory to write the consortium to (new or empty; see --force)")
    parser.add_argument("--institutions", type=number(int), default=5, metavar="N",
                        help="number of institutions (cycles through the archetypes)")
    parser.add_argument("--scale", type=number(float), default=1.0, metavar="X",
                        help="size multiplier (1.0 ≈ 40,000 rows for 5 institutions)")
    parser.add_argument("--seed", type=number(int), default=0, metavar="S",
                        help="random seed (same seed → byte-identical files)")
    parser.add_argument("--schema", default=None, metavar="S",
                        help="consortium schema: a shipped name or a path (default: consumer-credit-v1)")
    parser.add_argument("--archetypes", default=None, metavar="FILE",
                        help="archetypes file (default: the shipped configs/archetypes.toml)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out, replacing a previous consortium there")
    parser.add_argument("--list-archetypes", action="store_true",
                        help="print the archetypes with all their parameters and exit")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from configs.errors import UserError
    from simulation.archetypes import institution_plan, load_archetypes

    archetypes = load_archetypes(args.archetypes)
    if args.list_archetypes:
        data = [a.to_dict() for a in archetypes]
        if not args.json:
            for a in data:
                print(json.dumps(a))
        return Outcome(data)
    if not args.out:
        raise UserError("--out DIR is required: the directory to write the consortium to")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    plan = institution_plan(args.institutions, args.scale, archetypes)  # validates before any work

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from simulation.synthetic import generate_consortium

    err = Console(file=sys.stderr)
    total_rows = sum(p.rows for p in plan)
    show = len(plan) > 1 or total_rows > 200_000
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("institutions"), TimeElapsedColumn(), console=err, transient=True,
                  disable=not show) as progress:
        task = progress.add_task("writing", total=len(plan))

        def step(p, done):
            progress.update(task, completed=done, description=f"wrote {p.id}")

        manifest = generate_consortium(args.out, institutions=args.institutions, scale=args.scale,
                                       seed=args.seed, schema=args.schema, archetypes=archetypes,
                                       force=args.force, progress=step)

    from rich.table import Table

    out = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    table = Table(title=f"synthetic consortium in {args.out} (seed {args.seed}, scale {args.scale:g})")
    for col in ("institution", "archetype", "rows", "defaults", "default rate", "oracle AUC", "file"):
        table.add_column(col, justify="right" if col in ("rows", "defaults", "default rate", "oracle AUC") else "left")
    for e in manifest["institutions"]:
        table.add_row(e["id"], e["archetype"], str(e["rows"]), str(e["defaults"]), f"{e['default_rate']:.4f}",
                      f"{e['oracle_auc']:.3f}", e["file"])
    table.add_row("pooled", "", str(manifest["rows"]), str(manifest["defaults"]), f"{manifest['default_rate']:.4f}",
                  f"{manifest['oracle_auc']:.3f}", "manifest.json")
    out.print(table)
    out.print("true PDs are in truth/ (for evaluation only; never give them to a model)")
    return Outcome({
        "out": str(args.out), "seed": manifest["seed"], "scale": manifest["scale"],
        "schema": manifest["schema"], "generator_version": manifest["generator_version"],
        "rows": manifest["rows"], "default_rate": manifest["default_rate"],
        "oracle_auc": manifest["oracle_auc"],
        "institutions": [{k: e[k] for k in ("id", "archetype", "rows", "default_rate", "oracle_auc", "file")}
                         for e in manifest["institutions"]],
    })
