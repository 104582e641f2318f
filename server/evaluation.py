"""Pooling the nodes' evaluation releases into the round's global metrics.

Each accepted evaluation reply (:func:`server.update_checks.check_evaluation`) carries a node's
class-conditional score histograms, five sums and the fairness group counts of its holdout —
exact in simulation, Gaussian-noised in deployment (:mod:`privacy.dp_release`). Summing them
(:func:`models.metrics.sum_evaluations`) gives the pooled holdout's AUC / KS / Gini to bin
resolution, its Brier score, log loss, mean PD and default rate, and the consortium's fairness
figures (:func:`models.fairness.fairness_metrics`): not an average of local figures.

After the last round the server recalibrates the model (:func:`calibration_record`): a Platt
fit on the pooled histograms, whose calibrated network is evaluated once more, so the final
figures describe exactly the exported model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fedcredit import protocol as P
from models.calibration import binned_calibration_summary, calibrate_weights, fit_platt
from models.fairness import fairness_metrics
from models.metrics import EvaluationSums, sum_evaluations
from models.network import ModelSpec
from server.replies import SortedReplies
from server.run_records import finite_or_none


def pool_evaluations(replies: SortedReplies, name: Callable[[int], str], schema) -> dict:
    """The round-record fields of one evaluation's accepted replies.

    ``institutions`` (each node's own figures, its ``release``, and its sums under ``_sums``),
    ``privacy_after_evaluation`` (ε spent after a noised release), and — when any node released
    — ``global`` (pooled figures), ``_pooled_eval`` (the pooled sums) and ``fairness`` /
    ``fairness_counts``.
    """
    parts, fair_parts, per_inst, spent_after = [], [], {}, {}
    for node, msg in replies.accepted.items():
        who = name(node)
        arrays = P.from_array_record(msg.content[P.EVAL])
        sums = EvaluationSums.from_arrays(arrays)
        parts.append(sums)
        fair_parts.append({k[5:]: v for k, v in arrays.items() if k.startswith("fair/")})
        per_inst[who] = {k: finite_or_none(v) for k, v in sums.metrics().items()}
        per_inst[who]["release"] = P.node_info(msg).get("release", "exact")
        metrics = replies.metrics.get(node, {})
        if "epsilon-spent" in metrics:  # a noised release moved the node's lifetime ε
            spent_after[who] = float(metrics["epsilon-spent"])
        per_inst[who]["_sums"] = sums
    out: dict = {"institutions": per_inst}
    if spent_after:
        out["privacy_after_evaluation"] = spent_after
    if parts:
        pooled = sum_evaluations(parts)
        out["global"] = {k: finite_or_none(v) for k, v in pooled.metrics().items()}
        out["_pooled_eval"] = pooled
        counts = {k: sum(fp[k] for fp in fair_parts if k in fp) for k in set().union(*fair_parts)}
        if counts:
            out["fairness"] = fairness_metrics(counts, schema)
            out["fairness_counts"] = {k: np.asarray(v).tolist() for k, v in counts.items()}
    return out


def calibration_record(rnd: int, pooled: EvaluationSums, weights: dict[str, np.ndarray], spec: ModelSpec) -> dict:
    """The final-evaluation record of round ``rnd``: the Platt-recalibrated weights and how they
    were fitted (on the pooled holdout score histograms of that round's evaluation)."""
    cal = fit_platt(pooled.hist_neg, pooled.hist_pos)
    return {"round": rnd, "final": True, "weights": calibrate_weights(weights, spec, cal),
            "calibration": {**cal.to_dict(), "fitted_on": f"pooled holdout score histograms after round {rnd}",
                            **binned_calibration_summary(pooled.hist_neg, pooled.hist_pos, cal)},
            "_platt": cal}
