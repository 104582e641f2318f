"""Credit-scoring metrics that can be computed exactly from federated sums.

A node never sends scores. It sends, for its holdout,

* two class-conditional score histograms (defaulters / non-defaulters) over ``SCORE_BINS``
  bins (8,000) uniform in the *logit* of the PD on ``[-8, 8]`` (PDs are
  clipped into that range). Logit bins keep 0.002-logit resolution everywhere (no bin holds more than ~0.1 % of either class for realistic score spreads, which bounds the KS error), so even a
  prime portfolio whose PDs sit in [0.01, 0.1] is resolved finely;
* sums for calibration: number of rows, defaults, Σ PD, Σ (PD − y)², Σ log-loss.

Summing these over nodes gives the pooled quantities, so the global AUC, KS and Gini are the
AUC/KS/Gini of the pooled holdouts up to bin resolution (ties inside a bin count ½, as
scikit-learn counts tied scores) — not an average of local AUCs. Brier score and log loss are
exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCORE_BINS = 8000
LOGIT_LIMIT = 8.0
_EPS = 1e-12


def score_bin_index(pd_values: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """Bin of each PD: uniform bins in logit(PD) over [-LOGIT_LIMIT, LOGIT_LIMIT]."""
    p = np.clip(np.asarray(pd_values, dtype=float), _EPS, 1 - _EPS)
    logit = np.log(p) - np.log1p(-p)
    pos = (np.clip(logit, -LOGIT_LIMIT, LOGIT_LIMIT) + LOGIT_LIMIT) / (2 * LOGIT_LIMIT)
    return np.minimum((pos * bins).astype(np.int64), bins - 1)


def score_bin_centres(bins: int = SCORE_BINS) -> np.ndarray:
    """PD at the centre (in logit) of each score bin."""
    logit = -LOGIT_LIMIT + (np.arange(bins) + 0.5) * (2 * LOGIT_LIMIT / bins)
    return 1.0 / (1.0 + np.exp(-logit))


@dataclass
class EvaluationSums:
    """What a node releases about its holdout; sums of these are the pooled figures."""

    hist_neg: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS))
    hist_pos: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS))
    n: float = 0.0
    positives: float = 0.0
    sum_pd: float = 0.0
    brier_sum: float = 0.0
    logloss_sum: float = 0.0

    @classmethod
    def from_scores(cls, pd_values: np.ndarray, y: np.ndarray, bins: int = SCORE_BINS,
                    bin_index: np.ndarray | None = None) -> "EvaluationSums":
        """``bin_index``: ``score_bin_index(pd_values, bins)`` when the caller has it already."""
        p = np.asarray(pd_values, dtype=float)
        y = np.asarray(y, dtype=float)
        idx = score_bin_index(p, bins) if bin_index is None else bin_index
        pc = np.clip(p, _EPS, 1 - _EPS)
        return cls(
            hist_neg=np.bincount(idx[y == 0], minlength=bins).astype(float),
            hist_pos=np.bincount(idx[y == 1], minlength=bins).astype(float),
            n=float(len(p)),
            positives=float(y.sum()),
            sum_pd=float(p.sum()),
            brier_sum=float(np.sum((p - y) ** 2)),
            logloss_sum=float(-np.sum(y * np.log(pc) + (1 - y) * np.log1p(-pc))),
        )

    def __add__(self, other: "EvaluationSums") -> "EvaluationSums":
        return EvaluationSums(self.hist_neg + other.hist_neg, self.hist_pos + other.hist_pos,
                              self.n + other.n, self.positives + other.positives,
                              self.sum_pd + other.sum_pd, self.brier_sum + other.brier_sum,
                              self.logloss_sum + other.logloss_sum)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat form for transport: two histograms and one vector of the five sums."""
        return {"hist-neg": self.hist_neg, "hist-pos": self.hist_pos,
                "sums": np.array([self.n, self.positives, self.sum_pd, self.brier_sum, self.logloss_sum])}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "EvaluationSums":
        n, pos, sum_pd, brier, ll = (float(v) for v in np.asarray(a["sums"], dtype=float))
        return cls(np.asarray(a["hist-neg"], dtype=float), np.asarray(a["hist-pos"], dtype=float),
                   n, pos, sum_pd, brier, ll)

    def metrics(self) -> dict[str, float]:
        """AUC, KS, Gini from the histograms; Brier, log loss, mean PD, default rate from sums.

        Every figure lies in its valid range — AUC, KS, Brier, mean PD and default rate in
        [0, 1], Gini in [−1, 1], log loss and n ≥ 0 — even from DP-noised sums, whose noise can
        push a ratio outside it (a negative default rate from a noised count of defaults); the
        rates are NaN when the (noised) n is not positive. Exact sums are always in range.

        Batched: with histograms of shape (draws, bins) and sums of shape (draws,) every figure
        is an array over the draws (:mod:`server.metric_noise`).
        """
        n = np.asarray(self.n, dtype=float)
        auc = auc_from_histograms(self.hist_neg, self.hist_pos)

        def per_row(total, high: float = 1.0):
            with np.errstate(divide="ignore", invalid="ignore"):
                return _scalar(np.where(n > 0, np.clip(np.asarray(total, dtype=float) / n, 0.0, high), np.nan))

        return {
            "auc": auc,
            "gini": 2 * auc - 1,
            "ks": ks_from_histograms(self.hist_neg, self.hist_pos),
            "brier": per_row(self.brier_sum),
            "log_loss": per_row(self.logloss_sum, np.inf),
            "mean_pd": per_row(self.sum_pd),
            "default_rate": per_row(self.positives),
            "n": _scalar(np.maximum(n, 0.0)),
        }


def _clean(h: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(h, dtype=float), 0, None)


def _scalar(x):
    """A 0-d result as a float; a batch (one value per draw) as it is."""
    return float(x) if np.ndim(x) == 0 else x


def auc_from_histograms(hist_neg: np.ndarray, hist_pos: np.ndarray) -> float:
    """P(score of a defaulter > score of a non-defaulter), ties within a bin counted ½.

    AUC = Σ_b pos_b · (N_{<b} + ½ neg_b) / (P · N), bins in increasing PD order. NaN when a
    class is absent. Negative (noised) counts are treated as zero. Histograms of shape
    (draws, bins) give one AUC per draw.
    """
    neg, pos = _clean(hist_neg), _clean(hist_pos)
    n_neg, n_pos = neg.sum(axis=-1), pos.sum(axis=-1)
    neg_below = np.cumsum(neg, axis=-1) - neg
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.sum(pos * (neg_below + 0.5 * neg), axis=-1) / (n_pos * n_neg)
    return _scalar(np.where((n_neg > 0) & (n_pos > 0), auc, np.nan))


def ks_from_histograms(hist_neg: np.ndarray, hist_pos: np.ndarray) -> float:
    """Kolmogorov–Smirnov statistic: max over cut-offs of |CDF_neg − CDF_pos| (one per draw for
    histograms of shape (draws, bins))."""
    neg, pos = _clean(hist_neg), _clean(hist_pos)
    n_neg, n_pos = neg.sum(axis=-1, keepdims=True), pos.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ks = np.max(np.abs(np.cumsum(neg, axis=-1) / n_neg - np.cumsum(pos, axis=-1) / n_pos), axis=-1)
    return _scalar(np.where((n_neg[..., 0] > 0) & (n_pos[..., 0] > 0), ks, np.nan))


def roc_from_histograms(hist_neg: np.ndarray, hist_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (FPR, TPR) for cut-offs at every bin edge, from the highest PD down."""
    neg, pos = _clean(hist_neg)[::-1], _clean(hist_pos)[::-1]
    fpr = np.concatenate([[0.0], np.cumsum(neg) / max(neg.sum(), _EPS)])
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), _EPS)])
    return fpr, tpr


def auc_score(y: np.ndarray, pd_values: np.ndarray) -> float:
    """AUC of one local set of scores (scikit-learn), NaN when a class is missing."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, pd_values))


def rebin(hist: np.ndarray, bins: int) -> np.ndarray:
    """Merge consecutive bins of a score histogram down to ``bins`` bins (must divide its length).

    Nodes that noise their evaluation release send coarser histograms; the server brings every
    histogram to the coarsest resolution before summing.
    """
    h = np.asarray(hist, dtype=float)
    if len(h) == bins:
        return h
    if len(h) % bins:
        raise ValueError(f"cannot merge {len(h)} score bins into {bins}")
    return h.reshape(bins, -1).sum(axis=1)


def sum_evaluations(parts: list[EvaluationSums]) -> EvaluationSums:
    """Pool several nodes' releases, bringing histograms to the coarsest common resolution."""
    if not parts:
        raise ValueError("nothing to pool")
    bins = min(len(p.hist_neg) for p in parts)
    total = EvaluationSums(hist_neg=np.zeros(bins), hist_pos=np.zeros(bins))
    for p in parts:
        total = total + EvaluationSums(rebin(p.hist_neg, bins), rebin(p.hist_pos, bins), p.n, p.positives,
                                       p.sum_pd, p.brier_sum, p.logloss_sum)
    return total
