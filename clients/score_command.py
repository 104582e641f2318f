"""``fedcredit score``: score applicants with the consortium's model, at the institution."""

from __future__ import annotations

import argparse

HELP = "score applicants: PD, score points and decision per row"
DESCRIPTION = """\
Score an applicant file with a model package (RUN_DIR/model). The file is read and validated
exactly like `fedcredit data validate` (with --mapping for the institution's own format; the
label column may be absent; no minimum number of rows), encoded with the package's encoder and
scored on this machine — nothing leaves it.

Output columns: the borrower id (when the file has one), pd (probability of default), score
(points: base score at base odds, +PDO points per doubling of the good:bad odds) and decision
(approve when pd < cut-off PD). With --explain K, also reason_1..reason_K: the main
adverse-action reasons (see docs/institution.md).

Output goes to --out (CSV, or Parquet when the name ends in .parquet) or stdout.
Exit codes: 0 scored; 2 a user mistake (invalid file, bad options, damaged model package).
"""
JSON = "a summary (needs --out: stdout carries the scores otherwise)"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model package directory (RUN_DIR/model)")
    p.add_argument("--data", required=True, metavar="FILE", help="applicants (CSV or Parquet)")
    p.add_argument("--mapping", help="the institution's column mapping (name or path)")
    p.add_argument("--out", metavar="FILE", help="output file (.csv or .parquet); default: stdout")
    p.add_argument("--cutoff-pd", type=float, help="approve when PD is below this (default: the package's)")
    p.add_argument("--base-score", type=float, help="points at the base odds (default 600)")
    p.add_argument("--base-odds", type=float, help="good:bad odds that score the base score (default 50)")
    p.add_argument("--pdo", type=float, help="points to double the odds (default 20)")
    p.add_argument("--explain", type=int, default=0, metavar="K", help="add the K main adverse-action reasons")


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from clients.validation import load_institution_table
    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from fedcredit.path_checks import check_output_file
    from models.package import load_package
    from models.scoring import ScoreScale, decisions

    t0 = time.time()
    if args.json and not args.out:
        raise UserError("--json needs --out (stdout carries the scores otherwise)")
    if args.explain < 0:
        raise UserError("--explain must be ≥ 0")
    if args.out:  # before any work: a path that cannot be written is found now, not after scoring
        check_output_file(args.out, "--out", SCORE_SUFFIXES)
    check_model_dir(args.model)
    pkg = load_package(args.model)
    scale = pkg.scale
    if args.base_score is not None or args.base_odds is not None or args.pdo is not None:
        try:
            scale = ScoreScale(base_score=args.base_score if args.base_score is not None else scale.base_score,
                               base_odds=args.base_odds if args.base_odds is not None else scale.base_odds,
                               pdo=args.pdo if args.pdo is not None else scale.pdo)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    cutoff = pkg.cutoff_pd if args.cutoff_pd is None else args.cutoff_pd
    if not 0 < cutoff < 1:
        raise UserError(f"--cutoff-pd must lie strictly between 0 and 1, got {cutoff}")
    data = load_institution_table(args.data, pkg.schema, args.mapping, require_label=False,
                                  min_rows=1, min_positives=0)
    table = data.table
    model = pkg.model()
    pd_values, reasons = score_rows(pkg, model, table, args.explain)
    out = {}
    if pkg.schema.id_column and pkg.schema.id_column in table.columns:
        out[pkg.schema.id_column] = table[pkg.schema.id_column].to_numpy()
    out["pd"] = np.round(pd_values, 6)
    out["score"] = np.round(scale.points(pd_values), 1)
    out["decision"] = decisions(pd_values, cutoff)
    for k in range(args.explain):
        out[f"reason_{k + 1}"] = reasons[:, k]
    try:
        write_scores(out, args.out)
    except OSError as exc:  # checked before scoring; what is left is the file system's (full, read-only, /proc)
        raise UserError(f"--out {args.out}: cannot be written ({exc.strerror or exc}); choose another path") from None
    approved = int((out["decision"] == "approve").sum())
    rows = len(pd_values)
    return Outcome({"file": args.data, "out": args.out, "rows": rows, "approved": approved,
                    "approval_rate": approved / max(rows, 1), "cutoff_pd": cutoff,
                    "mean_pd": float(pd_values.mean()) if rows else None, "seconds": time.time() - t0})


#: what --out may be: CSV, or Parquet
SCORE_SUFFIXES = (".csv", ".parquet")


def check_model_dir(model: str) -> None:
    """--model names a package directory: say what to give instead of a file or a run directory."""
    from pathlib import Path

    from configs.errors import UserError

    p = Path(model)
    if p.is_file():
        raise UserError(f"--model {model}: a file; give the model package directory (RUN_DIR/model, which holds "
                        f"{p.name if p.name == 'model.json' else 'model.json'} and the weights)")
    if p.is_dir() and not (p / "model.json").exists() and (p / "model" / "model.json").is_file():
        raise UserError(f"--model {model}: a run directory; give its model package, --model {p / 'model'}")


#: applicants encoded and scored at a time: the encoded block stays small (no n × inputs matrix)
SCORE_ROWS_PER_BLOCK = 16384
#: torch threads while scoring: the network is small (~10⁴ multiply-adds per applicant), so
#: splitting each block's matrix products over threads costs more than it gains (measured: one
#: thread scores 1M rows ~3x faster than two on a 2-core machine; bench/score_throughput.py)
SCORE_TORCH_THREADS = 1


def score_rows(pkg, model, table, explain: int = 0, counts: dict | None = None):
    """PD of every row of a validated table (and its ``explain`` main reasons), block by block.

    ``counts``: a dict that receives the table's per-feature count vectors
    (:func:`models.encoder.feature_statistics`), counted in the same pass from the values the
    encoder converts anyway (fedcredit monitor).
    """
    import numpy as np
    import torch

    from models.encoder import add_feature_counts
    from models.network import predict_pd

    n = len(table)
    pd_values = np.empty(n, dtype=np.float64)
    reasons = np.empty((n, explain), dtype=object) if explain else None
    usable = pkg.encoder.converted_like_schema(pkg.schema) if counts is not None else set()
    threads = torch.get_num_threads()
    torch.set_num_threads(SCORE_TORCH_THREADS)
    try:
        for start in range(0, max(n, 1), SCORE_ROWS_PER_BLOCK):
            part = table.iloc[start:start + SCORE_ROWS_PER_BLOCK]
            converted = {} if counts is not None else None
            x = pkg.encoder.transform(part, converted)
            if counts is not None:
                add_feature_counts(counts, part, pkg.schema, converted, usable)
            pd_values[start:start + len(part)] = predict_pd(model, x)
            if explain and len(part):
                from models.reasons import adverse_action_reasons

                reasons[start:start + len(part)] = adverse_action_reasons(model, pkg.encoder, pkg.schema, x,
                                                                          explain)
    finally:
        torch.set_num_threads(threads)
    return pd_values, reasons


def write_scores(columns: dict, out: str | None) -> None:
    """Write the score columns as Parquet (``.parquet``) or CSV (to ``out``, or stdout).

    CSV (via pyarrow, several times faster than pandas): a header line, then the rows; text is
    quoted only when some value of the file contains a comma, quote or line break (then every
    text value is quoted); numbers in their shortest exact form.
    """
    import sys

    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    if out and str(out).endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, out)
        return
    import pyarrow.csv as pacsv

    header = ",".join(_csv_field(k) for k in columns) + "\n"
    structural = any(pa.types.is_string(col.type) and pc.any(pc.match_substring_regex(col, '[,"\r\n]')).as_py()
                     for col in table.columns)
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed" if structural else "none")
    if out:
        with open(out, "wb") as fh:
            fh.write(header.encode())
            pacsv.write_csv(table, fh, write_options=options)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(header.encode())
        pacsv.write_csv(table, sys.stdout.buffer, write_options=options)
        sys.stdout.buffer.flush()


def _csv_field(name: str) -> str:
    return '"' + name.replace('"', '""') + '"' if any(c in name for c in ',"\n\r') else name
