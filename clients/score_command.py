"""``fedcredit score``: score applicants with the consortium's model, at the institution."""

from __future__ import annotations

import argparse
import json

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
    p.add_argument("--json", action="store_true", help="print a summary as JSON (last line of stdout; needs --out)")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    import numpy as np
    import pandas as pd

    from clients.validation import load_institution_table
    from configs.errors import UserError
    from models.package import load_package
    from models.scoring import ScoreScale, decisions

    t0 = time.time()
    if args.json and not args.out:
        raise UserError("--json needs --out (stdout carries the scores otherwise)")
    if args.explain < 0:
        raise UserError("--explain must be ≥ 0")
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
    x = pkg.encoder.transform(table)
    from models.network import predict_pd

    model = pkg.model()
    pd_values = predict_pd(model, x)
    out = pd.DataFrame()
    if pkg.schema.id_column and pkg.schema.id_column in table.columns:
        out[pkg.schema.id_column] = table[pkg.schema.id_column].to_numpy()
    out["pd"] = np.round(pd_values, 6)
    out["score"] = np.round(scale.points(pd_values), 1)
    out["decision"] = decisions(pd_values, cutoff)
    if args.explain:
        from models.reasons import adverse_action_reasons

        reasons = adverse_action_reasons(model, pkg.encoder, pkg.schema, x, args.explain)
        for k in range(args.explain):
            out[f"reason_{k + 1}"] = reasons[:, k]
    if args.out:
        if str(args.out).endswith(".parquet"):
            out.to_parquet(args.out, index=False)
        else:
            out.to_csv(args.out, index=False)
    else:
        out.to_csv(sys.stdout, index=False)
    if args.json:
        approved = int((out["decision"] == "approve").sum())
        print(json.dumps({"file": args.data, "out": args.out, "rows": len(out), "approved": approved,
                          "approval_rate": approved / max(len(out), 1), "cutoff_pd": cutoff,
                          "mean_pd": float(pd_values.mean()) if len(out) else None,
                          "seconds": time.time() - t0}))
    return 0
