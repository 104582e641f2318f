"""Pooling the nodes' evaluation releases into the round's global metrics.

Each accepted evaluation reply (:func:`server.update_checks.check_evaluation`) carries a node's
class-conditional score histograms, five sums and the fairness group counts of its holdout —
exact in simulation, Gaussian-noised in deployment (:mod:`privacy.dp_release`). Summing them
(:func:`models.metrics.sum_evaluations`) gives the pooled holdout's AUC / KS / Gini to bin
resolution, its Brier score, log loss, mean PD and default rate, and the consortium's fairness
figures (:func:`models.fairness.fairness_metrics`): not an average of local figures.

Figures computed from DP-noised releases (deployment) are clipped to their valid ranges and
carry their noise's standard deviation beside them — ``auc`` and ``auc_sd``, a group's
``approval_rate`` and ``approval_rate_sd`` (:mod:`server.metric_noise`) — in the round record,
``metrics.json``, the ledger, the report and the model card.

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
from server.metric_noise import DRAWS, fairness_sd, metrics_sd, release_noise, sum_variance, with_sd
from server.replies import SortedReplies
from server.run_records import finite_or_none


def pool_evaluations(replies: SortedReplies, name: Callable[[int], str], schema) -> dict:
    """The round-record fields of one evaluation's accepted replies.

    ``institutions`` (each node's own figures, its ``release``, and its sums under ``_sums``),
    ``privacy_after_evaluation`` (ε spent after a noised release), and — when any node released
    — ``global`` (pooled figures), ``_pooled_eval`` (the pooled sums) and ``fairness`` /
    ``fairness_counts``; with noised releases, ``<figure>_sd`` beside each figure and
    ``evaluation_noise`` (who released noised figures, and how the sd was computed).
    """
    parts, fair_parts, per_inst, spent_after, noise = [], [], {}, {}, {}
    for node, msg in replies.accepted.items():
        who = name(node)
        arrays = P.from_array_record(msg.content[P.EVAL])
        sums = EvaluationSums.from_arrays(arrays)
        parts.append(sums)
        fair_parts.append({k[5:]: v for k, v in arrays.items() if k.startswith("fair/")})
        release = P.node_info(msg).get("release", "exact")
        metrics = replies.metrics.get(node, {})
        per_inst[who] = _figures(sums.metrics())
        if release == "noised":
            noise[who] = release_noise(metrics, len(sums.hist_neg), len(fair_parts[-1]))
            per_inst[who] = with_sd(per_inst[who], metrics_sd(sums, [noise[who]]))
        per_inst[who]["release"] = release
        if "epsilon-spent" in metrics:  # a noised release moved the node's lifetime ε
            spent_after[who] = float(metrics["epsilon-spent"])
        per_inst[who]["_sums"] = sums
    out: dict = {"institutions": per_inst}
    if spent_after:
        out["privacy_after_evaluation"] = spent_after
    if parts:
        pooled = sum_evaluations(parts)
        out["global"] = with_sd(_figures(pooled.metrics()), metrics_sd(pooled, list(noise.values())))
        out["_pooled_eval"] = pooled
        counts = {k: sum(fp[k] for fp in fair_parts if k in fp) for k in set().union(*fair_parts)}
        if counts:
            out["fairness"] = fairness_metrics(counts, schema)
            if noise:
                out["fairness"] = with_sd(out["fairness"], fairness_sd(
                    counts, sum_variance(list(noise.values())), lambda c: fairness_metrics(c, schema)))
            out["fairness_counts"] = {k: np.asarray(v).tolist() for k, v in counts.items()}
    if noise:
        g = out.get("global") or {}
        out["evaluation_noise"] = {
            "noised": {who: {"std_per_cell": n.std, "bins": n.bins} for who, n in noise.items()},
            # the noise against the counts: near or above ~0.25 the histograms are drowned and AUC/KS flattened
            "noise_share": g["n_sd"] / g["n"] if g.get("n") and g.get("n_sd") is not None else None,
            "sd": f"'<figure>_sd': standard deviation of the figure under the releases' Gaussian noise "
                  f"(parametric bootstrap, {DRAWS} draws); figures are clipped to their valid ranges"}
    return out


def _figures(metrics: dict) -> dict:
    return {k: finite_or_none(v) for k, v in metrics.items()}


def calibration_record(rnd: int, pooled: EvaluationSums, weights: dict[str, np.ndarray], spec: ModelSpec) -> dict:
    """The final-evaluation record of round ``rnd``: the Platt-recalibrated weights and how they
    were fitted (on the pooled holdout score histograms of that round's evaluation)."""
    cal = fit_platt(pooled.hist_neg, pooled.hist_pos)
    return {"round": rnd, "final": True, "weights": calibrate_weights(weights, spec, cal),
            "calibration": {**cal.to_dict(), "fitted_on": f"pooled holdout score histograms after round {rnd}",
                            **binned_calibration_summary(pooled.hist_neg, pooled.hist_pos, cal)},
            "_platt": cal}
