"""Recalibrating the model's PD from federated score histograms (Platt scaling).

DP-SGD's per-example clipping shrinks the pull of the rare, high-loss defaulters, so a
privately trained network ranks well but tends to under-predict the PD. A PD is used as a
number (cut-offs, pricing, provisions), so before export the server refits

    logit(PD') = a · logit(PD) + c

by maximum likelihood on the pooled class-conditional score histograms of the final
evaluation (bin centres as the scores, counts as weights) — post-processing of numbers the
nodes already released, so it costs no privacy — and folds ``a`` and ``c`` into the last
linear layer: ``W' = a·W``, ``b' = a·b + c``. Ranking (AUC, KS, Gini) is unchanged for a > 0.

:func:`calibration_bands` measures calibration on the same histograms: mean PD against the
observed default rate in bands of about equal population (the report's calibration section).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from models.metrics import LOGIT_LIMIT, score_bin_centres


@dataclass(frozen=True)
class Calibration:
    slope: float = 1.0
    intercept: float = 0.0

    def apply(self, pd_values) -> np.ndarray:
        p = np.clip(np.asarray(pd_values, dtype=float), 1e-12, 1 - 1e-12)
        z = self.slope * (np.log(p) - np.log1p(-p)) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict:
        return asdict(self)


def bin_logits(bins: int) -> np.ndarray:
    """Logit at the centre of each of ``bins`` score bins (uniform in logit on ±LOGIT_LIMIT)."""
    return -LOGIT_LIMIT + (np.arange(bins) + 0.5) * (2 * LOGIT_LIMIT / bins)


def fit_platt(hist_neg: np.ndarray, hist_pos: np.ndarray) -> Calibration:
    """Weighted logistic regression of the label on the bin logit (scikit-learn, L-BFGS).

    Each non-empty bin contributes a non-default row weighted by its negative count and a
    default row weighted by its positive count; negative (noised) counts count as zero.
    Returns the identity when a class is missing or the fit does not give a positive slope.
    """
    from sklearn.linear_model import LogisticRegression

    neg = np.clip(np.asarray(hist_neg, dtype=float), 0, None)
    pos = np.clip(np.asarray(hist_pos, dtype=float), 0, None)
    if neg.sum() <= 0 or pos.sum() <= 0:
        return Calibration()
    z = bin_logits(len(neg))
    keep = (neg + pos) > 0
    z, neg, pos = z[keep], neg[keep], pos[keep]
    x = np.concatenate([z, z])[:, None]
    y = np.concatenate([np.zeros(len(z)), np.ones(len(z))])
    w = np.concatenate([neg, pos])
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(x[w > 0], y[w > 0], sample_weight=w[w > 0])
    slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope <= 0:
        return Calibration()
    return Calibration(slope=slope, intercept=intercept)


def calibrate_weights(weights: dict[str, np.ndarray], spec, cal: Calibration) -> dict[str, np.ndarray]:
    """The same network with ``cal`` folded into its last linear layer."""
    from models.network import build_model, get_weights, set_weights

    model = build_model(spec)
    set_weights(model, weights)
    last = model.linear_layers()[-1]
    import torch

    with torch.no_grad():
        last.weight.mul_(cal.slope)
        last.bias.mul_(cal.slope).add_(cal.intercept)
    return get_weights(model)


def binned_calibration_summary(hist_neg: np.ndarray, hist_pos: np.ndarray, cal: Calibration) -> dict:
    """Mean PD, Brier and log loss at bin resolution, before and after ``cal`` (for reports)."""
    neg = np.clip(np.asarray(hist_neg, dtype=float), 0, None)
    pos = np.clip(np.asarray(hist_pos, dtype=float), 0, None)
    n = neg.sum() + pos.sum()
    if n <= 0:
        return {}
    p0 = 1.0 / (1.0 + np.exp(-bin_logits(len(neg))))
    out = {"default_rate": float(pos.sum() / n)}
    for name, p in (("before", p0), ("after", cal.apply(p0))):
        pc = np.clip(p, 1e-12, 1 - 1e-12)
        out[name] = {
            "mean_pd": float(np.sum((neg + pos) * p) / n),
            "brier": float(np.sum(pos * (1 - p) ** 2 + neg * p ** 2) / n),
            "log_loss": float(-np.sum(pos * np.log(pc) + neg * np.log1p(-pc)) / n),
        }
    return out


#: score bands of the report's calibration plot and table
CALIBRATION_BANDS = 10


def calibration_bands(hist_neg, hist_pos, bands: int = CALIBRATION_BANDS) -> list[dict]:
    """Score bands of about equal population (by PD), each with n, PD range, mean PD and observed
    default rate — how far the PD is from a probability, band by band.

    Bins (in increasing PD) are assigned to band ``floor(bands · rows before the bin / total)``;
    the PD of a bin is its centre (:func:`models.metrics.score_bin_centres`). Negative (noised)
    counts count as 0. Bands that get no rows are left out; the others are numbered from 1.
    """
    neg = np.clip(np.asarray(hist_neg, dtype=float), 0, None)
    pos = np.clip(np.asarray(hist_pos, dtype=float), 0, None)
    n = neg + pos
    total = n.sum()
    if total <= 0:
        return []
    centres = score_bin_centres(len(n))
    before = np.concatenate([[0.0], np.cumsum(n)[:-1]])
    band = np.minimum((bands * before / total).astype(int), bands - 1)
    out = []
    for b in range(bands):
        sel = (band == b) & (n > 0)
        nb = n[sel].sum()
        if nb <= 0:
            continue
        out.append({"band": len(out) + 1, "n": float(nb), "pd_low": float(centres[sel].min()),
                    "pd_high": float(centres[sel].max()),
                    "mean_pd": float((n[sel] * centres[sel]).sum() / nb),
                    "observed": float(pos[sel].sum() / nb)})
    return out
