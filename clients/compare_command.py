"""``fedcredit compare``: champion against challenger on the same holdout, with a recommendation."""

from __future__ import annotations

import argparse

from fedcredit.arguments import number

HELP = "champion vs challenger on one holdout: DeLong AUC test, swap sets, fairness, a recommendation"
DESCRIPTION = """\
Compare the model in use (the champion) with a candidate (the challenger) on the same rows with
known outcomes — on this machine; nothing is sent anywhere.

The holdout is read and validated like `fedcredit backtest` reads outcomes (--mapping for the
institution's own format; the label column is required) and scored with both packages. Reported:

  discrimination  both AUCs, the difference (challenger - champion) with a DeLong confidence
                  interval and test for correlated AUCs; KS and Gini of each
  calibration     Hosmer-Lemeshow test and bands inside their interval, for each model
  decisions       approval and bad rate at each package's cut-off; the swap sets (approved by
                  one model and declined by the other) with their default rates; the challenger's
                  bad rate at the champion's approval rate
  fairness        approval rate per protected group under each model; demographic-parity and
                  equal-opportunity differences side by side
  recommendation  adopt-challenger (significantly better AUC, no flag), review (better, with
                  flags: calibration, swap-in borrowers riskier than swap-out, wider fairness
                  gaps), or keep-champion (no significant improvement, or worse) — in sentences

--adopt records the member's decision to adopt the challenger in the node's ledger heads
(--state-dir STATE: STATE/ledger-heads.jsonl, stage "adopt"): the challenger's run id and the
ledger head its run ended on (from CHALLENGER_RUN/metrics.json, or --ledger-head), with its
weights digest, the champion it replaces, the recommendation and --note. Adopting against the
recommendation requires --note (the committee's reason). `fedcredit ledger verify
RUN/ledger.jsonl --heads-file STATE` then checks the adopted head against the published ledger.

--out DIR writes DIR/compare.json (the path is checked before any work). --json prints the
summary as the last line of stdout (undefined figures are null):
  {"ok", "champion", "challenger", "data", "rows", "auc_champion", "auc_challenger",
   "auc_difference": {"difference", "low", "high", "p_value"}, "swap_sets", "recommendation",
   "adopted", "seconds"}

Exit codes: 0 done; 2 a user mistake (missing or invalid file, no label column, a package that
does not verify, --adopt without --state-dir or a ledger head).
"""
JSON = "the summary: AUCs and their DeLong difference, swap sets, the recommendation"  # fedcredit.cli adds --json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--champion", required=True, metavar="DIR", help="the model in use (RUN_DIR/model)")
    p.add_argument("--challenger", required=True, metavar="DIR", help="the candidate model (RUN_DIR/model)")
    p.add_argument("--data", required=True, metavar="FILE", help="holdout with realised outcomes (CSV or Parquet)")
    p.add_argument("--mapping", help="the institution's column mapping (name or path)")
    p.add_argument("--confidence", type=number(float, minimum=0, maximum=1, open_minimum=True, open_maximum=True),
                   default=0.95, help="confidence level of the intervals")
    p.add_argument("--out", metavar="DIR", help="write DIR/compare.json")
    p.add_argument("--adopt", action="store_true", help="record the adoption of the challenger in the node's ledger heads")
    p.add_argument("--state-dir", metavar="DIR", help="the node's state directory (for --adopt)")
    p.add_argument("--ledger-head", metavar="HASH",
                   help="the challenger run's final ledger head (default: CHALLENGER_RUN/metrics.json)")
    p.add_argument("--note", help="the committee's note recorded with --adopt (required against the recommendation)")


def run(args: argparse.Namespace):
    import time

    from clients.comparison import compare_models
    from clients.scored_table import (ScoredTable, check_command_paths, load_scored_table, load_table, package_pd,
                                      write_result_json)
    from configs.errors import UserError
    from fedcredit.json_values import finite
    from fedcredit.outcome import Outcome
    from fedcredit.path_checks import check_output_dir
    from fedcredit.progress import stage_progress
    from models.package import load_package

    t0 = time.time()
    if args.adopt and not args.state_dir:
        raise UserError("--adopt needs --state-dir DIR: the node's state directory, where its ledger heads are kept")
    check_command_paths([args.champion, args.challenger], args.out)
    if args.adopt:
        check_output_dir(args.state_dir, "--state-dir")
    with stage_progress("compare") as stage:
        stage(f"verifying the packages; reading and scoring {args.data} with the champion")
        challenger_pkg = load_package(args.challenger)
        champion = load_scored_table(args.champion, args.data, args.mapping, outcomes=True)
        stage("scoring with the challenger")
        if challenger_pkg.schema.fingerprint() == champion.package.schema.fingerprint():
            data = champion.data
        else:  # a challenger on another schema version validates the file against its own schema
            data = load_table(args.data, challenger_pkg, args.mapping, outcomes=True)
        challenger = ScoredTable(challenger_pkg, data, package_pd(challenger_pkg, data.table))
        stage("comparing")
        result = compare_models(champion, challenger, args.confidence)
        adopted = _adopt(args, challenger_pkg, result) if args.adopt else None
        result["adopted"] = adopted
        if args.out:
            write_result_json(args.out, "compare.json", {"champion_model": args.champion,
                                                         "challenger_model": args.challenger, "data": args.data,
                                                         **result})
    _print(result)
    auc = result["auc_difference"]
    return Outcome(finite({
        "ok": True, "champion": args.champion, "challenger": args.challenger, "data": args.data,
        "rows": result["rows"], "auc_champion": auc["auc_a"], "auc_challenger": auc["auc_b"],
        "auc_difference": {k: auc[k] for k in ("difference", "low", "high", "p_value")},
        "swap_sets": result["swap_sets"], "recommendation": result["recommendation"], "adopted": adopted,
        "seconds": time.time() - t0}))


def challenger_ledger_head(model_dir: str, given: str | None, run_id) -> str:
    """The head the challenger's run ended on: ``--ledger-head``, else RUN_DIR/metrics.json."""
    import json
    from pathlib import Path

    from configs.errors import UserError

    if given:
        return given.strip().lower()
    metrics = Path(model_dir).resolve().parent / "metrics.json"
    try:
        m = json.loads(metrics.read_text())
    except (OSError, ValueError):
        raise UserError(f"--adopt: no readable {metrics} beside the challenger's package to take its ledger head "
                        "from; give --ledger-head HASH (the head of the operator's published ledger after that "
                        "run's end)") from None
    if run_id is not None and str(m.get("run_id")) != str(run_id):
        raise UserError(f"{metrics} is of run {m.get('run_id')}, the challenger's package of run {run_id}; give "
                        "--ledger-head HASH for the package's run")
    if not m.get("ledger_head"):
        raise UserError(f"{metrics} has no ledger_head (the run kept no audit ledger); give --ledger-head HASH")
    return str(m["ledger_head"])


def _adopt(args, challenger_pkg, result: dict) -> dict:
    from clients.ledger_heads import HEADS_FILE, record_adoption
    from configs.errors import UserError

    rec = result["recommendation"]
    if rec["decision"] != "adopt-challenger" and not args.note:
        raise UserError(f"the comparison recommends {rec['decision']}: adopting the challenger against it needs "
                        "--note TEXT with the committee's reason (it is recorded with the decision)")
    run_id = challenger_pkg.meta.get("run_id")
    head = challenger_ledger_head(args.challenger, args.ledger_head, run_id)
    auc = result["auc_difference"]
    decision = {"adopted_weights_sha256": result["challenger"]["weights_sha256"],
                "replaces": {"run_id": result["champion"]["run_id"],
                             "weights_sha256": result["champion"]["weights_sha256"]},
                "recommendation": rec["decision"], "auc_difference": auc["difference"],
                "auc_difference_ci": [auc["low"], auc["high"]], "rows": result["rows"], "note": args.note or ""}
    path = record_adoption(args.state_dir, str(run_id), int(challenger_pkg.meta.get("rounds_completed") or 0), head,
                           decision)
    return {"run_id": run_id, "head": head, "heads_file": str(path), **decision,
            "verify": f"fedcredit ledger verify CHALLENGER_RUN/ledger.jsonl --heads-file {args.state_dir}/{HEADS_FILE}"}


def _print(result: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    ch, cl = result["champion"], result["challenger"]
    table = Table("figure", "champion", "challenger", title=f"{result['rows']:,} rows, {result['defaults']:,} defaults")
    for name, get in (("AUC", lambda m: m["discrimination"]["auc"]), ("KS", lambda m: m["discrimination"]["ks"]),
                      ("Hosmer-Lemeshow p", lambda m: m["calibration"]["hosmer_lemeshow"]["p_value"]),
                      ("approval rate", lambda m: m["cutoff"]["approval_rate"]),
                      ("bad rate of approved", lambda m: m["cutoff"]["bad_rate_approved"])):
        table.add_row(name, _num(get(ch)), _num(get(cl)))
    console.print(table)
    sets = Table("swap set", "rows", "defaults", "default rate", title="decisions at each package's cut-off")
    for s in result["swap_sets"].values():
        sets.add_row(s["name"], f"{s['n']:,}", f"{s['defaults']:,}", _num(s["default_rate"]))
    console.print(sets)
    console.print(result["recommendation"]["text"], soft_wrap=True, markup=False)
    if result.get("adopted"):
        a = result["adopted"]
        console.print(f"Adoption recorded in {a['heads_file']} (run {a['run_id']}, head {a['head'][:16]}…); "
                      f"check it with: {a['verify']}", soft_wrap=True, markup=False)


def _num(x) -> str:
    return "—" if x is None or x != x else f"{x:.4f}"
