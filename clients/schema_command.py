"""``fedcredit schema infer``: draft a consortium schema (and a mapping stub) from a table."""

from __future__ import annotations

import argparse

from fedcredit.outcome import Outcome

HELP = "draft a schema (and a mapping stub) from a table, each choice explained"

DESCRIPTION = """\
Draft a consortium schema from a table (CSV of any common delimiter, or Parquet) — or from several
files with the same columns (a table already split into parties): for every column
its kind (numeric, ordinal, categorical, binary), valid range (the values seen, 10 % wider),
missing-value policy, transform (identity, log1p or signed-log1p: the one that spreads the rows
most evenly over the histogram bins — heavy tails get a log), histogram bins, and which column is
the label and what its values mean. Each choice is written into the schema as a comment with
its reason. Review them — above all the label's positive value (the default) — and write real
descriptions: docs/schemas.md explains every key and what transforms and bins do to model quality.

The label is --label COLUMN (else a two-valued column with a label-like name); its positive
value is --positive VALUE, else a word meaning default (bad, default, yes …), else the rarer of
its two values. The id is --id COLUMN (else a unique column with an id-like name).

Writes --out SCHEMA.toml and a mapping stub (--mapping-out, default SCHEMA.mapping.toml): the
file's own column names, how the file was read ([read]), the columns left out ([ignore]) and
missing-value words to recode. The schema uses the file's own column names, so the file
validates with it directly — which this command checks before it reports success:

  fedcredit data validate FILE --schema SCHEMA.toml --mapping SCHEMA.mapping.toml

Exit codes: 0 drafted and validated; 2 a user mistake (no such file or column, no label to be
found, a label with other than two values, an output file that exists without --force).
"""
JSON = "the draft: files written, label, id, features and the columns left out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clients.validate_command import add_read_arguments

    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="the table: CSV (any common delimiter) or Parquet; several files with the same "
                             "columns are drafted from together")
    parser.add_argument("--out", required=True, metavar="SCHEMA.toml", help="where to write the schema")
    parser.add_argument("--mapping-out", metavar="MAPPING.toml",
                        help="where to write the mapping stub (default: next to --out, SCHEMA.mapping.toml)")
    parser.add_argument("--label", metavar="COL", help="the label column (the outcome); default: guessed")
    parser.add_argument("--positive", metavar="VALUE",
                        help="the label value that means default (default: a word such as 'bad', else the rarer value)")
    parser.add_argument("--id", metavar="COL", help="the borrower id column (default: a unique id-like column)")
    parser.add_argument("--name", metavar="NAME", help="the schema's name (default: from the file name)")
    add_read_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace existing output files")


def run(args: argparse.Namespace) -> Outcome:
    import re
    import sys
    from pathlib import Path

    from clients.schema_drafts import render_mapping, render_schema
    from clients.schema_inference import infer_schema
    from clients.validate_command import read_options_from
    from configs.errors import UserError
    from fedcredit.atomic_write import write_atomic

    out = Path(args.out)
    mapping_out = Path(args.mapping_out) if args.mapping_out else out.with_name(
        out.name.removesuffix(".toml") + ".mapping.toml")
    for path in (out, mapping_out):
        if path.exists() and not args.force:
            raise UserError(f"{path} exists; choose another path or pass --force to replace it")
    raw = read_tables(args.files, read_options_from(args))
    name = args.name or re.sub(r"[^a-z0-9]+", "-", Path(args.files[0]).stem.lower()).strip("-") or "drafted"
    draft = infer_schema(raw, name, label=args.label, id_column=args.id, positive=args.positive)
    write_atomic(out, render_schema(draft))
    write_atomic(mapping_out, render_mapping(draft, name))
    check = [_validate(f, out, mapping_out) for f in args.files]
    command = f"fedcredit data validate {args.files[0]} --schema {out} --mapping {mapping_out}"
    _print(draft, out, mapping_out, check, command, sys.stdout)
    return Outcome({"ok": True, "files": list(args.files), "schema": str(out), "mapping": str(mapping_out),
                    "rows": draft.rows,
                    "label": {"name": draft.label.name, "positive": draft.label.positive,
                              "negative": draft.label.negative},
                    "id": draft.id_column, "read": {"delimiter": draft.delimiter,
                                                    "drop_leading_column": draft.drop_leading_column},
                    "features": [{"name": f.name, "kind": f.kind, **f.keys} for f in draft.features],
                    "ignored": draft.ignored, "validated": check, "validate_command": command})


def read_tables(files: list[str], options):
    """The files read with ``options`` and stacked (same columns in the same order required);
    a file that cannot be read whole stops with its report."""
    import numpy as np
    import pandas as pd

    from clients.raw_table import DataValidationError, RawTable
    from clients.tabular_io import read_table
    from configs.errors import UserError

    tables = []
    for f in files:
        raw = read_table(f, options)
        if raw.problems:
            raise DataValidationError(raw.source, raw.problems, raw.notes, rows=len(raw.frame))
        if tables and list(raw.frame.columns) != list(tables[0].frame.columns):
            raise UserError(f"{f} has other columns than {files[0]} ({', '.join(map(str, raw.frame.columns))}); "
                            f"draft a schema from files with the same columns")
        tables.append(raw)
    if len(tables) == 1:
        return tables[0]
    first = tables[0]
    frame = pd.concat([t.frame for t in tables], ignore_index=True)
    return RawTable(frame=frame, row_numbers=np.arange(1, len(frame) + 1), source=", ".join(files),
                    format=first.format, column_types=first.column_types, read_options=first.read_options)


def _validate(file: str, schema_path, mapping_path) -> dict:
    """The drafted schema and mapping must accept the file they were drafted from (no minimum of
    rows or defaults: that is a question for training, not for the schema)."""
    from clients.validation import load_institution_table

    loaded = load_institution_table(file, schema_path, mapping_path, min_rows=0, min_positives=0)
    summary = loaded.summary()
    return {"rows": summary["rows"], "positives": summary["positives"], "default_rate": summary["default_rate"],
            "warnings": [w.line() for w in loaded.warnings]}


def _print(draft, out, mapping_out, checks: list[dict], command: str, stream) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=stream, width=None if stream.isatty() else 120, highlight=False)
    table = Table(title=escape(f"schema '{draft.name}' drafted from {draft.source}"))
    for col in ("column", "kind", "range / categories", "transform", "bins", "missing"):
        table.add_column(col)
    for f in draft.features:
        k = f.keys
        values = (", ".join(k["categories"][:6]) + (" …" if len(k["categories"]) > 6 else "")
                  if "categories" in k else "{}..{}".format(*k["range"]) if "range" in k else "0/1")
        table.add_row(escape(f.name), f.kind, escape(values), k.get("transform", ""), str(k.get("bins", "")),
                      k["missing"] + (f" ({k['impute']!r})" if "impute" in k else ""))
    console.print(table)
    label = draft.label
    rows = sum(c["rows"] for c in checks)
    rate = sum(c["positives"] for c in checks) / rows
    console.print(escape(f"label '{label.name}': positive (default) = {label.positive!r}, negative = "
                         f"{label.negative!r} — default rate {rate:.4f}; check it"), soft_wrap=True)
    if draft.id_column:
        console.print(escape(f"id: '{draft.id_column}'"))
    for col, why in draft.ignored.items():
        console.print(escape(f"left out '{col}': {why}"), soft_wrap=True)
    files = "the file validates" if len(checks) == 1 else f"all {len(checks)} files validate"
    console.print(escape(f"wrote {out} and {mapping_out}; {files} with them ({rows} rows): {command}"),
                  soft_wrap=True)
