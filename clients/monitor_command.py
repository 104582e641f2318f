"""``fedcredit monitor``: population and characteristic stability of a book against the model's development population."""

from __future__ import annotations

import argparse

from fedcredit.arguments import add_fail_on, add_package_and_table, number

HELP = "drift monitoring: score PSI, CSI per feature, data quality against the development population"
DESCRIPTION = """\
Compare an institution's current applicants (or book) with the population the model was
developed on — on this machine; nothing is sent anywhere.

The file is read, validated and scored exactly as `fedcredit score` does (--mapping for the
institution's own format; the label column may be absent). The development population is what
the model package carries (reference.json): the federated feature statistics the encoder was
fitted from (DP-noised counts under DP) and the pooled score histograms of the exported model's
final evaluation. No borrower-level data of the consortium is needed. With --baseline FILE the
reference is instead a table this institution holds (e.g. the month the model went live),
scored with the same package — also the way to monitor with a package exported before packages
carried a reference.

Figures:
  score PSI     population stability index of the score over ~10 development deciles
  CSI           the same index per model feature (numeric features: ~10 equal-mass groups of the
                development population; ordinal levels merged alike; categories one by one)
  lights        PSI < 0.10 stable; 0.10-0.25 watch; > 0.25 act. status = the most severe light;
                unknown where the reference's DP noise alone gives a PSI of 0.05 or more (its
                "DP noise floor", measured by replaying the noise on the reference): too noisy
                at its size to judge — use --baseline
  data quality  missing cells (imputed by the schema) and numeric values outside the range the
                model's encoder resolves, per feature
  score bands   development vs current share per score band; approval rate at the cut-off

--out DIR writes DIR/monitor.json (everything, per group) and DIR/monitor.html (a
self-contained page with plots); the path is checked before any work. --json prints the
summary as the last line of stdout (undefined figures are null):
  {"ok", "model", "data", "rows", "status", "score_psi", "score_light", "csi": {feature:
   {"psi", "light", "noise_floor"}}, "moved_most", "features_to_act", "features_to_watch",
   "features_too_noisy", "missing_rate",
   "out_of_range_rate", "approval_rate", "reference", "out", "seconds"}

Exit codes: 0 done; 2 a user mistake (missing or invalid file, wrong column, damaged model
package, a package without a reference and no --baseline); 3 with --fail-on, when the status
reaches that light (for scheduled jobs).
"""

JSON = "the summary: status, score PSI, CSI per feature, data quality"  # fedcredit.cli adds --json
LIGHT_STYLE = {"stable": "green", "watch": "yellow", "act": "bold red", "unknown": "dim"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_package_and_table(p, "current applicants or book (CSV or Parquet)",
                          "the institution's column mapping (name or path), for --data and --baseline")
    p.add_argument("--baseline", metavar="FILE",
                   help="compare with this table (held by the institution) instead of the package's development "
                        "population")
    p.add_argument("--groups", type=number(int, minimum=2, maximum=50), default=10,
                   help="groups (score bands, feature groups) of about equal development mass")
    p.add_argument("--out", metavar="DIR", help="write DIR/monitor.json and DIR/monitor.html")
    add_fail_on(p, ("watch", "act"), "the status")


def run(args: argparse.Namespace):
    import time

    from clients.monitoring import assess_drift, headline
    from clients.scored_table import check_command_paths, load_scored_table, load_table, package_pd
    from configs.errors import UserError
    from fedcredit.json_values import finite
    from fedcredit.outcome import Outcome, fail_on_exit_code
    from fedcredit.progress import stage_progress
    from models.package import load_package
    from models.reference import reference_from_table
    from models.stability import LIGHTS

    t0 = time.time()
    check_command_paths([args.model], args.out)
    with stage_progress("monitor") as stage:
        stage("verifying the model package")
        pkg = load_package(args.model)
        if args.baseline:
            stage(f"reading and scoring the baseline {args.baseline}")
            base = load_table(args.baseline, pkg, args.mapping)
            reference = reference_from_table(base.table, pkg.schema, package_pd(pkg, base.table),
                                             source=f"the baseline {args.baseline}")
            reference_name = f"baseline {args.baseline}"
        elif pkg.reference is None:
            raise UserError(
                f"{args.model}: this model package carries no development population (no reference.json; it was "
                f"exported before packages carried one, run {pkg.meta.get('run_id', '?')}). Monitor against a table "
                "your institution holds instead: --baseline FILE (e.g. the applicants of the month the model went "
                "live), or use a package exported by a current fedcredit")
        else:
            reference, reference_name = pkg.reference, f"the development population in {args.model}"
        stage(f"reading, validating and scoring {args.data}")
        scored = load_scored_table(args.model, args.data, args.mapping, package=pkg, feature_counts=True)
        stage("comparing populations")
        result = assess_drift(scored, reference, reference_name, args.groups)
        summary_line = headline(result)
        out_dir = None
        if args.out:
            stage(f"writing {args.out}")
            out_dir = _write_outputs(args.out, result, summary_line, args)
    _print_summary(result, summary_line)
    keys = ("rows", "status", "score_psi", "score_light", "csi", "moved_most", "features_to_act",
            "features_to_watch", "features_too_noisy", "missing_rate", "out_of_range_rate", "approval_rate",
            "reference")
    summary = {"ok": True, "model": args.model, "data": args.data, **{k: result[k] for k in keys},
               "out": str(out_dir) if out_dir else None, "seconds": time.time() - t0}
    return Outcome(finite(summary), fail_on_exit_code(result["status"], args.fail_on, LIGHTS))


def _write_outputs(out, result: dict, summary_line: str, args):
    from pathlib import Path

    from clients.monitor_page import render_monitor_page
    from clients.scored_table import write_result_json
    from fedcredit.atomic_write import write_atomic

    write_result_json(out, "monitor.json", {"model": args.model, "data": args.data, "headline": summary_line,
                                            **result})
    write_atomic(Path(out) / "monitor.html", render_monitor_page(result, summary_line, args.model, args.data))
    return Path(out)


def _print_summary(result: dict, summary_line: str) -> None:
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, highlight=False)
    style = LIGHT_STYLE.get(result["status"], "")
    console.print(f"[{style}]{escape(summary_line)}[/]", soft_wrap=True)
    table = Table("feature", "CSI", "light", "DP noise floor", "missing", "outside range", title=f"{result['rows']:,} rows; "
                  f"approval rate {_pct(result['approval_rate']['current'])} now, "
                  f"{_pct(result['approval_rate']['reference'])} at development")
    for name in sorted(result["csi"], key=lambda k: -result["csi"][k]["psi"]):
        c = result["csi"][name]
        table.add_row(name, f"{c['psi']:.4f}", f"[{LIGHT_STYLE[c['light']]}]{c['light']}[/]", f"{c['noise_floor']:.4f}",
                      _pct(result["missing_rate"].get(name)), _pct(result["out_of_range_rate"].get(name)))
    console.print(table)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"
