"""AUC confidence intervals and the comparison of correlated AUCs: DeLong's method, fast form.

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of the AUCs of several scores
on the same rows from their *structural components*. With ``m`` defaulters (scores ``X_i``),
``n`` non-defaulters (``Y_j``) and ``ψ(x, y) = 1[x > y] + ½·1[x = y]``:

    V10(X_i) = (1/n) Σ_j ψ(X_i, Y_j)        V01(Y_j) = (1/m) Σ_i ψ(X_i, Y_j)
    AUC      = mean_i V10(X_i)
    Cov(AUC_r, AUC_s) = S10_rs / m + S01_rs / n

with ``S10``, ``S01`` the sample covariance matrices (over models r, s) of the components.
Sun & Xu (2014, IEEE Signal Processing Letters 21(11)) compute every component from midranks
in ``O(N log N)`` instead of ``O(m·n)``: with ``T_Z`` the midranks of all scores, ``T_X`` those
of the defaulters among themselves and ``T_Y`` of the non-defaulters,

    V10(X_i) = (T_Z(X_i) − T_X(X_i)) / n       V01(Y_j) = 1 − (T_Z(Y_j) − T_Y(Y_j)) / m.

The difference of two AUCs on the same rows, ``AUC_b − AUC_a``, has variance
``Var_a + Var_b − 2·Cov_ab``; its confidence interval and two-sided z-test use the normal
approximation. Scores are PDs (a higher PD should mean a defaulter), labels 1 = default.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def _check(y, scores: np.ndarray) -> np.ndarray:
    y = np.asarray(y).astype(bool)
    if scores.ndim != 2 or scores.shape[1] != len(y):
        raise ValueError("scores must be (models, rows) with one label per row")
    if y.all() or not y.any():
        raise ValueError("DeLong's method needs both defaulters and non-defaulters")
    return y


def structural_components(y, score) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's ``V10`` (one per defaulter) and ``V01`` (one per non-defaulter) of one score, in row order.

    Sun & Xu's identity: ``T_Z(X_i) − T_X(X_i)`` is the number of non-defaulters scored below
    ``X_i`` plus half those tied with it, so ``V10`` is read off the sorted non-defaulters'
    scores by binary search (left and right insertion points), and ``V01`` off the sorted
    defaulters' — the same numbers as the three midrank vectors, from two sorts. The queries
    are searched in sorted order too (one pass through the sorted array), then put back in row
    order.
    """
    s = np.asarray(score, dtype=np.float64)
    x, z = s[y], s[~y]
    m, n = len(x), len(z)
    x_order, z_order = np.argsort(x), np.argsort(z)  # ties need no order: searchsorted counts them
    xs, zs = x[x_order], z[z_order]
    v10, v01 = np.empty(m), np.empty(n)
    below = np.searchsorted(zs, xs, side="left")
    v10[x_order] = (below + 0.5 * (np.searchsorted(zs, xs, side="right") - below)) / n
    below = np.searchsorted(xs, zs, side="left")
    v01[z_order] = (m - below - 0.5 * (np.searchsorted(xs, zs, side="right") - below)) / m
    return v10, v01


def delong_covariance(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` of ``k`` score vectors on the same rows and their covariance ``(k, k)``."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = _check(y, scores)
    m, n = int(y.sum()), int((~y).sum())
    parts = [structural_components(y, s) for s in scores]
    v10 = np.stack([p[0] for p in parts])
    v01 = np.stack([p[1] for p in parts])
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def _z(confidence: float) -> float:
    """The standard normal quantile of a two-sided ``confidence`` interval."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass
class AucInterval:
    """One AUC with its DeLong standard error and confidence interval ``[low, high]``."""

    auc: float
    se: float
    low: float
    high: float
    confidence: float


def auc_interval(y, score, confidence: float = 0.95) -> AucInterval:
    """AUC with DeLong's standard error and a normal confidence interval (clipped to [0, 1])."""
    aucs, cov = delong_covariance(y, [score])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    z = _z(confidence)
    auc = float(aucs[0])
    return AucInterval(auc, se, max(0.0, auc - z * se), min(1.0, auc + z * se), confidence)


@dataclass
class AucComparison:
    """``difference`` = AUC_b − AUC_a, with its DeLong standard error, CI, z and two-sided p."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    low: float
    high: float
    z: float
    p_value: float
    confidence: float
    correlation: float


def compare_aucs(y, score_a, score_b, confidence: float = 0.95) -> AucComparison:
    """DeLong test of two correlated AUCs (both scores on the same rows)."""
    aucs, cov = delong_covariance(y, [score_a, score_b])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    diff = float(aucs[1] - aucs[0])
    z_crit = _z(confidence)
    if se > 0:
        z = diff / se
        p = 2.0 * (1.0 - NormalDist().cdf(abs(z)))
    else:  # identical rankings: no difference, and none to detect
        z, p = 0.0, 1.0
    denom = np.sqrt(cov[0, 0] * cov[1, 1])
    corr = float(cov[0, 1] / denom) if denom > 0 else 1.0
    return AucComparison(float(aucs[0]), float(aucs[1]), diff, se, diff - z_crit * se, diff + z_crit * se,
                         float(z), p, confidence, corr)
