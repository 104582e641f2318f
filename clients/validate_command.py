"""``fedcredit data validate``: check an institution's table against the consortium schema, locally.

Nothing of the file leaves the machine or is written anywhere; the command prints a local
summary (or the full list of problems) and exits 0 (valid) or 2 (invalid).
"""

from __future__ import annotations

import argparse

from fedcredit.arguments import number

HELP = "check an institution's table against the consortium schema (locally; nothing is sent)"

DESCRIPTION = """\
Check an institution's table (CSV or Parquet) against the consortium schema before its node
joins a run. The file is read locally; nothing of it is sent or written anywhere.

Reading: Parquet is recognised by its magic bytes, anything else is read as delimited text
(delimiter , ; tab | or runs of spaces detected, or given with --delimiter; UTF-8 with or
without BOM, UTF-16 with BOM, otherwise Windows-1252 with a warning). Excel workbooks, archives,
binary data and HTML pages are refused. A first column that is a row index or a junk header
name — an unnamed index column, a header with one name more than the records have fields, or
records with a row label the header does not name — is dropped with --drop-leading-column (or
[read] drop_leading_column = true in the mapping, which also sets the delimiter).

The column mapping (--mapping) first renames the institution's columns, recodes their values
and drops ignored columns; [scale] factors are applied to numbers before the range checks.
Then every row is checked, and every problem is reported once, with the column (your name and
the schema name), the number of rows affected and example data row numbers (the first row
after the header is data row 1):

  - malformed records (too few or too many fields, a truncated last line), repeated header lines
  - duplicate column names, missing required columns; unknown extra columns (warning only)
  - non-numeric text in numeric columns: thousands separators ("1,000"), decimal commas,
    words such as NaN, null, NA, "-" or inf (leave a missing value's cell empty instead)
  - values outside the schema's range (infinite values included), non-integer ordinal levels
  - unknown categories; empty cells in features whose schema policy is missing = "reject"
    (features with missing = "impute" get the schema's value)
  - duplicate or empty borrower ids (the id column is optional)
  - label values other than the schema's two, a label with a single class
  - an empty file, a header without rows, fewer rows or defaults than DP training needs
    (--min-rows, --min-positives)

Exit codes:
  0  the table is valid; a summary is printed (rows, default rate, per-feature missing
     values, imputations and ranges or category counts) with any warnings
  2  the table (or the schema/mapping, or the path) is invalid; every problem is printed,
     each saying what to fix

With --json the last line of standard output is one JSON object:
  {"ok", "file", "rows", "default_rate", "problems", "warnings", "features"}
and, when the table was read, "delimiter" (comma, semicolon, tab, pipe, whitespace or null for
Parquet) and "drop_leading_column"
(also on failure, when the report itself goes to standard error).
"""
JSON = "the result (with --no-label too; on a rejected table, the validation report)"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the institution's table: CSV (any common delimiter) or Parquet")
    # SUPPRESS: no "(default: None)" in --help; run() reads these with getattr(..., default).
    parser.add_argument("--schema", default=argparse.SUPPRESS, metavar="S",
                        help="consortium schema: a shipped name or a path (default: consumer-credit-v1)")
    parser.add_argument("--mapping", default=argparse.SUPPRESS, metavar="M",
                        help="column mapping from your table to the schema: a shipped name (e.g. uci-taiwan) "
                             "or a path; without it the file must use the schema's column names and codes")
    add_read_arguments(parser)
    parser.add_argument("--min-rows", type=number(int, minimum=0), default=500, metavar="N",
                        help="fewest data rows accepted for DP training")
    parser.add_argument("--min-positives", type=number(int, minimum=0), default=50, metavar="N",
                        help="fewest rows with the positive label (defaults) accepted for DP training")
    parser.add_argument("--no-label", action="store_true", default=argparse.SUPPRESS,
                        help="validate an applicant file for scoring: the label column may be absent, and "
                             "there is no minimum of rows or defaults")


def add_read_arguments(parser: argparse.ArgumentParser) -> None:
    """``--delimiter`` and ``--drop-leading-column``: how to read a delimited text file (shared by
    the commands that read an institution's table)."""
    parser.add_argument("--delimiter", default="auto",
                        choices=("auto", "comma", "semicolon", "tab", "pipe", "whitespace"),
                        help="field delimiter of a text file (auto: detected; whitespace: runs of spaces/tabs)")
    parser.add_argument("--drop-leading-column", action="store_true",
                        help="the first column is a row index or a junk header name: drop it (also when the "
                             "header has one name more, or fewer, than the records have fields)")


def read_options_from(args: argparse.Namespace):
    """The :class:`~clients.raw_table.ReadOptions` the ``--delimiter``/``--drop-leading-column`` flags ask for."""
    from clients.raw_table import ReadOptions

    return ReadOptions.from_names(getattr(args, "delimiter", "auto"), getattr(args, "drop_leading_column", False))


def run(args: argparse.Namespace) -> int:
    from clients.validation import DataValidationError, load_institution_table
    from configs.errors import UserError
    from configs.mapping import load_mapping
    from configs.schema import load_schema
    from fedcredit.outcome import Outcome

    mapping_name = getattr(args, "mapping", None)
    try:
        schema = load_schema(getattr(args, "schema", None))
        mapping = load_mapping(mapping_name, schema) if mapping_name else None
        result = load_institution_table(args.file, schema, mapping,
                                        require_label=not getattr(args, "no_label", False),
                                        min_rows=args.min_rows, min_positives=args.min_positives,
                                        read_options=read_options_from(args))
    except DataValidationError as exc:
        exc.json_report = exc.to_dict()
        raise
    except UserError as exc:
        exc.json_report = {"ok": False, "file": str(args.file), "rows": None, "default_rate": None,
                           "problems": [{"severity": "error", "code": "config", "column": None, "count": 0,
                                         "rows": [], "message": str(exc)}],
                           "warnings": [], "features": {}}
        raise

    summary = result.summary()
    _print_summary(summary, result)
    return Outcome({"ok": True, "file": summary["file"], "rows": summary["rows"],
                    "positives": summary["positives"], "default_rate": summary["default_rate"],
                    "schema": summary["schema"], "delimiter": summary["delimiter"],
                    "drop_leading_column": summary["drop_leading_column"], "problems": [],
                    "warnings": [w.to_dict() for w in result.warnings], "features": summary["features"]})


def _print_summary(summary: dict, result) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    rows = summary["rows"]
    if summary["positives"] is not None:
        rate = summary["default_rate"]
        head = (f"{rows} rows, {summary['positives']} defaults (default rate {rate:.4f})"
                if rate is not None else f"{rows} rows")
    else:
        head = f"{rows} rows (no label column: scoring file)"
    console.print(f"[bold green]OK[/]: {escape(summary['file'])} matches schema {summary['schema']}: {head}", soft_wrap=True)
    if summary.get("delimiter"):
        dropped = "; the leading column was dropped" if summary.get("drop_leading_column") else ""
        console.print(f"read as {summary['delimiter']}-separated text{dropped}")
    if not summary.get("has_id"):
        console.print("no borrower id column (optional; duplicates cannot be checked without it)")
    table = Table(title="per-feature summary (local only)", show_lines=False)
    for col, justify in (("feature", "left"), ("kind", "left"), ("missing", "right"), ("imputed", "right"),
                         ("min", "right"), ("max", "right"), ("categories", "left")):
        table.add_column(col, justify=justify)
    for name, f in summary["features"].items():
        label = name + (" (protected)" if f["protected"] else "")
        if f["kind"] == "categorical":
            cats = ", ".join(f"{c} {k}" for c, k in f["categories"].items())
            table.add_row(escape(label), f["kind"], str(f["missing"]), str(f["imputed"]), "", "", escape(cats))
        else:
            table.add_row(escape(label), f["kind"], str(f["missing"]), str(f["imputed"]), _num(f["min"]), _num(f["max"]), "")
    console.print(table)
    for w in result.warnings:
        console.print(f"[yellow]warning[/] {escape(w.line())}")


def _num(x) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:.6g}"
