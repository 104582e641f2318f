"""Noise planning: the smallest noise multiplier σ that keeps a run inside the budget.

A node plans once per run, before its first training round, from

* the events already in its ledger (``prior_events``: earlier runs, the statistics release);
* releases it reserves for the run besides training (``extra_events``: e.g. one noised
  evaluation per round when the node's ``release-eval = noised``);
* the run's shape: sample rate ``q = batch_size / n`` (Poisson sampling), local steps per
  round ``E · ceil(n / batch_size)``, and the number of rounds.

:func:`plan_noise` returns the smallest σ (to within 0.01 in ε, like Opacus's
``get_noise_multiplier``) such that

    ε(prior + extra + rounds × (σ, q, steps_per_round)) ≤ max_epsilon   (lifetime budget)
    ε(extra + rounds × (σ, q, steps_per_round))        ≤ run_epsilon_cap (if the run asks for one)

With no prior and no extra events this is exactly Opacus's ``get_noise_multiplier`` for
``steps = rounds × steps_per_round``; otherwise the same doubling-then-bisection search on σ
with the whole history in the accountant. ε is computed by :func:`privacy.accountant.compute_epsilon`,
so the plan and the ledger agree to the last digit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from privacy.accountant import (
    BudgetExceeded,
    disjoint_sides,
    PrivacyEvent,
    accountant_history,
    compute_epsilon,
    epsilon_of_history,
)

EPSILON_TOLERANCE = 0.01
MAX_NOISE_MULTIPLIER = 1e3


def sample_rate_for(n_rows: int, batch_size: int) -> float:
    """Poisson sampling rate ``q = min(1, batch_size / n_rows)``."""
    if n_rows < 1 or batch_size < 1:
        raise ValueError("n_rows and batch_size must be positive")
    return min(1.0, batch_size / n_rows)


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """``ceil(n / batch_size)`` (at least 1), as :meth:`models.training.LocalTrainConfig.steps_per_epoch`."""
    if n_rows < 1 or batch_size < 1:
        raise ValueError("n_rows and batch_size must be positive")
    return max(1, -(-n_rows // batch_size))


@dataclass
class RunPlan:
    """The noise plan of one run.

    ``epsilon_after_round[r]`` is the lifetime ε (prior events, all reserved extra events and
    ``r + 1`` planned training rounds) — what the ledger will show after round ``r + 1`` at the
    latest; ``epsilon_run`` is the ε of this run's own events (extra + all planned rounds).
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    epsilon_after_round: list[float] = field(default_factory=list)
    epsilon_run: float = 0.0
    epsilon_prior: float = 0.0
    max_epsilon: float = 0.0
    delta: float = 0.0
    accountant: str = "rdp"

    def round_event(self, run_id: str = "", round: int | None = None) -> PrivacyEvent:
        return PrivacyEvent("train", self.noise_multiplier, self.sample_rate, self.steps_per_round,
                            run_id=run_id, round=round)

    def to_dict(self) -> dict:
        return asdict(self)


def _solve_sigma(eps_of: Callable[[float], float], target: float, tol: float, start: float = 10.0) -> float:
    """Smallest σ (to within ``tol`` in ε) with ``eps_of(σ) ≤ target``; eps_of decreases in σ.

    Each ``eps_of`` is an accountant computation (~0.1 s for a new σ), so the search counts
    them: after doubling σ from ``start`` until it fits, it keeps a bracket (σ that fits,
    σ that does not) and steps by secant in (log σ, log ε) — ε is close to a power law in σ —
    aiming at ``target − tol/2``; a step that would leave the bracket, or a second step in a
    row that does not land on the other side, is a bisection (in log σ once both ends are
    positive) instead. Typically 4–6 evaluations where plain bisection takes ~12.
    """
    hi = start
    e_hi = eps_of(hi)
    lo, e_lo = 0.0, math.inf  # the side that does not fit (σ = 0: no privacy)
    while e_hi > target:
        lo, e_lo = hi, e_hi
        hi *= 2
        if hi > MAX_NOISE_MULTIPLIER:
            e_hi = eps_of(MAX_NOISE_MULTIPLIER)
            if e_hi > target:
                raise _Infeasible()
            hi = MAX_NOISE_MULTIPLIER
            break
        e_hi = eps_of(hi)
    aim = math.log(max(target - tol / 2, target * 0.5, 1e-300))
    sides: list[bool] = []  # for each refining evaluation: did it fit?
    for _ in range(200):
        if target - e_hi <= tol or hi - lo <= 1e-9 * hi:
            break
        x_hi, y_hi = math.log(hi), math.log(max(e_hi, 1e-300))
        stuck = len(sides) >= 2 and sides[-1] == sides[-2]  # two in a row on one side: bisect
        if lo > 0:
            x_lo = math.log(lo)
            if math.isfinite(e_lo) and e_lo != e_hi and not stuck:
                x = x_hi + (aim - y_hi) * (x_lo - x_hi) / (math.log(e_lo) - y_hi)
                if not x_lo < x < x_hi:
                    x = 0.5 * (x_lo + x_hi)
            else:
                x = 0.5 * (x_lo + x_hi)
        else:  # nothing that does not fit seen yet: step down as if ε ∝ 1/σ (halve σ when stuck)
            x = x_hi - (aim - y_hi) if not stuck else x_hi - math.log(2)
        mid = math.exp(x)
        e = eps_of(mid)
        if e <= target:
            hi, e_hi = mid, e
        else:
            lo, e_lo = mid, e
        sides.append(e <= target)
    return hi


class _Infeasible(Exception):
    pass


def plan_noise(*, prior_events: Sequence[PrivacyEvent], max_epsilon: float, delta: float, sample_rate: float,
               steps_per_round: int, rounds: int, run_epsilon_cap: float | None = None,
               extra_events: Sequence[PrivacyEvent] = (), accountant: str = "rdp",
               epsilon_tolerance: float = EPSILON_TOLERANCE, rows: str = "", split: str = "") -> RunPlan:
    """Plan σ for ``rounds`` rounds of ``steps_per_round`` DP-SGD steps at rate ``sample_rate``.

    ``rows``/``split`` name the row set the training reads (see
    :func:`privacy.accountant.disjoint_sides`): when all events allow parallel composition, σ is
    searched against the training side's events only, and the other side must fit the budget
    on its own.

    Raises :class:`BudgetExceeded` when the prior (and reserved) events leave no more than the
    planning tolerance (0.01) of the budget — a run that followed its plan ends there, so the
    budget counts as exhausted — or when even σ = 1000 would not fit.
    """
    if rounds < 1 or steps_per_round < 1:
        raise ValueError("rounds and steps_per_round must be positive")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if not max_epsilon > 0:
        raise ValueError("max_epsilon must be positive")
    if run_epsilon_cap is not None and not run_epsilon_cap > 0:
        run_epsilon_cap = None
    prior, extra = list(prior_events), list(extra_events)
    total_steps = rounds * steps_per_round
    template = PrivacyEvent("train", 1.0, sample_rate, steps_per_round, rows=rows, split=split)
    sides = disjoint_sides(prior + extra + [template])
    same_side = (lambda evs: [e for e in evs if e.rows == rows]) if sides is not None else (lambda evs: evs)
    eps_prior = compute_epsilon(prior, delta, accountant)
    eps_fixed = compute_epsilon(prior + extra, delta, accountant)
    if eps_fixed >= max_epsilon - epsilon_tolerance:  # less than the planning tolerance left: exhausted
        if eps_fixed <= 0:  # nothing spent or reserved: the budget itself is below the tolerance
            why = (f"max ε {max_epsilon:g} (δ = {delta:g}) is not above the planning tolerance "
                   f"{epsilon_tolerance:g}, so no training release fits it")
        else:
            what = ("already spent" if eps_prior > 0 and eps_prior >= max_epsilon - epsilon_tolerance
                    else "needed by the other releases of this run")
            why = (f"ε {eps_fixed:.4f} of max {max_epsilon:g} (δ = {delta:g}) is {what} "
                   f"(ε spent before this run: {eps_prior:.4f})")
        raise BudgetExceeded(
            f"privacy budget exhausted: {why}; no training is possible on this data without raising "
            "max-epsilon in the node config (a policy decision of the institution)",
            budget=max_epsilon, spent=eps_prior, epsilon_if=eps_fixed)
    if run_epsilon_cap is not None and compute_epsilon(extra, delta, accountant) >= run_epsilon_cap:
        raise BudgetExceeded(
            f"the run's target ε {run_epsilon_cap:g} is used up by its non-training releases alone "
            f"(ε {compute_epsilon(extra, delta, accountant):.4f}); ask for a larger target-epsilon",
            budget=max_epsilon, spent=eps_prior, epsilon_if=eps_fixed)

    base_hist = accountant_history(same_side(prior + extra))
    extra_hist = accountant_history(same_side(extra))

    def with_plan(hist, sigma):
        return epsilon_of_history(_merge(hist, (sigma, sample_rate, total_steps)), delta, accountant)

    targets = [(base_hist, max_epsilon)]
    if run_epsilon_cap is not None:
        targets.append((extra_hist, run_epsilon_cap))
    sigmas = []
    try:
        for hist, target in targets:
            if not hist:  # nothing else in the history: Opacus's own search
                sigmas.append(_opacus_noise_multiplier(target, delta, sample_rate, total_steps, accountant,
                                                       epsilon_tolerance))
            else:
                start = _rdp_start(hist, target, delta, sample_rate, total_steps) if accountant == "prv" else 10.0
                sigmas.append(_solve_sigma(lambda s, h=hist: with_plan(h, s), target, epsilon_tolerance, start))
    except _Infeasible:
        raise BudgetExceeded(
            f"the remaining privacy budget ({max_epsilon - eps_fixed:.4f} of max ε {max_epsilon:g}) is too small for "
            f"{rounds} round(s) of {steps_per_round} step(s) at sample rate {sample_rate:.4g} even with noise "
            f"multiplier {MAX_NOISE_MULTIPLIER:g}; run fewer rounds or epochs, or raise max-epsilon",
            budget=max_epsilon, spent=eps_prior, epsilon_if=float("inf")) from None
    sigma = max(sigmas)
    # verify with the ledger's own computation: never plan above the budget
    planned = [PrivacyEvent("train", sigma, sample_rate, steps_per_round, rows=rows, split=split)
               for _ in range(rounds)]
    for _ in range(60):
        life = compute_epsilon(prior + extra + planned, delta, accountant)
        run = compute_epsilon(extra + planned, delta, accountant)
        if life <= max_epsilon and (run_epsilon_cap is None or run <= run_epsilon_cap):
            break
        sigma *= 1.001
        planned = [PrivacyEvent("train", sigma, sample_rate, steps_per_round, rows=rows, split=split)
                   for _ in range(rounds)]
    else:  # pragma: no cover - numerical pathology
        raise BudgetExceeded("could not find a noise multiplier that fits the budget",
                             budget=max_epsilon, spent=eps_prior, epsilon_if=float("inf"))
    after = [compute_epsilon(prior + extra + planned[:r], delta, accountant) for r in range(1, rounds)] + [life]
    return RunPlan(noise_multiplier=sigma, sample_rate=sample_rate, steps_per_round=steps_per_round, rounds=rounds,
                   epsilon_after_round=after, epsilon_run=run, epsilon_prior=eps_prior, max_epsilon=max_epsilon,
                   delta=delta, accountant=accountant)


def _merge(hist: list[tuple[float, float, int]], entry: tuple[float, float, int]) -> list[tuple[float, float, int]]:
    out = list(hist)
    for i, (s, q, n) in enumerate(out):
        if s == entry[0] and q == entry[1]:
            out[i] = (s, q, n + entry[2])
            return out
    out.append(entry)
    return out


def _opacus_noise_multiplier(target: float, delta: float, q: float, steps: int, accountant: str, tol: float) -> float:
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sigma = get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps,
                                         accountant=accountant, epsilon_tolerance=tol)
        except ValueError:
            raise _Infeasible() from None
    if sigma > MAX_NOISE_MULTIPLIER:
        raise _Infeasible()
    return float(sigma)


def _rdp_start(hist, target, delta, q, steps) -> float:
    """PRV search start: the RDP plan (PRV's ε is normally below RDP's, so it is feasible or close)."""
    try:
        s = _solve_sigma(lambda s: epsilon_of_history(_merge(hist, (s, q, steps)), delta, "rdp"), target, 0.05)
    except _Infeasible:
        return MAX_NOISE_MULTIPLIER
    return max(s, 1e-3)


def plan_table(plan: RunPlan, first_round: int = 1) -> list[dict]:
    """One row per planned round: round, σ, q, steps, lifetime ε after the round, budget left."""
    return [{"round": first_round + r, "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
             "steps": plan.steps_per_round, "epsilon_after": eps,
             "epsilon_remaining": max(0.0, plan.max_epsilon - eps)}
            for r, eps in enumerate(plan.epsilon_after_round)]


def default_delta(n_rows: int) -> float:
    """The largest power of ten not above 1/(10·n): e.g. 4,000 rows → 1e-5 (the node's default δ)."""
    return 10.0 ** math.floor(math.log10(1.0 / (10.0 * max(n_rows, 1))))
