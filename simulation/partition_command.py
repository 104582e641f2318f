"""``fedcredit data partition``: split one table into K institution files (IID or non-IID)."""

from __future__ import annotations

import argparse

from fedcredit.arguments import number
from fedcredit.outcome import Outcome

HELP = "split one table into K institutions (iid, Dirichlet label skew, quantity skew, by a feature)"

DESCRIPTION = """\
Split one table (CSV or Parquet; validated against the consortium schema, with --mapping if its
columns are not the schema's) into K institution files for federated experiments. Every row goes
to exactly one institution; the same --seed gives the same split. Partitioning uses
flwr-datasets' partitioners.

The files keep the source exactly: its column names, its label coding (1/0, 0 = default,
1 = good / 2 = bad, text labels — whatever the schema's positive and negative say), its codes,
units and every value as written, its delimiter and leading column. So each file validates with
the same --schema, --mapping and read options as the source, and `fedcredit simulate --data OUT
--schema S --mapping M` reads them as the source is read.

Methods (--by):
  iid        a seeded shuffle cut into K equal shards
  dirichlet  label skew (also: --by label): each class's rows are shared out by Dirichlet(--alpha)
             proportions, so default rates differ between institutions (alpha 0.1: very skewed,
             100: near IID). Every institution gets at least --min-rows rows and --min-positives
             defaults (and as many non-defaults): a draw that misses is redrawn from a seeded
             sequence (up to 50 draws; the seed of the draw kept is in the manifest), else the
             command exits 2 naming an --alpha and --seed that work
  quantity   quantity skew: institution sizes from Dirichlet(--alpha) proportions (each at
             least --min-rows); default rates stay close to the pooled rate
  feature    covariate skew by --feature NAME: a numeric column gives K quantile bands (e.g.
             credit_limit: from the lowest to the highest limits; --strictness below 1 blends in
             noise, 0 = IID); a categorical column gives one institution per value (K must
             equal the number of values, e.g. 4 for education)

Files written to --out DIR (new or empty, unless --force):
  DIR/institution-<k>.<ext>  the institution's rows as the source has them (same extension,
                             header and records; Parquet stays Parquet), in source order
  DIR/manifest.json          method, seed, alpha/feature (and the redraws and the seed of the
                             draw kept), source file and its sha256, schema, mapping, label and
                             how to read the files; per institution: id, rows, defaults (rows
                             with the schema's positive value), default_rate, file (and the
                             feature band or value for --by feature)

An institution below 500 rows or below 50 defaults (the DP-training minimum of `fedcredit data
validate`) is reported as a warning that names which of the two is short; it can be used in
research mode (`fedcredit simulate --min-rows/--min-positives`) or without DP. So is an
institution with a single class (no defaults, or only defaults): no model can be trained or
evaluated on it.

With --json the last line of standard output is the manifest as one JSON object.
"""
JSON = "the manifest"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clients.validate_command import add_read_arguments
    from simulation.partitioning import DEFAULT_ALPHA, DEFAULT_MIN_POSITIVES, DEFAULT_MIN_ROWS, METHOD_ALIASES, METHODS

    parser.add_argument("file", metavar="FILE", help="the table to split: CSV or Parquet")
    parser.add_argument("--institutions", "-k", type=number(int), required=True, metavar="K",
                        help="number of institutions")
    parser.add_argument("--by", choices=[*METHODS, *METHOD_ALIASES], default="iid",
                        help="partition method (label = dirichlet)")
    parser.add_argument("--alpha", type=number(float), default=DEFAULT_ALPHA, metavar="A",
                        help="Dirichlet concentration for --by dirichlet / quantity (small = skewed)")
    parser.add_argument("--feature", default=None, metavar="NAME",
                        help="schema column for --by feature (e.g. credit_limit, education)")
    parser.add_argument("--strictness", type=number(float), default=1.0, metavar="S",
                        help="--by feature on a numeric column: 1 = pure quantile bands, 0 = IID")
    parser.add_argument("--min-rows", type=number(int), default=DEFAULT_MIN_ROWS, metavar="N",
                        help="fewest rows per institution for --by dirichlet / quantity")
    parser.add_argument("--min-positives", type=number(int, minimum=0), default=DEFAULT_MIN_POSITIVES, metavar="N",
                        help="--by dirichlet: fewest defaults (and non-defaults) per institution; draws that "
                             "give fewer are redrawn")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0, metavar="S", help="random seed")
    parser.add_argument("--schema", default=None, metavar="S",
                        help="consortium schema: a shipped name or a path (default: consumer-credit-v1)")
    parser.add_argument("--mapping", default=None, metavar="M",
                        help="column mapping of FILE to the schema: a shipped name (e.g. uci-taiwan) or a path")
    add_read_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write the institution files to")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out, replacing a previous partition there")


def run(args: argparse.Namespace) -> int:
    import sys

    from clients.validate_command import read_options_from
    from configs.errors import UserError
    from configs.schema import load_schema
    from simulation.partition_files import load_partition_source, write_partition
    from simulation.partitioning import METHOD_ALIASES

    method = METHOD_ALIASES.get(args.by, args.by)
    if args.institutions < 1:
        raise UserError(f"--institutions must be at least 1, got {args.institutions}")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    if method == "feature" and not args.feature:
        raise UserError("--by feature needs --feature NAME (e.g. credit_limit for credit-limit bands)")
    if method != "feature" and args.feature:
        raise UserError(f"--feature is only used with --by feature (got --by {args.by})")

    schema = load_schema(args.schema)
    if args.feature and args.feature not in schema.feature_names:
        raise UserError(f"--feature '{args.feature}' is not a feature of schema {schema.key}; "
                        f"features: {', '.join(schema.feature_names)}")
    source = load_partition_source(args.file, schema, args.mapping, read_options_from(args))
    manifest = write_partition(source, args.out, k=args.institutions, method=method, seed=args.seed,
                               alpha=args.alpha, feature=args.feature, strictness=args.strictness,
                               min_rows=args.min_rows, min_positives=args.min_positives if method == "dirichlet" else 0,
                               force=args.force)
    _print_manifest(manifest, args)
    return Outcome(manifest)


def validate_command_for(manifest: dict, out: str) -> str:
    """The ``fedcredit data validate`` command line that checks one of the partition's files."""
    first = manifest["institutions"][0]["file"]
    words = [f"fedcredit data validate {out}/{first}"]
    if manifest["schema"] != "consumer-credit-v1" and manifest.get("schema_file"):
        words.append(f"--schema {manifest['schema_file']}")
    if manifest.get("mapping"):
        words.append(f"--mapping {manifest['mapping']}")
    read = manifest.get("read") or {}
    if read.get("drop_leading_column"):
        words.append("--drop-leading-column")
    return " ".join(words)


def _print_manifest(manifest: dict, args: argparse.Namespace) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    err = Console(file=sys.stderr, highlight=False)
    redraws = manifest["params"].get("redraws")
    drawn = (f", draw seed {manifest['params']['draw_seed']} after {redraws} redraw{'s' if redraws != 1 else ''}"
             if redraws else "")
    title = (f"{manifest['rows']} rows of {args.file} → {len(manifest['institutions'])} institutions "
             f"({manifest['method']}, seed {args.seed}{drawn})")
    table = Table(title=escape(title))
    for col in ("institution", "rows", "defaults", "default rate", "group", "file"):
        table.add_column(col, justify="right" if col in ("rows", "defaults", "default rate") else "left")
    for e in manifest["institutions"]:
        g = e.get("group") or {}
        group = (f"{g['feature']} = {g['value']}" if "value" in g
                 else f"{g['feature']} {g['min']:g}..{g['max']:g}" if "min" in g and g["min"] is not None else "")
        rate = "" if e["default_rate"] is None else f"{e['default_rate']:.4f}"
        table.add_row(e["id"], str(e["rows"]), str(e["defaults"]), rate, escape(group), e["file"])
    out.print(table)
    out.print(escape(f"the files keep the source's values and label coding; check one with: "
                     f"{validate_command_for(manifest, args.out)}"), soft_wrap=True)
    for w in manifest["warnings"]:
        err.print(f"[yellow]warning[/] {escape(w)}", soft_wrap=True)
