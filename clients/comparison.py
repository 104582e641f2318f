"""Champion against challenger on the same holdout, and a recommendation for the risk committee.

:func:`compare_models` scores one holdout with outcomes under both packages and reports:

* discrimination — both AUCs and their difference (challenger − champion) with a DeLong
  confidence interval and test (:func:`models.delong.compare_aucs`); KS and Gini of each;
* calibration of each (Hosmer–Lemeshow, bands inside their interval: :mod:`clients.backtesting`);
* decisions at each package's cut-off — approval and bad rates, the swap sets
  (:mod:`models.swap_sets`) and the challenger's bad rate at the champion's approval rate;
* fairness figures of each model side by side (:mod:`models.fairness`: approval rate per
  group, demographic-parity and equal-opportunity differences).

:func:`recommend` turns them into a decision — ``adopt-challenger``, ``review`` or
``keep-champion`` — with its reasons, in sentences:

* the challenger must discriminate *significantly* better: the lower end of the AUC
  difference's confidence interval above 0 (significantly worse → keep the champion; no
  significant difference → keep the champion, a change needs a reason);
* and then raise no flag — calibration failing (Hosmer–Lemeshow p < 0.05) where the champion's
  does not; swap-in borrowers defaulting more than swap-out ones; a demographic-parity or
  equal-opportunity difference larger than the champion's by more than
  :data:`FAIRNESS_TOLERANCE` — or the decision is ``review``: better, but the committee must
  weigh the flags.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from clients.backtesting import calibration, discrimination
from models.backtest import CONFIDENCE, cutoff_figures
from models.delong import compare_aucs
from models.fairness import fairness_metrics, group_counts
from models.package import weights_digest
from models.swap_sets import bad_rate_at_approval_rate, swap_sets

SIGNIFICANCE = 0.05
FAIRNESS_TOLERANCE = 0.05  # a parity / opportunity difference this much larger than the champion's is a flag
DECISIONS = ("adopt-challenger", "review", "keep-champion")


def model_figures(scored, y, confidence: float) -> dict:
    """One model's discrimination, calibration, cut-off and fairness figures on the holdout."""
    pkg = scored.package
    fairness = fairness_metrics(group_counts(scored.table, scored.pd, y, pkg.schema, pkg.cutoff_pd), pkg.schema)
    return {"run_id": pkg.meta.get("run_id"), "weights_sha256": weights_digest(pkg.weights),
            "discrimination": discrimination(scored.pd, y, confidence),
            "calibration": calibration(scored.pd, y, pkg.scale, confidence=confidence),
            "cutoff": cutoff_figures(scored.pd, y, pkg.cutoff_pd).to_dict(), "fairness": fairness,
            "mean_pd": float(scored.pd.mean())}


def _largest(fairness: dict, key: str) -> float | None:
    values = [a[key] for a in fairness.values() if a.get(key) is not None]
    return max(values) if values else None


def fairness_side_by_side(champion: dict, challenger: dict) -> list[dict]:
    """Per protected attribute and group: approval rate under each model; then the two differences."""
    rows = []
    for attr, a in champion["fairness"].items():
        b = challenger["fairness"].get(attr) or {"groups": []}
        groups_b = {g["group"]: g for g in b["groups"]}
        for g in a["groups"]:
            rows.append({"attribute": attr, "group": g["group"], "n": g["n"],
                         "champion_approval_rate": g["approval_rate"],
                         "challenger_approval_rate": (groups_b.get(g["group"]) or {}).get("approval_rate")})
        for key in ("demographic_parity_difference", "equal_opportunity_difference"):
            rows.append({"attribute": attr, "group": key.replace("_", " "), "n": None,
                         "champion_approval_rate": a.get(key), "challenger_approval_rate": b.get(key)})
    return rows


def recommend(result: dict) -> dict:
    """The decision and its reasons (see the module docstring)."""
    auc = result["auc_difference"]
    ch, cl = result["champion"], result["challenger"]
    ci = f"{auc['difference']:+.3f} (95 % CI {auc['low']:+.3f} to {auc['high']:+.3f}, DeLong p = {auc['p_value']:.2g})"
    reasons, flags = [], []
    if auc["high"] < 0:
        decision = "keep-champion"
        reasons.append(f"The challenger ranks borrowers significantly worse: AUC difference {ci}.")
    elif auc["low"] <= 0:
        decision = "keep-champion"
        reasons.append(f"No significant difference in discrimination: AUC difference {ci}; these data do not justify "
                       "a change of model.")
    else:
        decision = "adopt-challenger"
        reasons.append(f"The challenger ranks borrowers significantly better: AUC {cl['discrimination']['auc']:.3f} "
                       f"against {ch['discrimination']['auc']:.3f}, difference {ci}.")
    hl_ch, hl_cl = ch["calibration"]["hosmer_lemeshow"]["p_value"], cl["calibration"]["hosmer_lemeshow"]["p_value"]
    if hl_cl < SIGNIFICANCE <= hl_ch:
        flags.append(f"The challenger's PDs fail calibration (Hosmer–Lemeshow p = {hl_cl:.2g}) where the champion's "
                     f"hold (p = {hl_ch:.2g}): recalibrate it before use.")
    swap_in, swap_out = result["swap_sets"]["swap-in"], result["swap_sets"]["swap-out"]
    if swap_in["n"] and swap_out["n"] and swap_in["default_rate"] > swap_out["default_rate"]:
        flags.append(f"Borrowers the challenger would newly approve default more ({100 * swap_in['default_rate']:.1f} %, "
                     f"{swap_in['n']:,} rows) than those it would newly decline ({100 * swap_out['default_rate']:.1f} %, "
                     f"{swap_out['n']:,} rows).")
    for key, words in (("demographic_parity_difference", "approval-rate gap between groups"),
                       ("equal_opportunity_difference", "gap in good borrowers' approval rates between groups")):
        a, b = _largest(ch["fairness"], key), _largest(cl["fairness"], key)
        if a is not None and b is not None and b > a + FAIRNESS_TOLERANCE:
            flags.append(f"The challenger widens the {words}: {100 * b:.1f} points against {100 * a:.1f}.")
    if decision == "adopt-challenger" and flags:
        decision = "review"
    text = " ".join(reasons + flags)
    verdict = {"adopt-challenger": "Recommendation: adopt the challenger.",
               "review": "Recommendation: the challenger is better at ranking, but the committee should weigh the "
                         "flags above before adopting it.",
               "keep-champion": "Recommendation: keep the champion."}[decision]
    return {"decision": decision, "reasons": reasons, "flags": flags, "text": f"{text} {verdict}"}


def compare_models(champion, challenger, confidence: float = CONFIDENCE) -> dict:
    """Both scored tables (same file, same rows) → the comparison (see the module docstring)."""
    y = champion.outcomes
    ch = model_figures(champion, y, confidence)
    cl = model_figures(challenger, y, confidence)
    auc = asdict(compare_aucs(y, champion.pd, challenger.pd, confidence))
    sets = swap_sets(y, champion.pd < champion.package.cutoff_pd, challenger.pd < challenger.package.cutoff_pd,
                     confidence)
    result = {"rows": champion.rows, "defaults": int(np.sum(y)), "auc_difference": auc,
              "champion": ch, "challenger": cl, "swap_sets": {k: v.to_dict() for k, v in sets.items()},
              "challenger_bad_rate_at_champion_approval_rate": bad_rate_at_approval_rate(
                  challenger.pd, y, ch["cutoff"]["approval_rate"])}
    result["fairness_side_by_side"] = fairness_side_by_side(ch, cl)
    result["recommendation"] = recommend(result)
    return result
