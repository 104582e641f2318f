"""``fedcredit backtest``: the model's PDs against realised outcomes, at the institution."""

from __future__ import annotations

import argparse

from fedcredit.arguments import add_package_and_table, number

HELP = "backtest on realised outcomes: AUC/KS/Gini, calibration by score band, cut-off figures vs the model card"
DESCRIPTION = """\
When the outcomes of scored borrowers are known, check the model against them — on this
machine; nothing is sent anywhere.

The file is read and validated like `fedcredit score` reads applicants (--mapping for the
institution's own format), but it must have the label column (the realised outcome: default or
not) with both outcomes present. Its rows are scored with the package and compared with what
happened:

  discrimination  AUC with a DeLong confidence interval, Gini, KS, Brier score, log loss
  calibration     per score band (about equal deciles of the PDs, best scores first): rows,
                  defaults, mean PD, observed default rate with a binomial confidence interval
                  (--interval exact = Clopper-Pearson, or wilson), and whether the mean PD lies
                  inside it; the Hosmer-Lemeshow test over the bands (chi-square, one degree of
                  freedom per band: the model was not fitted on these outcomes)
  cut-off         approval rate and bad rate of the approved and the declined at the package's
                  cut-off PD (approve when PD < cut-off)
  model card      the same figures at development (the run's final pooled evaluation carried in
                  model.json; approval and bad rate from the package's development score
                  histograms), side by side, with findings in words

--out DIR writes DIR/backtest.json (the path is checked before any work). --json prints the
summary as the last line of stdout (undefined figures are null):
  {"ok", "model", "data", "rows", "defaults", "default_rate", "mean_pd", "auc", "auc_ci", "gini",
   "ks", "hosmer_lemeshow", "bands_within", "bands_total", "cutoff", "development", "findings",
   "seconds"}

Exit codes: 0 done; 2 a user mistake (missing or invalid file, no label column or a single
outcome, damaged model package).
"""
JSON = "the summary: discrimination, calibration, cut-off figures and findings"  # fedcredit.cli adds --json


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_package_and_table(p, "scored borrowers with their realised outcome in the label column (CSV or Parquet)")
    p.add_argument("--bands", type=number(int, minimum=2, maximum=50), default=10, help="score bands for calibration")
    p.add_argument("--interval", choices=("exact", "wilson"), default="exact",
                   help="binomial interval of a band's default rate: exact (Clopper-Pearson) or wilson")
    p.add_argument("--confidence", type=number(float, minimum=0, maximum=1, open_minimum=True, open_maximum=True),
                   default=0.95, help="confidence level of the intervals")
    p.add_argument("--out", metavar="DIR", help="write DIR/backtest.json")


def run(args: argparse.Namespace):
    import time
    from pathlib import Path

    from clients.backtesting import backtest_result
    from clients.scored_table import check_command_paths, load_scored_table, write_result_json
    from fedcredit.json_values import finite
    from fedcredit.outcome import Outcome
    from fedcredit.progress import stage_progress
    from models.package import load_package  # (torch: imported before the clock, as in score, monitor, compare)

    t0 = time.time()
    check_command_paths([args.model], args.out)
    with stage_progress("backtest") as stage:
        stage(f"verifying the package, reading and scoring {args.data}")
        scored = load_scored_table(args.model, args.data, args.mapping, outcomes=True,
                                   package=load_package(args.model))
        stage("computing the backtest")
        result = backtest_result(scored, args.bands, args.confidence, args.interval)
        if args.out:
            write_result_json(args.out, "backtest.json", {"model": args.model, "data": args.data, **result})
    _print(result)
    d, cal = result["discrimination"], result["calibration"]
    return Outcome(finite({
        "ok": True, "model": args.model, "data": args.data, "rows": result["rows"], "defaults": result["defaults"],
        "default_rate": result["default_rate"], "mean_pd": result["mean_pd"], "auc": d["auc"], "auc_ci": d["auc_ci"],
        "gini": d["gini"], "ks": d["ks"], "hosmer_lemeshow": cal["hosmer_lemeshow"],
        "bands_within": cal["bands_within"], "bands_total": cal["bands_total"], "cutoff": result["cutoff"],
        "development": result["development"], "findings": result["findings"],
        "out": str(Path(args.out)) if args.out else None, "seconds": time.time() - t0}))


def _print(result: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    for line in result["findings"]:
        console.print(line, soft_wrap=True, markup=False)
    cal = result["calibration"]
    table = Table("band", "score points", "rows", "defaults", "mean PD", "observed", f"{int(100 * cal['confidence'])} % CI",
                  "", title="calibration by score band")
    for b in cal["bands"]:
        table.add_row(str(b["band"]), b["label"], f"{b['n']:,}", f"{b['defaults']:,}",
                      _pct(b["mean_pd"]), _pct(b["observed"]), f"{_pct(b['ci_low'])} – {_pct(b['ci_high'])}",
                      b["verdict"])
    console.print(table)
    if result["comparison"]:
        comp = Table("figure", "development", "backtest", "difference", title="against the model card")
        for r in result["comparison"]:
            comp.add_row(r["figure"], f"{r['development']:.4f}", f"{r['backtest']:.4f}", f"{r['difference']:+.4f}")
        console.print(comp)


def _pct(x) -> str:
    return "—" if x is None or x != x else f"{100 * x:.2f} %"
