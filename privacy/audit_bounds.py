"""The ε lower bound of a one-run membership audit (Steinke, Nasr & Jagielski 2023).

Setting. ``m`` audited rows ("canaries"); each one's membership ``S_i`` is an independent fair
coin (in the training data with probability ½, independently of everything else), and the
released model is (ε, δ)-DP with respect to adding or removing one row. After training, an
attack scores every canary and *guesses* on ``r`` of them — "member" for the ``k₊`` highest
scores, "non-member" for the ``k₋`` lowest, abstaining on the rest — and ``v`` of the ``r``
guesses are right.

Theorem (Steinke et al. 2023, Thm 5.2 with the p-value of their reference code). With
``q = e^ε / (1 + e^ε)`` — the accuracy of ε-DP randomised response — and ``B ~ Binomial(r, q)``,

    P[v correct or more] ≤ P[B ≥ v] + 2 m δ · max_{i = 1..v} P[v − i ≤ B < v] / i.

So an audit that gets ``v`` right is evidence against (ε, δ)-DP at level ``α`` when that bound
is below ``α``; the **ε lower bound** at confidence ``1 − α`` is the largest ε it rejects.
Unlike counting every row as an independent trial and taking Clopper–Pearson intervals of
TPR and FPR, this is a proven bound for *one* trained model: the rows are not independent
trials, but the coins are. It is a lower bound on ε — evidence of leakage, never a proof of
privacy — and it holds only if membership really was decided by independent fair coins
(``privacy.audit`` makes them so from the institution's per-row holdout draw).

Choosing ``k₊, k₋`` after seeing the outcome would invalidate the p-value, so
:func:`epsilon_lower_bound` tries a fixed grid of ``G`` guess counts (:data:`GUESS_FRACTIONS`)
and tests each at ``α / G`` (Bonferroni); the reported bound is the largest, valid at ``1 − α``.
"""

from __future__ import annotations

import math

import numpy as np

# Fractions of the canaries guessed on (r = fraction · m, at least 1). Each is tried three ways:
# "member" for the r highest scores; "non-member" for the r lowest (an over-fit model is often
# confidently wrong on rows it never saw); r/2 of each.
GUESS_FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
EPSILON_CEILING = 50.0  # no audit of fewer than ~10^21 canaries can show more


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of ``v`` or more correct guesses out of ``r`` among ``m`` canaries if the
    model were (ε, δ)-DP (the bound in the module docstring); clipped to 1."""
    from scipy.special import bdtrc, gammaln

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 ≤ v ≤ r ≤ m, got v={v}, r={r}, m={m}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(bdtrc(v - 1, r, q))  # P[B ≥ v]
    if delta == 0:
        return min(1.0, tail)
    k = np.arange(v - 1, -1, -1)  # v−1, v−2, …, 0
    log_q, log_1mq = -np.logaddexp(0.0, -epsilon), -np.logaddexp(0.0, epsilon)  # stable for large ε
    log_pmf = gammaln(r + 1) - gammaln(k + 1) - gammaln(r - k + 1) + k * log_q + (r - k) * log_1mq
    below = np.cumsum(np.exp(log_pmf))  # P[v − i ≤ B < v] for i = 1..v
    slack = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * slack)


def epsilon_for(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    """The largest ε with ``p_value(m, r, v, ε, δ) ≤ alpha`` (0 when even ε = 0 is not rejected).

    The p-value increases with ε; the root is found with ``scipy.optimize.brentq`` (1e-6).
    """
    from scipy.optimize import brentq

    if p_value(m, r, v, 0.0, delta) > alpha:
        return 0.0
    if p_value(m, r, v, EPSILON_CEILING, delta) <= alpha:
        return EPSILON_CEILING
    return float(brentq(lambda e: p_value(m, r, v, e, delta) - alpha, 0.0, EPSILON_CEILING, xtol=1e-6))


def guess_grid(m: int) -> list[tuple[int, int]]:
    """The fixed ``(k₊, k₋)`` candidates for ``m`` canaries (no duplicates, order kept)."""
    grid: list[tuple[int, int]] = []
    for f in GUESS_FRACTIONS:
        r = max(1, int(round(f * m)))
        for cand in ((r, 0), (0, r), (r - r // 2, r // 2)):
            if cand not in grid and sum(cand) <= m:
                grid.append(cand)
    return grid


def correct_guesses(score: np.ndarray, member: np.ndarray, k_member: int, k_non_member: int) -> int:
    """Correct guesses when the ``k_member`` highest scores are called members and the
    ``k_non_member`` lowest non-members (ties broken by a stable sort of the scores)."""
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    member = np.asarray(member, dtype=bool)
    top = int(member[order[:k_member]].sum())
    bottom = int((~member[order[len(order) - k_non_member:]]).sum()) if k_non_member else 0
    return top + bottom


def epsilon_lower_bound(score: np.ndarray, member: np.ndarray, delta: float, alpha: float) -> dict:
    """The audit's ε lower bound at confidence ``1 − alpha`` for one attack's canary scores.

    Every ``(k₊, k₋)`` of :func:`guess_grid` is tested at ``alpha / G``; returns the best as
    ``{"epsilon_lower_bound", "guesses", "guessed_members", "guessed_non_members", "correct",
    "candidates", "alpha_per_candidate"}``.
    """
    m = len(score)
    grid = guess_grid(m)
    level = alpha / len(grid)
    best = {"epsilon_lower_bound": 0.0, "guesses": 0, "guessed_members": 0, "guessed_non_members": 0,
            "correct": 0}
    for k_member, k_non in grid:
        v, r = correct_guesses(score, member, k_member, k_non), k_member + k_non
        if p_value(m, r, v, best["epsilon_lower_bound"], delta) > level:
            continue  # cannot beat the best so far (the p-value grows with ε)
        eps = epsilon_for(m, r, v, delta, level)
        if eps > best["epsilon_lower_bound"]:
            best = {"epsilon_lower_bound": eps, "guesses": k_member + k_non, "guessed_members": k_member,
                    "guessed_non_members": k_non, "correct": v}
    return {**best, "candidates": len(grid), "alpha_per_candidate": level}
