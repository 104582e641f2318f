"""``fedcredit data partition``: split one table into K institution files (IID or non-IID)."""

from __future__ import annotations

import argparse

from fedcredit.cli import number
from fedcredit.outcome import Outcome

HELP = "split one table into K institutions (iid, Dirichlet label skew, quantity skew, by a feature)"

DESCRIPTION = """\
Split one table (CSV or Parquet; validated against the consortium schema, with --mapping if its
columns are not the schema's) into K institution files for federated experiments. Every row goes
to exactly one institution; the same --seed gives the same split. Partitioning uses
flwr-datasets' partitioners.

Methods (--by):
  iid        a seeded shuffle cut into K equal shards
  dirichlet  label skew: each class's rows are shared out by Dirichlet(--alpha) proportions, so
             default rates differ between institutions (alpha 0.1: very skewed, 100: near IID);
             each institution gets at least --min-rows rows (re-drawn up to 10 times)
  quantity   quantity skew: institution sizes from Dirichlet(--alpha) proportions (each at
             least --min-rows); default rates stay close to the pooled rate
  feature    covariate skew by --feature NAME: a numeric column gives K quantile bands (e.g.
             credit_limit: from the lowest to the highest limits; --strictness below 1 blends in
             noise, 0 = IID); a categorical column gives one institution per value (K must
             equal the number of values, e.g. 4 for education)

Files written to --out DIR (new or empty, unless --force):
  DIR/institution-<k>.csv   the institution's rows in the schema's clean columns, source order
  DIR/manifest.json         method, seed, alpha/feature, source file and its sha256; per
                            institution: id, rows, defaults, default_rate, file (and the feature
                            band or value for --by feature)

Institutions below 500 rows or 50 defaults (the DP-training minimum of `fedcredit data validate`)
are reported as warnings; they can be used for research but not for training with the defaults.
So is an institution with a single class (no defaults, or only defaults — small --alpha can do
that): no model can be trained or evaluated on it.

With --json the last line of standard output is the manifest as one JSON object.
"""
JSON = "the manifest"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from simulation.partitioning import DEFAULT_ALPHA, DEFAULT_MIN_ROWS, METHODS

    parser.add_argument("file", metavar="FILE", help="the table to split: CSV or Parquet")
    parser.add_argument("--institutions", "-k", type=number(int), required=True, metavar="K",
                        help="number of institutions")
    parser.add_argument("--by", choices=METHODS, default="iid", help="partition method")
    parser.add_argument("--alpha", type=number(float), default=DEFAULT_ALPHA, metavar="A",
                        help="Dirichlet concentration for --by dirichlet / quantity (small = skewed)")
    parser.add_argument("--feature", default=None, metavar="NAME",
                        help="schema column for --by feature (e.g. credit_limit, education)")
    parser.add_argument("--strictness", type=number(float), default=1.0, metavar="S",
                        help="--by feature on a numeric column: 1 = pure quantile bands, 0 = IID")
    parser.add_argument("--min-rows", type=number(int), default=DEFAULT_MIN_ROWS, metavar="N",
                        help="fewest rows per institution for --by dirichlet / quantity")
    parser.add_argument("--seed", type=number(int), default=0, metavar="S", help="random seed")
    parser.add_argument("--schema", default=None, metavar="S",
                        help="consortium schema: a shipped name or a path (default: consumer-credit-v1)")
    parser.add_argument("--mapping", default=None, metavar="M",
                        help="column mapping of FILE to the schema: a shipped name (e.g. uci-taiwan) or a path")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write the institution files to")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out, replacing a previous partition there")


def run(args: argparse.Namespace) -> int:
    import sys

    from configs.errors import UserError
    from configs.mapping import load_mapping
    from configs.schema import load_schema
    from simulation.partitioning import write_partition

    if args.institutions < 1:
        raise UserError(f"--institutions must be at least 1, got {args.institutions}")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    if args.by == "feature" and not args.feature:
        raise UserError("--by feature needs --feature NAME (e.g. credit_limit for credit-limit bands)")
    if args.by != "feature" and args.feature:
        raise UserError(f"--feature is only used with --by feature (got --by {args.by})")

    from clients.validation import load_institution_table

    schema = load_schema(args.schema)
    mapping = load_mapping(args.mapping, schema) if args.mapping else None
    if args.feature and args.feature not in schema.feature_names:
        raise UserError(f"--feature '{args.feature}' is not a feature of schema {schema.key}; "
                        f"features: {', '.join(schema.feature_names)}")
    loaded = load_institution_table(args.file, schema, mapping, min_rows=0, min_positives=0)
    manifest = write_partition(loaded.table, args.out, schema=schema, k=args.institutions, method=args.by,
                               seed=args.seed, alpha=args.alpha, feature=args.feature,
                               strictness=args.strictness, min_rows=args.min_rows, source=args.file,
                               force=args.force)

    from rich.console import Console
    from rich.table import Table

    out = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    err = Console(file=sys.stderr, highlight=False)
    title = f"{manifest['rows']} rows of {args.file} → {len(manifest['institutions'])} institutions ({args.by}, seed {args.seed})"
    table = Table(title=title)
    for col in ("institution", "rows", "defaults", "default rate", "group", "file"):
        table.add_column(col, justify="right" if col in ("rows", "defaults", "default rate") else "left")
    for e in manifest["institutions"]:
        g = e.get("group") or {}
        group = (f"{g['feature']} = {g['value']}" if "value" in g
                 else f"{g['feature']} {g['min']:g}..{g['max']:g}" if "min" in g and g["min"] is not None else "")
        rate = "" if e["default_rate"] is None else f"{e['default_rate']:.4f}"
        table.add_row(e["id"], str(e["rows"]), str(e["defaults"]), rate, group, e["file"])
    out.print(table)
    for w in manifest["warnings"]:
        err.print(f"[yellow]warning[/] {w}", soft_wrap=True)
    return Outcome(manifest)
    return 0
