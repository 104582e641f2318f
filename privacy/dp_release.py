"""Gaussian-mechanism releases besides training: row counts, feature statistics, holdout evaluation.

Each is a one-shot Gaussian mechanism over one side of the table, so each is a
:class:`privacy.events.PrivacyEvent` with ``q = 1, steps = 1`` and the noise multiplier σ
(noise std / L2 sensitivity); the node records them in the same ledger as training, and
:func:`privacy.planning.plan_noise` reserves budget for the planned ones (``extra_events``).

Defaults (node side; see docs/privacy.md)
-----------------------------------------
* :data:`COUNT_NOISE_MULTIPLIER` = 20: the number of training rows and the number of holdout
  rows, each + N(0, 20²), released once per table version (:func:`release_counts`). Under
  add/remove adjacency the row count is exactly what one borrower changes, so the node never
  releases it exactly: the sample rate, the steps per epoch, DP-SGD's expected batch size,
  ``num-examples``, the default δ and the evaluation's resolution all derive from the noisy
  counts. Cost: RDP α/800 per side — ε ≈ 0.01 added to a typical plan.
* :data:`STATISTICS_NOISE_MULTIPLIER` = 10. Alone: ε ≈ 0.38 at δ = 1e-5 (RDP). Composed with a
  typical training plan (ε = 3 at δ = 1e-5, 10 rounds of one epoch, q = 256/16,000) it adds
  ≈ 0.03 to the lifetime ε, because RDP composes the two mechanisms' Rényi divergences rather
  than their ε. Noise std per count: 10·√F (F = 21 features in consumer-credit-v1 → ≈ 46 per
  histogram cell), which moves the encoder's quantile knots of a 16,000-row institution by
  about a percentile.
* :data:`EVALUATION_NOISE_MULTIPLIER` = 20 (the most noise; a run's plan may lower it, see
  :func:`privacy.planning.plan_evaluation_noise`) with up to :data:`EVALUATION_BINS` = 20 score
  bins (fewer for a small holdout, :func:`evaluation_bins`), one
  release per evaluation round with the fairness group counts of the schema's two protected
  attributes: sensitivity √11, per-cell noise std 20·√11 ≈ 66. Evaluation reads only the
  holdout, which is disjoint from the training rows, so its events compose in parallel with
  training (:mod:`privacy.composition`): they spend the holdout side's
  budget, not the training side's. Five evaluations (``evaluate-every = 5`` over 20 rounds,
  plus the final one) cost ε ≈ 0.42 at δ = 1e-5 on the holdout side; twenty-one ≈ 0.92. The AUC from noised
  histograms is for following training, not for certifying a model; certify on an exact
  evaluation in simulation or on a holdout the operator holds.
* :data:`DRIFT_NOISE_MULTIPLIER` = 20: a member's drift release to the operator
  (:func:`release_drift`, ``fedcredit drift release``) — the score-band counts of a monitored
  population, and for a backtest the per-band counts of defaulters and non-defaulters and the
  per-band sum of PDs: sensitivity 1 (population) or √2 (outcomes), noise std 20 or ≈ 28 per
  cell. One release alone: ε ≈ 0.18 at δ = 1e-5; composed with a typical training plan it adds
  ≈ 0.008, twelve of them (a year of monthly releases) ≈ 0.09, sixty ≈ 0.44.
"""

from __future__ import annotations

import math

import numpy as np

from models.metrics import EvaluationSums, rebin, score_bin_centres
from privacy.events import PrivacyEvent

from privacy.noise_defaults import (  # noqa: F401 - the values live there (command help reads them)
    COUNT_NOISE_MULTIPLIER,
    DRIFT_NOISE_MULTIPLIER,
    EVALUATION_BIN_CHOICES,
    EVALUATION_BINS,
    EVALUATION_NOISE_MULTIPLIER,
    STATISTICS_NOISE_MULTIPLIER,
)

#: a noised histogram gets at most one bin per this many noise standard deviations of holdout rows
ROWS_PER_BIN_IN_NOISE_STD = 2.0


def release_counts(n_train: int, n_holdout: int, noise_multiplier: float, rng: np.random.Generator
                   ) -> tuple[dict[str, float], list[PrivacyEvent]]:
    """The Gaussian mechanism on the two row counts: ``max(1, round(n + N(0, σ²)))`` each.

    Adding or removing one borrower changes one of the two counts by one (sensitivity 1 on
    that side), so each is one event on its side: ``("count", σ, q=1, steps=1)``. Rounding
    and the floor at 1 are post-processing.
    """
    if not noise_multiplier > 0:
        raise ValueError("noise_multiplier must be positive")
    noisy = {side: float(max(1.0, round(n + rng.normal(0.0, noise_multiplier))))
             for side, n in (("train", n_train), ("holdout", n_holdout))}
    return noisy, count_events(noise_multiplier)


def count_events(noise_multiplier: float = COUNT_NOISE_MULTIPLIER, split: str = "", data: str = "") -> list[PrivacyEvent]:
    """The two events of a row-count release (:func:`release_counts`), one per side."""
    return [PrivacyEvent("count", float(noise_multiplier), 1.0, 1, rows=side, split=split, data=data,
                         detail=f"number of {side} rows, sensitivity 1") for side in ("train", "holdout")]


def evaluation_bins(n_holdout: float, noise_multiplier: float, n_attributes: int) -> int:
    """Score bins of a noised evaluation for a holdout of (noisy) size ``n_holdout``.

    The most of :data:`EVALUATION_BIN_CHOICES` that leaves every bin room for
    :data:`ROWS_PER_BIN_IN_NOISE_STD` noise standard deviations of rows on average — a
    300-row holdout gets 5 bins instead of 20 that the noise would drown. A function of public
    figures only (the released count, σ, the schema).
    """
    std = noise_multiplier * evaluation_sensitivity(n_attributes)
    fits = [b for b in EVALUATION_BIN_CHOICES if n_holdout / b >= ROWS_PER_BIN_IN_NOISE_STD * std]
    return max(fits) if fits else min(EVALUATION_BIN_CHOICES)


def gaussian_noised(arrays: dict[str, np.ndarray], std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every number of every array + N(0, std²), as float64: the Gaussian mechanism once the
    caller has set ``std`` = σ · L2 sensitivity of the whole released vector."""
    if not std > 0:
        raise ValueError("the noise std must be positive")
    return {k: np.asarray(v, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(v)) for k, v in arrays.items()}


def statistics_sensitivity(stats: dict[str, np.ndarray]) -> float:
    """L2 sensitivity of the statistics query: ``sqrt(F)``.

    Each record adds exactly 1 to exactly one cell of each of the F features' count vectors
    (:func:`models.encoder.feature_statistics`), so adding or removing one record changes the
    concatenated vector by F unit entries: L2 norm √F.
    """
    if not stats:
        raise ValueError("no statistics")
    return math.sqrt(len(stats))


def release_statistics(stats: dict[str, np.ndarray], noise_multiplier: float,
                       rng: np.random.Generator) -> tuple[dict[str, np.ndarray], PrivacyEvent]:
    """Gaussian mechanism on the count vectors: every cell + N(0, (σ·√F)²).

    Returns the noised vectors (float64; may be negative or fractional — the encoder treats
    negative counts as zero) and the event ``("statistics", σ, q=1, steps=1)``.
    """
    noisy = gaussian_noised(stats, noise_multiplier * statistics_sensitivity(stats), rng)
    event = PrivacyEvent("statistics", float(noise_multiplier), 1.0, 1,
                         detail=f"{len(stats)} features, {sum(np.size(v) for v in stats.values())} counts, "
                                f"sensitivity sqrt({len(stats)})")
    return noisy, event


def evaluation_sensitivity(n_attributes: int) -> float:
    """L2 sensitivity of one evaluation release with ``n_attributes`` protected attributes.

    One record adds 1 to exactly one cell of one score histogram, at most 1 to Σ PD (a PD is in
    [0, 1]) and to Σ (PD − y)², and — per protected attribute — at most 1 to each of its
    group's four fairness counts (:mod:`models.fairness`): ``sqrt(3 + 4·A)``.
    """
    return math.sqrt(3.0 + 4.0 * n_attributes)


def release_evaluation(sums: EvaluationSums, noise_multiplier: float, rng: np.random.Generator,
                       bins: int = EVALUATION_BINS, groups: dict[str, np.ndarray] | None = None,
                       ) -> tuple[EvaluationSums, dict[str, np.ndarray], PrivacyEvent]:
    """Deployment release of a holdout evaluation with the Gaussian mechanism (one event).

    Released vector: the two class-conditional score histograms rebinned to ``bins`` bins
    (:func:`models.metrics.rebin`), Σ PD, Σ Brier and the fairness group counts ``groups``
    (attribute → groups × 4 matrix). Every number gets N(0, (σ·Δ)²) with
    Δ = :func:`evaluation_sensitivity` (√3 without groups).

    Everything else is computed from the noised numbers (post-processing, no extra privacy
    cost): ``n`` = total of both noised histograms, ``positives`` = total of the noised
    positive histogram, and the log-loss sum is estimated from the noised histograms with
    each bin's centre PD — unbiased for the binned log loss (the noised counts are used as they
    are, negative ones included; clipping them would bias it upwards), an approximation at bin
    resolution, because the exact per-record log loss is unbounded and releasing its sum would
    need heavy noise.

    Returns the noised :class:`EvaluationSums` (histograms of length ``bins``), the noised group
    counts and the event ``("evaluation", σ, q=1, steps=1)``.
    """
    if not noise_multiplier > 0:
        raise ValueError("noise_multiplier must be positive")
    groups = dict(groups or {})
    delta_l2 = evaluation_sensitivity(len(groups))
    std = noise_multiplier * delta_l2
    neg = rebin(sums.hist_neg, bins) + rng.normal(0.0, std, size=bins)
    pos = rebin(sums.hist_pos, bins) + rng.normal(0.0, std, size=bins)
    sum_pd = float(sums.sum_pd + rng.normal(0.0, std))
    brier = float(sums.brier_sum + rng.normal(0.0, std))
    noisy_groups = gaussian_noised(groups, std, rng)
    centre = np.clip(score_bin_centres(bins), 1e-12, 1 - 1e-12)
    logloss = float(np.sum(pos * -np.log(centre) + neg * -np.log1p(-centre)))
    out = EvaluationSums(hist_neg=neg, hist_pos=pos, n=float(neg.sum() + pos.sum()), positives=float(pos.sum()),
                         sum_pd=sum_pd, brier_sum=brier, logloss_sum=logloss)
    event = PrivacyEvent("evaluation", float(noise_multiplier), 1.0, 1,
                         detail=f"{bins} score bins + sum PD + sum Brier + fairness counts of {len(groups)} "
                                f"attribute(s), sensitivity sqrt({3 + 4 * len(groups)})")
    return out, noisy_groups, event


#: the cells of a drift release: a population's rows per score band; with outcomes, the
#: non-defaulters and defaulters per band and the sum of the PDs per band
DRIFT_CELLS = {False: ("rows",), True: ("non_defaults", "defaults", "sum_pd")}


def drift_sensitivity(with_outcomes: bool) -> float:
    """L2 sensitivity of a drift release (:data:`DRIFT_CELLS`): one row sits in exactly one
    score band, so it adds 1 to exactly one count cell — and, with outcomes, its PD ∈ [0, 1] to
    that band's sum of PDs: ``1``, or ``sqrt(1 + 1) = √2`` with outcomes."""
    return math.sqrt(2.0) if with_outcomes else 1.0


def release_drift(cells: dict[str, np.ndarray], noise_multiplier: float, rng: np.random.Generator
                  ) -> tuple[dict[str, np.ndarray], PrivacyEvent]:
    """Gaussian mechanism on a monitored population's score-band cells (one event).

    ``cells`` has exactly the keys of :data:`DRIFT_CELLS` (population, or with outcomes), each a
    vector over the package's score bands (a public function of the model package, never of the
    data). Every cell + N(0, (σ·Δ)²), Δ = :func:`drift_sensitivity`. The event reads every row
    the institution holds as far as the ledger knows (no side): it composes with all releases.
    """
    with_outcomes = set(cells) == set(DRIFT_CELLS[True])
    if set(cells) != set(DRIFT_CELLS[with_outcomes]):
        raise ValueError(f"drift cells must be {DRIFT_CELLS[False]} or {DRIFT_CELLS[True]}, got {sorted(cells)}")
    if not noise_multiplier > 0:
        raise ValueError("noise_multiplier must be positive")
    sensitivity = drift_sensitivity(with_outcomes)
    noisy = gaussian_noised(cells, noise_multiplier * sensitivity, rng)
    bands = len(next(iter(cells.values())))
    event = PrivacyEvent("drift", float(noise_multiplier), 1.0, 1,
                         detail=f"{'backtest' if with_outcomes else 'population'} drift release: {len(cells)} x "
                                f"{bands} score-band cells, sensitivity {'sqrt(2)' if with_outcomes else '1'}")
    return noisy, event
