"""How much the nodes' evaluation noise moves the figures the server computes from it.

In deployment each node releases its holdout evaluation through the Gaussian mechanism
(:func:`privacy.dp_release.release_evaluation`): every cell of its two score histograms (B_i
bins each), Σ PD, Σ Brier and every fairness count gets independent N(0, s_i²) noise,
s_i = σ_i · Δ_i (σ_i the node's noise multiplier, reported in its reply as ``noise-multiplier``;
Δ_i = :func:`privacy.dp_release.evaluation_sensitivity` of the protected attributes it
released). With a few hundred holdout rows that noise is as large as the counts — a pooled n
larger than the real holdouts, a negative default rate — so every figure computed from noised
releases is shown with its noise's standard deviation, and clipped to its valid range
(:meth:`models.metrics.EvaluationSums.metrics`).

The standard deviation is a parametric bootstrap: the pooled release stands for the truth (its
histograms with negative cells set to zero, as the AUC/KS computation reads them; its row and
default counts and sums as released, since clipping would inflate them); :data:`DRAWS` fresh
noise vectors with the variances above are added to it and each draw goes through the very
same computation (histogram AUC/KS, clipped rates, fairness rates). What it cannot show is the
bias noise this large causes — drowned histograms flatten AUC and KS toward uninformative
values — so the pooled figures also say how large the noise is against the counts
(``noise_share``: the sd of the pooled row count over that count). Per pooled cell (B bins, each merging B_i/B of node i's cells) the noise
variance is Σ_i s_i² · B_i / B over the noised nodes; Σ PD and Σ Brier get Σ_i s_i²; the
log-loss sum, estimated from the noised histograms with each bin's centre PD, moves with the
histogram noise. An exact release (simulation) adds nothing. The bootstrap is post-processing
of released numbers: it costs no privacy, and its seed is fixed so a run's figures reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from models.metrics import EvaluationSums, score_bin_centres

#: bootstrap draws per figure (the sd's own relative error is about 1/√(2·DRAWS) ≈ 5 %)
DRAWS = 200
#: the key beside a figure that holds its noise's standard deviation (``auc`` → ``auc_sd``)
SD_SUFFIX = "_sd"


@dataclass(frozen=True)
class ReleaseNoise:
    """The noise of one node's evaluation release: std ``std`` on each of its ``bins``-bin
    histogram cells, its two sums and each of its fairness counts."""

    std: float
    bins: int


def release_noise(reply_metrics: dict, bins: int, n_attributes: int) -> ReleaseNoise:
    """The noise of a ``noised`` release with ``bins`` score bins and ``n_attributes`` fairness
    matrices: σ from the reply's ``noise-multiplier`` (else the mechanism's default σ)."""
    from privacy.dp_release import EVALUATION_NOISE_MULTIPLIER, evaluation_sensitivity

    sigma = reply_metrics.get("noise-multiplier")
    sigma = float(sigma) if isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma > 0 \
        else EVALUATION_NOISE_MULTIPLIER
    return ReleaseNoise(std=sigma * evaluation_sensitivity(n_attributes), bins=int(bins))


def cell_variance(noise: list[ReleaseNoise], bins: int) -> float:
    """Noise variance of one cell of a pooled ``bins``-bin histogram: Σ s_i² · B_i / B."""
    return float(sum(n.std ** 2 * n.bins / bins for n in noise))


def sum_variance(noise: list[ReleaseNoise]) -> float:
    """Noise variance of a pooled sum (Σ PD, Σ Brier, one fairness count): Σ s_i²."""
    return float(sum(n.std ** 2 for n in noise))


def metrics_sd(pooled: EvaluationSums, noise: list[ReleaseNoise], seed: int = 0) -> dict[str, float]:
    """Standard deviation of each of ``pooled.metrics()`` under the noise (empty when none)."""
    if not noise:
        return {}
    bins = len(pooled.hist_neg)
    cell_sd, sum_sd = np.sqrt(cell_variance(noise, bins)), np.sqrt(sum_variance(noise))
    neg, pos = np.clip(pooled.hist_neg, 0, None), np.clip(pooled.hist_pos, 0, None)
    centre = np.clip(score_bin_centres(bins), 1e-12, 1 - 1e-12)
    rng = np.random.default_rng(seed)
    d_neg, d_pos = rng.normal(0.0, cell_sd, (DRAWS, bins)), rng.normal(0.0, cell_sd, (DRAWS, bins))
    draws = EvaluationSums(  # one batch: every figure an array over the draws
        hist_neg=neg + d_neg, hist_pos=pos + d_pos, n=pooled.n + d_neg.sum(axis=1) + d_pos.sum(axis=1),
        positives=pooled.positives + d_pos.sum(axis=1), sum_pd=pooled.sum_pd + rng.normal(0.0, sum_sd, DRAWS),
        brier_sum=pooled.brier_sum + rng.normal(0.0, sum_sd, DRAWS),
        logloss_sum=pooled.logloss_sum + d_pos @ -np.log(centre) + d_neg @ -np.log1p(-centre))
    out = {}
    for key, values in draws.metrics().items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if len(values) > 1:
            out[key] = float(np.std(values, ddof=1))
    return out


def fairness_sd(counts: dict[str, np.ndarray], count_variance: float, figures: Callable[[dict], dict],
                seed: int = 0) -> dict:
    """Standard deviations of ``figures(counts)`` (nested dicts/lists of numbers, as
    :func:`models.fairness.fairness_metrics` returns) when every count carries noise of
    ``count_variance``; the same shape, with each number replaced by its sd (None where a draw
    left it undefined)."""
    rng = np.random.default_rng(seed)
    base = {k: np.clip(np.asarray(v, dtype=float), 0, None) for k, v in counts.items()}
    sd = np.sqrt(count_variance)
    draws = [figures({k: v + rng.normal(0.0, sd, v.shape) for k, v in base.items()}) for _ in range(DRAWS)]
    return _nested_sd(draws)


def _nested_sd(draws: list):
    first = draws[0]
    if isinstance(first, dict):
        return {k: _nested_sd([d.get(k) if isinstance(d, dict) else None for d in draws]) for k in first}
    if isinstance(first, list):
        return [_nested_sd([d[i] if isinstance(d, list) and i < len(d) else None for d in draws])
                for i in range(len(first))]
    if isinstance(first, (int, float)) or first is None:
        values = np.array([v for v in draws if isinstance(v, (int, float)) and not isinstance(v, bool)], dtype=float)
        values = values[np.isfinite(values)]
        return float(np.std(values, ddof=1)) if len(values) > 1 else None
    return None  # labels and other text


def with_sd(figures: dict, sd: dict) -> dict:
    """``figures`` with ``<name>_sd`` beside every number that has a standard deviation in ``sd``
    (the same shape as ``figures``; nested dicts and lists of dicts are followed)."""
    out = {}
    for k, v in figures.items():
        s = sd.get(k) if isinstance(sd, dict) else None
        if isinstance(v, dict):
            out[k] = with_sd(v, s if isinstance(s, dict) else {})
        elif isinstance(v, list):
            out[k] = [with_sd(x, s[i] if isinstance(s, list) and i < len(s) and isinstance(s[i], dict) else {})
                      if isinstance(x, dict) else x for i, x in enumerate(v)]
        else:
            out[k] = v
            if isinstance(s, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k + SD_SUFFIX] = s
    return out
