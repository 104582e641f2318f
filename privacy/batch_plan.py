"""Each institution's batch size from its rows and budget, so small lenders do not drown in noise.

DP-SGD's averaged gradient carries Gaussian noise of standard deviation ``σ·C / B`` per
coordinate (σ the noise multiplier, C the clipping norm, B the expected batch size q·n). For a
fixed budget and number of epochs the accountant needs a larger σ the larger the sampling rate
q = B / n, and in the regime where amplification by subsampling works (small q) σ grows about
like √B, so the noise per *epoch* hardly depends on B — but the noise per *step* does, falling
about like 1/√B. A lender with 1,500 rows at the consortium's batch of 256 (q = 0.17) steps
with σ/B ≈ 0.012; one with 12,000 rows ≈ 0.005 (ε = 3, 20 epochs). With Adam, whose steps have
about the same size whatever the gradient's scale, a step dominated by noise is a step in a
random direction: the small lender's updates, and its personal model, are mostly noise.

:func:`plan_with_batch` lets a node pick its own batch for a target per-step noise
``σ / B ≤ target`` (run config ``step-noise-target``; 0 = the announced batch): among the
announced batch doubled 0, 1, 2 … times, up to half the node's rows, the smallest that meets
the target — fewer, cleaner steps — else the largest. Each candidate is planned against the
node's own ledger (:func:`privacy.planning.plan_noise`), so the chosen σ is exactly the one the
ledger will record. The batch size is the node's choice about its own releases: it changes q
and the number of steps in the privacy events, never the budget.
"""

from __future__ import annotations

from typing import Callable

from privacy.planning import RunPlan

#: a node never samples more than this fraction of its rows per step (amplification by
#: subsampling needs q well below 1; two steps an epoch at least)
MAX_SAMPLE_RATE = 0.5


def candidate_batches(n_rows: int, requested: int) -> list[int]:
    """The announced batch and its doublings up to ``MAX_SAMPLE_RATE · n_rows`` (at least the announced one)."""
    out = [max(1, int(requested))]
    while out[-1] * 2 <= MAX_SAMPLE_RATE * n_rows:
        out.append(out[-1] * 2)
    return out


def plan_with_batch(plan_for: Callable[[int], RunPlan], n_rows: int, requested: int,
                    step_noise_target: float) -> tuple[RunPlan, int]:
    """``(plan, batch)``: ``plan_for(batch)`` for the batch described in the module docstring.

    ``plan_for`` plans the run's noise for a batch size (it may raise
    :class:`privacy.errors.BudgetExceeded`, which propagates). With ``step_noise_target``
    ≤ 0 it is called once, with ``requested``.
    """
    candidates = candidate_batches(n_rows, requested)
    if step_noise_target <= 0:
        return plan_for(candidates[0]), candidates[0]
    plan, batch = None, candidates[0]
    for batch in candidates:
        plan = plan_for(batch)
        if plan.noise_multiplier / batch <= step_noise_target:
            break
    return plan, batch
