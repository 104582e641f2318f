"""Backtest of a model package on realised outcomes, and its comparison with the model card.

:func:`backtest_result` puts together, for one scored table with outcomes
(:class:`clients.scored_table.ScoredTable`):

* discrimination — AUC with its DeLong confidence interval (:mod:`models.delong`), Gini, KS,
  Brier score and log loss, defined as on the model card (:class:`models.metrics.EvaluationSums`,
  8,000 logit bins, ties in a bin counted ½);
* calibration — observed vs predicted default rate per score band with binomial confidence
  intervals, and the Hosmer–Lemeshow test (:mod:`models.backtest`). The bands are about equal
  deciles of the backtested PDs (the "deciles of risk" of the test);
* the package's cut-off — approval rate, bad rate among the approved and the declined;
* the development figures the package carries — the final pooled evaluation in ``model.json``
  (the numbers of the model card) and, from its development score histograms, the approval
  rate and bad rate at the cut-off — side by side with the backtest, with findings in words.
"""

from __future__ import annotations

import numpy as np

from models.backtest import CONFIDENCE, calibration_by_band, cutoff_figures, hosmer_lemeshow
from models.delong import auc_interval
from models.metrics import SCORE_BINS, EvaluationSums, score_bin_index
from models.score_bands import equal_mass_bands, mass_below_pd
from models.stability import DEFAULT_GROUPS

SIGNIFICANCE = 0.05
CARD_FIGURES = ("auc", "gini", "ks", "brier", "mean_pd", "default_rate")


def discrimination(pd_values, y, confidence: float = CONFIDENCE, bin_index=None) -> dict:
    """AUC (exact, with DeLong CI), Gini, KS, Brier, log loss — NaN-free JSON figures
    (``bin_index``: the PDs' :func:`models.metrics.score_bin_index`, when already computed)."""
    m = EvaluationSums.from_scores(pd_values, y, bin_index=bin_index).metrics()
    ci = auc_interval(y, pd_values, confidence)
    return {"auc": ci.auc, "auc_se": ci.se, "auc_ci": [ci.low, ci.high], "gini": 2 * ci.auc - 1,
            "gini_ci": [2 * ci.low - 1, 2 * ci.high - 1], "ks": m["ks"], "brier": m["brier"],
            "log_loss": m["log_loss"]}


def calibration(pd_values, y, scale, bands: int = DEFAULT_GROUPS, confidence: float = CONFIDENCE,
                method: str = "exact", bin_index=None) -> dict:
    """Per-band calibration table and the Hosmer–Lemeshow test (``bin_index`` as in :func:`discrimination`)."""
    # once: the bands and every row's band come from it
    bins = score_bin_index(pd_values, SCORE_BINS) if bin_index is None else bin_index
    score_bands = equal_mass_bands(np.bincount(bins, minlength=SCORE_BINS), bands)
    table = calibration_by_band(pd_values, y, score_bands.bin_group[bins], score_bands.labels(scale),
                                confidence, method)
    hl = hosmer_lemeshow(table)
    return {"bands": [b.to_dict() for b in table], "hosmer_lemeshow": hl.to_dict(), "interval": method,
            "confidence": confidence, "bands_within": sum(b.verdict == "within" for b in table),
            "bands_total": sum(b.n > 0 for b in table)}


def development_figures(pkg) -> dict:
    """What the package says of its development population: the card's final pooled evaluation
    (``model.json`` final_metrics) and, from its score histograms, the cut-off figures."""
    card = {k: v for k, v in (pkg.meta.get("final_metrics") or {}).items() if k in CARD_FIGURES and v is not None}
    out = {"source": "model card: the run's final pooled holdout evaluation (model.json final_metrics)", **card}
    ref = pkg.reference
    if ref is not None and ref.has_scores:
        total = max(float(ref.score_counts.sum()), 0.0)
        approved = mass_below_pd(ref.score_counts, pkg.cutoff_pd)
        bad_approved = mass_below_pd(ref.score_pos, pkg.cutoff_pd)
        out["approval_rate"] = approved / total if total > 0 else None
        out["bad_rate_approved"] = bad_approved / approved if approved > 0 else None
    if ref is not None and ref.source.get("dp"):
        out["note"] = "development figures come from DP-noised releases (at bin resolution)"
    return out


def _comparison_rows(result: dict, dev: dict) -> list[dict]:
    d, c, cut = result["discrimination"], result, result["cutoff"]
    now = {"auc": d["auc"], "gini": d["gini"], "ks": d["ks"], "brier": d["brier"], "mean_pd": c["mean_pd"],
           "default_rate": c["default_rate"], "approval_rate": cut["approval_rate"],
           "bad_rate_approved": cut["bad_rate_approved"]}
    rows = []
    for k, v in now.items():
        if dev.get(k) is None or v is None:
            continue
        row = {"figure": k, "development": float(dev[k]), "backtest": float(v), "difference": float(v - dev[k])}
        if k == "auc":
            row["development_inside_ci"] = bool(d["auc_ci"][0] <= dev[k] <= d["auc_ci"][1])
        rows.append(row)
    return rows


def findings(result: dict) -> list[str]:
    """The backtest in sentences a credit committee reads."""
    d, cal, cut = result["discrimination"], result["calibration"], result["cutoff"]
    out = []
    auc_row = next((r for r in result["comparison"] if r["figure"] == "auc"), None)
    ci = f"[{d['auc_ci'][0]:.3f}, {d['auc_ci'][1]:.3f}]"
    if auc_row is None:
        out.append(f"Discrimination: AUC {d['auc']:.3f} {ci} (the package has no development AUC to compare).")
    elif auc_row["development_inside_ci"]:
        out.append(f"Discrimination holds: AUC {d['auc']:.3f} {ci}, consistent with {auc_row['development']:.3f} "
                   "at development.")
    else:
        side = "below" if d["auc"] < auc_row["development"] else "above"
        out.append(f"Discrimination {'has deteriorated' if side == 'below' else 'is better than at development'}: "
                   f"AUC {d['auc']:.3f} {ci}, {side} {auc_row['development']:.3f} at development.")
    hl = cal["hosmer_lemeshow"]
    ratio = result["default_rate"] / result["mean_pd"] if result["mean_pd"] else float("nan")
    level = (f"observed default rate {100 * result['default_rate']:.2f} % against mean PD "
             f"{100 * result['mean_pd']:.2f} % (ratio {ratio:.2f})")
    if hl["p_value"] < SIGNIFICANCE:
        out.append(f"Calibration fails: Hosmer–Lemeshow χ² = {hl['statistic']:.1f} on {hl['dof']} df, p = "
                   f"{hl['p_value']:.2g}; {level}; {cal['bands_within']} of {cal['bands_total']} bands inside their "
                   f"{int(100 * cal['confidence'])} % interval. Recalibrate before relying on the PDs.")
    else:
        out.append(f"Calibration holds: Hosmer–Lemeshow p = {hl['p_value']:.2g}; {level}; {cal['bands_within']} of "
                   f"{cal['bands_total']} bands inside their {int(100 * cal['confidence'])} % interval.")
    bad = cut["bad_rate_approved"]
    out.append(f"At the cut-off PD {cut['cutoff_pd']:g}: {100 * cut['approval_rate']:.1f} % approved"
               + (f", bad rate among them {100 * bad:.2f} %." if bad is not None else "."))
    return out


def backtest_result(scored, bands: int = DEFAULT_GROUPS, confidence: float = CONFIDENCE,
                    method: str = "exact") -> dict:
    """The backtest of one scored table with outcomes (see the module docstring)."""
    pkg, p, y = scored.package, scored.pd, scored.outcomes
    bins = score_bin_index(p, SCORE_BINS)  # one pass: the card's histograms and the calibration bands
    result = {"rows": scored.rows, "defaults": int(y.sum()), "default_rate": float(y.mean()),
              "mean_pd": float(p.mean()), "discrimination": discrimination(p, y, confidence, bins),
              "calibration": calibration(p, y, pkg.scale, bands, confidence, method, bins),
              "cutoff": cutoff_figures(p, y, pkg.cutoff_pd).to_dict()}
    result["development"] = development_figures(pkg)
    result["comparison"] = _comparison_rows(result, result["development"])
    result["findings"] = findings(result)
    return result

