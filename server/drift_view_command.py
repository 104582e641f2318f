"""``fedcredit drift view``: the operator's consortium view of the members' DP drift releases."""

from __future__ import annotations

import argparse

from fedcredit.arguments import add_fail_on

HELP = "operator: drift and backtest across the consortium from members' DP releases; retrain?"
DESCRIPTION = """\
Aggregate the drift release files members sent (`fedcredit drift release`) for one model
package, and say whether the consortium should retrain.

Each file holds one member's score-band counts — of its current population, or with outcomes
the defaulters, non-defaulters and sum of PDs per band — with Gaussian noise whose std the file
states. Everything here is computed from those noised numbers and the package (post-processing;
no borrower data, no further privacy cost). Every file must be a release for the package given
with --model (same weights, same development score bands); a signed file's signature is checked,
and with --keys (the members' registered node public keys, NAME.pub) every file must be signed
by the key registered for its institution.

Per member and pooled over the members:
  score PSI     against the development population over its deciles, with the noise bound (99th
                percentile of the PSI that an undrifted population of that size shows with that
                noise and sampling) and a 90 % interval of the PSI under the noise. Light as in
                `fedcredit monitor` (stable < 0.10 ≤ watch ≤ 0.25 < act) — or unknown when the
                noise bound reaches 0.10: too noisy to judge
  backtest      (outcome releases) observed default rate against mean PD, per band and in all;
                Hosmer-Lemeshow with the noise in its variance (fails at p < 0.01); AUC at band
                resolution beside the development AUC at the same resolution, ± its noise std
  retrain?      retrain: the pooled PSI is act, or the pooled calibration fails; watch: the pooled
                PSI is watch, or a member is at act or fails calibration; no: every figure that
                can be judged is fine; unknown: none can be judged. Noise alone does not trigger
                it (only judged lights count; calibration is tested with the noise included)

--out DIR writes DIR/drift.json (everything). --json prints the summary as the last line of
stdout (undefined figures are null):
  {"ok", "model", "files", "retrain", "reasons", "pooled": {"psi", "noise_bound", "light", "rows",
   "backtest"}, "members": [{"institution", "period", "kind", "psi", "noise_bound", "light",
   "rows", "calibration", "signed_by"}], "out", "seconds"}

Exit codes: 0 done; 3 with --fail-on, when retrain? reaches that answer (for scheduled jobs); 2 a user mistake (a missing, damaged or foreign file, a bad signature, a
file not signed by its institution's registered key with --keys, two releases of one member
for one period, a damaged package).
"""
JSON = "the consortium's drift: the retrain recommendation, pooled and per-member figures"  # fedcredit.cli adds --json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="the model package the members monitor (RUN/model)")
    p.add_argument("files", nargs="+", metavar="FILE", help="the members' drift release files")
    p.add_argument("--keys", nargs="+", metavar="PUB",
                   help="the members' registered node public keys (NAME.pub); then every file must be signed")
    add_fail_on(p, ("watch", "retrain"), "the answer to retrain?")
    p.add_argument("--out", metavar="DIR", help="write DIR/drift.json")


def run(args: argparse.Namespace):
    import time

    from clients.scored_table import check_command_paths, write_result_json
    from server.consortium_drift import view_release_files

    t0 = time.time()
    check_command_paths([args.model], args.out)
    result = view_release_files(args.model, args.files, args.keys)
    if args.out:
        write_result_json(args.out, "drift.json", {"model": args.model, **result})
    _print(result)
    from fedcredit.json_values import finite
    from fedcredit.outcome import Outcome, fail_on_exit_code

    pooled = result["pooled"]
    return Outcome(finite({
        "ok": True, "model": args.model, "files": len(result["members"]), "retrain": result["recommendation"]["retrain"],
        "reasons": result["recommendation"]["reasons"],
        "pooled": {**_psi_summary(pooled["psi"]), "members": pooled["members"],
                   "backtest": _backtest_summary(pooled["backtest"])},
        "members": [{"institution": m["institution"], "period": m["period"], "kind": m["kind"],
                     "signed_by": m["signed_by"], **_psi_summary(m["psi"]),
                     "calibration": m["backtest"]["calibration"] if m["backtest"] else None}
                    for m in result["members"]],
        "out": args.out, "seconds": time.time() - t0}),
        fail_on_exit_code(result["recommendation"]["retrain"], args.fail_on, ("no", "watch", "retrain")))


def _psi_summary(p: dict) -> dict:
    return {k: p[k] for k in ("psi", "noise_bound", "psi_interval", "light", "rows")}


def _backtest_summary(b: dict | None) -> dict | None:
    if b is None:
        return None
    return {k: b[k] for k in ("rows", "default_rate", "mean_pd", "hosmer_lemeshow", "calibration", "auc_bands",
                              "auc_noise_std", "auc_bands_development")}


def _print(result: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140, highlight=False)
    rec = result["recommendation"]
    console.print(f"retrain? {rec['retrain'].upper()}: " + "; ".join(rec["reasons"]), soft_wrap=True, markup=False)
    table = Table("member", "period", "kind", "rows (noised)", "score PSI", "90 % under noise", "noise bound", "light",
                  "default rate / mean PD", "calibration", "signed", title="drift releases against the development "
                  f"population ({result['bands']['count']} score bands)")
    rows = [(m["institution"], m["period"], m["kind"], m["psi"], m["backtest"], m["signed_by"])
            for m in result["members"]]
    rows.append(("POOLED", "", f"{result['pooled']['members']} files", result["pooled"]["psi"],
                 result["pooled"]["backtest"], None))
    for name, period, kind, p, b, signed in rows:
        lo, hi = p["psi_interval"]
        table.add_row(name, period, kind, f"{p['rows']:,.0f}", f"{p['psi']:.4f}", f"{lo:.4f} – {hi:.4f}",
                      f"{p['noise_bound']:.4f}", p["light"],
                      f"{_pct(b['default_rate'])} / {_pct(b['mean_pd'])}" if b else "—",
                      b["calibration"] if b else "—", "yes" if signed else "—")
    console.print(table)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"
