"""``fedcredit report``: the HTML report and the model card of a finished run."""

from __future__ import annotations

import argparse

HELP = "write a run's report.html and model card (model_card.md / .json)"
DESCRIPTION = """\
Write one self-contained HTML report of a finished run (RUN_DIR/report.html, or --out FILE):
summary table, training curves, ROC and KS of the global model, calibration, score
distribution per institution, federated vs local-only and centralised AUC, privacy spend vs
budget, fairness by group, participation per round and the model card. Plots are embedded
PNGs; the file needs nothing else to open, offline.

Also (re)writes the model card, RUN_DIR/model_card.md and model_card.json, unless --no-card.
The run's audit ledger (RUN_DIR/ledger.jsonl) is verified on the way: when it does not verify
(or metrics.json names a ledger that is not there) the report and the card open with a warning
and the command says so on stderr (the files are still written).
`fedcredit simulate` does both at the end of every run; use this command for runs started
with `flwr run` or in deployment, or after a simulation's privacy state was updated.

Exit codes: 0 written (also with a ledger warning); 2 a user mistake (no metrics.json in RUN_DIR,
unwritable output).
"""
JSON = "the written paths"  # what --json prints (fedcredit.cli adds the option)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory of a finished run (holds metrics.json)")
    p.add_argument("--out", metavar="FILE", help="where to write the HTML report (default RUN_DIR/report.html)")
    p.add_argument("--no-card", action="store_true", help="do not (re)write model_card.md / model_card.json")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from configs.errors import UserError
    from fedcredit.outcome import Outcome
    from fedcredit.path_checks import check_output_file
    from server.card_checks import ledger_verification
    from server.card_warnings import ledger_warning
    from server.model_card import load_metrics
    from server.report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory; give the run directory (it holds metrics.json)")
    if args.out:  # checked before the report is rendered
        check_output_file(args.out, "--out", (".html", ".htm"), create_parent=True)
    if not args.no_card:
        check_output_file(run_dir / "model_card.md", "RUN_DIR (the model card is written there; --no-card skips it)")
    try:
        report = write_report(run_dir, args.out, write_card=not args.no_card)
    except PermissionError as exc:
        raise UserError(f"{exc.filename}: cannot write ({exc.strerror}); choose another --out") from None
    out = {"report": str(report)}
    warning = ledger_warning(ledger_verification(run_dir, load_metrics(run_dir)))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
        out["ledger_verified"] = False
    if not args.no_card:
        out.update({"model_card_md": str(run_dir.resolve() / "model_card.md"),
                    "model_card_json": str(run_dir.resolve() / "model_card.json")})
    if not args.json:
        for k, v in out.items():
            print(f"{k}: {v}")
    return Outcome(out)
