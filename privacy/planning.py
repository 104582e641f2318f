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

With no prior and no extra events (RDP) this is exactly Opacus's ``get_noise_multiplier`` for
``steps = rounds × steps_per_round``; otherwise σ is the root of ``ε(σ) = target − tol/2``
found by :func:`scipy.optimize.brentq` in log σ, with the whole history in the accountant. ε
is computed by :func:`privacy.composition.compute_epsilon`, so the plan and the ledger agree
to the last digit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from privacy.composition import compute_epsilon
from privacy.errors import BudgetExceeded
from privacy.events import PrivacyEvent

EPSILON_TOLERANCE = 0.01
MAX_NOISE_MULTIPLIER = 1e3
MIN_NOISE_MULTIPLIER = 1e-2


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
    evaluation_noise_multiplier: float | None = None  # set by plan_run_noise when the run evaluates

    def round_event(self, run_id: str = "", round: int | None = None) -> PrivacyEvent:
        return PrivacyEvent("train", self.noise_multiplier, self.sample_rate, self.steps_per_round,
                            run_id=run_id, round=round)

    def to_dict(self) -> dict:
        return asdict(self)


def _smallest_sigma(eps_of: Callable[[float], float], target: float, tol: float, start: float = 1.0) -> float:
    """Smallest σ (to within ``tol`` in ε) with ``eps_of(σ) ≤ target``; ``eps_of`` decreases in σ.

    Brackets the root of ``eps_of(σ) − (target − tol/2)`` in log σ — doubling or halving from
    ``start`` — and solves it with :func:`scipy.optimize.brentq`; the result is then moved up
    until it fits ``target`` (never planned above the budget). Each ``eps_of`` is an
    accountant computation (RDP: ~1 ms for a new σ; PRV: ~0.1 s).
    """
    from scipy.optimize import brentq

    aim = target - tol / 2
    if eps_of(MAX_NOISE_MULTIPLIER) > target:
        raise _Infeasible()
    if eps_of(MAX_NOISE_MULTIPLIER) > aim:
        return MAX_NOISE_MULTIPLIER
    lo = hi = min(max(start, MIN_NOISE_MULTIPLIER), MAX_NOISE_MULTIPLIER)
    if eps_of(hi) > aim:
        while eps_of(hi) > aim:
            lo, hi = hi, min(2 * hi, MAX_NOISE_MULTIPLIER)
    else:
        while eps_of(lo) <= aim:
            if lo <= MIN_NOISE_MULTIPLIER:
                return MIN_NOISE_MULTIPLIER
            lo, hi = max(lo / 2, MIN_NOISE_MULTIPLIER), lo
    x = brentq(lambda t: eps_of(math.exp(t)) - aim, math.log(lo), math.log(hi), xtol=1e-6, rtol=1e-6)
    sigma = max(math.exp(x), lo)
    while eps_of(sigma) > target:
        sigma = min(sigma * 1.0005, hi)
    return sigma


class _Infeasible(Exception):
    pass


def plan_noise(*, prior_events: Sequence[PrivacyEvent], max_epsilon: float, delta: float, sample_rate: float,
               steps_per_round: int, rounds: int, run_epsilon_cap: float | None = None,
               extra_events: Sequence[PrivacyEvent] = (), accountant: str = "rdp",
               epsilon_tolerance: float = EPSILON_TOLERANCE, rows: str = "", split: str = "",
               data: str = "") -> RunPlan:
    """Plan σ for ``rounds`` rounds of ``steps_per_round`` DP-SGD steps at rate ``sample_rate``.

    ``rows``/``split``/``data`` name the row set the training reads (the training side of the
    current table version, :mod:`privacy.composition`): ε is computed with parallel
    composition exactly as the ledger will compute it, so releases of the other side must fit
    the budget on their own.

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

    def training(sigma: float, n_rounds: int = rounds) -> list[PrivacyEvent]:
        return [PrivacyEvent("train", sigma, sample_rate, steps_per_round * n_rounds, rows=rows, split=split,
                             data=data)]

    eps_prior = compute_epsilon(prior, delta, accountant)
    eps_fixed = compute_epsilon(prior + extra, delta, accountant)
    _refuse_when_exhausted(max_epsilon, delta, eps_prior, eps_fixed, epsilon_tolerance)
    if run_epsilon_cap is not None and compute_epsilon(extra, delta, accountant) >= run_epsilon_cap:
        raise BudgetExceeded(
            f"the run's target ε {run_epsilon_cap:g} is used up by its non-training releases alone "
            f"(ε {compute_epsilon(extra, delta, accountant):.4f}); ask for a larger target-epsilon",
            budget=max_epsilon, spent=eps_prior, epsilon_if=eps_fixed)
    targets = [(prior + extra, max_epsilon)] + ([(extra, run_epsilon_cap)] if run_epsilon_cap is not None else [])
    sigmas = []
    try:
        for base, target in targets:
            if not base and accountant == "rdp":  # nothing else in the history: Opacus's own search
                sigmas.append(_opacus_noise_multiplier(target, delta, sample_rate, rounds * steps_per_round,
                                                       accountant, epsilon_tolerance))
                continue
            start = 1.0 if accountant == "rdp" else _smallest_sigma(  # PRV: start from the (cheap) RDP plan
                lambda s, b=base: compute_epsilon(b + training(s), delta, "rdp"), target, 0.05)
            sigmas.append(_smallest_sigma(lambda s, b=base: compute_epsilon(b + training(s), delta, accountant),
                                          target, epsilon_tolerance, start))
    except _Infeasible:
        raise BudgetExceeded(
            f"the remaining privacy budget ({max_epsilon - eps_fixed:.4f} of max ε {max_epsilon:g}) is too small for "
            f"{rounds} round(s) of {steps_per_round} step(s) at sample rate {sample_rate:.4g} even with noise "
            f"multiplier {MAX_NOISE_MULTIPLIER:g}; run fewer rounds or epochs, or raise max-epsilon",
            budget=max_epsilon, spent=eps_prior, epsilon_if=float("inf")) from None
    sigma = max(sigmas)
    life = compute_epsilon(prior + extra + training(sigma), delta, accountant)
    run = compute_epsilon(extra + training(sigma), delta, accountant)
    after = [compute_epsilon(prior + extra + training(sigma, r), delta, accountant) for r in range(1, rounds)]
    return RunPlan(noise_multiplier=sigma, sample_rate=sample_rate, steps_per_round=steps_per_round, rounds=rounds,
                   epsilon_after_round=after + [life], epsilon_run=run, epsilon_prior=eps_prior,
                   max_epsilon=max_epsilon, delta=delta, accountant=accountant)


def _refuse_when_exhausted(max_epsilon: float, delta: float, eps_prior: float, eps_fixed: float, tol: float) -> None:
    """BudgetExceeded when the recorded and reserved releases leave less than ``tol`` of the budget.

    The message states what was actually spent (``eps_prior``: recorded releases) apart from
    what this run's other releases would bring it to (``eps_fixed``).
    """
    if eps_fixed < max_epsilon - tol:
        return
    if eps_fixed <= 0:  # nothing spent or reserved: the budget itself is below the tolerance
        why = (f"max ε {max_epsilon:g} (δ = {delta:g}) is not above the planning tolerance {tol:g}, so no "
               "training release fits it")
    elif eps_prior >= max_epsilon - tol:
        why = f"ε {eps_prior:.4f} of max {max_epsilon:g} (δ = {delta:g}) is already spent; less than {tol:g} is left"
    else:
        why = (f"ε {eps_prior:.4f} of max {max_epsilon:g} (δ = {delta:g}) is spent, and this run's other releases "
               f"(statistics, row counts, planned evaluations) would bring it to {eps_fixed:.4f}, leaving less "
               f"than {tol:g} for training")
    raise BudgetExceeded(
        f"privacy budget exhausted: {why}; no training is possible without raising max-epsilon in the node "
        "config (a policy decision of the institution)", budget=max_epsilon, spent=eps_prior, epsilon_if=eps_fixed)


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


def plan_evaluation_noise(*, events: Sequence[PrivacyEvent], evaluations: int, ceiling: float, delta: float,
                          most_noise: float, accountant: str = "rdp", split: str = "", data: str = "") -> float:
    """The smallest noise multiplier (at most ``most_noise``) for ``evaluations`` holdout
    releases of table version ``data`` such that every borrower's ε stays within ``ceiling``,
    ``events`` being everything recorded and planned besides them (the run's training included).

    The releases only reach borrowers on the holdout side of that version, so only their
    histories count: ``events`` without that version's training-side events, plus the
    evaluations (:mod:`privacy.composition`). The node sets ``ceiling`` to the ε its training
    plan reaches: under parallel composition the evaluations may spend that much on the
    holdout side without raising the lifetime ε — a small holdout then gets far less noise
    than ``most_noise`` at no cost (docs/privacy.md). Returns ``most_noise`` when even that
    does not fit (the releases are then checked, and refused if need be, one by one).
    """
    if evaluations < 1:
        return most_noise
    reach = [e for e in events if not (e.rows == "train" and e.split == split and e.data == data)]

    def eps_of(sigma: float) -> float:
        return compute_epsilon(reach + [PrivacyEvent("evaluation", sigma, 1.0, evaluations, rows="holdout",
                                                     split=split, data=data)], delta, accountant)

    if eps_of(most_noise) > ceiling:
        return most_noise
    try:
        return min(most_noise, _smallest_sigma(eps_of, ceiling, EPSILON_TOLERANCE / 2, start=most_noise))
    except _Infeasible:  # pragma: no cover - most_noise fits, so the search cannot fail
        return most_noise


def plan_run_noise(*, prior_events: Sequence[PrivacyEvent], run_events: Sequence[PrivacyEvent], evaluations: int,
                   max_epsilon: float, delta: float, sample_rate: float, steps_per_round: int, rounds: int,
                   run_epsilon_cap: float | None = None, accountant: str = "rdp", split: str = "",
                   data: str = "") -> RunPlan:
    """A node's whole plan for (the rest of) a run: DP-SGD's σ, then the evaluations' σ.

    ``run_events`` are the run's releases besides training already recorded or about to be
    (its row counts, its statistics); ``evaluations`` the noised evaluations it will still make
    (reserved at the most noise, :data:`privacy.dp_release.EVALUATION_NOISE_MULTIPLIER`). The
    evaluations' σ is then lowered with :func:`plan_evaluation_noise` as far as neither the
    lifetime ε the training reaches nor this run's ε grows (``evaluation_noise_multiplier``).
    Both the node (:mod:`clients.node_privacy`) and ``fedcredit privacy plan`` call this.
    """
    from privacy.dp_release import EVALUATION_NOISE_MULTIPLIER

    prior, run = list(prior_events), list(run_events)
    evals = ([PrivacyEvent("evaluation", EVALUATION_NOISE_MULTIPLIER, 1.0, evaluations, rows="holdout",
                           split=split, data=data)] if evaluations > 0 else [])
    plan = plan_noise(prior_events=prior, max_epsilon=max_epsilon, delta=delta, sample_rate=sample_rate,
                      steps_per_round=steps_per_round, rounds=rounds, extra_events=run + evals,
                      run_epsilon_cap=run_epsilon_cap, accountant=accountant, rows="train", split=split, data=data)
    if evals:
        trained = [PrivacyEvent("train", plan.noise_multiplier, sample_rate, steps_per_round * rounds, rows="train",
                                split=split, data=data)]
        bounds = [(prior + run + trained, plan.epsilon_after_round[-1]), (run + trained, plan.epsilon_run)]
        plan.evaluation_noise_multiplier = max(
            plan_evaluation_noise(events=events, evaluations=evaluations, ceiling=ceiling, delta=delta,
                                  most_noise=EVALUATION_NOISE_MULTIPLIER, accountant=accountant, split=split, data=data)
            for events, ceiling in bounds)
    return plan


def plan_table(plan: RunPlan, first_round: int = 1) -> list[dict]:
    """One row per planned round: round, σ, q, steps, lifetime ε after the round, budget left."""
    return [{"round": first_round + r, "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
             "steps": plan.steps_per_round, "epsilon_after": eps,
             "epsilon_remaining": max(0.0, plan.max_epsilon - eps)}
            for r, eps in enumerate(plan.epsilon_after_round)]


def default_delta(n_rows: int) -> float:
    """The largest power of ten not above 1/(10·n): e.g. 4,000 rows → 1e-5 (the node's default δ)."""
    return 10.0 ** math.floor(math.log10(1.0 / (10.0 * max(n_rows, 1))))
