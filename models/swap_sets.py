"""Swap-set analysis of two credit decisions on the same applicants (champion vs challenger).

Each model approves where its PD is below its cut-off. The applicants split into four sets:

==================  =====================================================================
both approve        unaffected by the change
swap-out            approved by the champion, declined by the challenger
swap-in             declined by the champion, approved by the challenger
both decline        unaffected by the change
==================  =====================================================================

The change of model is worth its while when the swap-in set defaults less than the swap-out set
(the challenger trades worse borrowers for better ones). Each set's default rate carries a
binomial confidence interval (:func:`models.backtest.binomial_interval`).

:func:`bad_rate_at_approval_rate` compares the two models at the *same* approval rate: the
bad rate among the ``r·N`` applicants with the lowest PD (rows tied at the boundary all count),
so a challenger is not flattered by simply approving fewer applicants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from models.backtest import CONFIDENCE, binomial_interval

SETS = (("both approve", True, True), ("swap-out", True, False), ("swap-in", False, True),
        ("both decline", False, False))


@dataclass
class SwapSet:
    name: str
    n: int
    defaults: int
    default_rate: float | None
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def swap_sets(y, approve_champion, approve_challenger, confidence: float = CONFIDENCE,
              method: str = "exact") -> dict[str, SwapSet]:
    """The four sets of the module docstring with their sizes and default rates."""
    y = np.asarray(y).astype(bool)
    a = np.asarray(approve_champion, dtype=bool)
    b = np.asarray(approve_challenger, dtype=bool)
    out = {}
    for name, by_a, by_b in SETS:
        sel = (a == by_a) & (b == by_b)
        n, d = int(sel.sum()), int(y[sel].sum())
        lo, hi = binomial_interval(d, n, confidence, method) if n else (None, None)
        out[name] = SwapSet(name, n, d, d / n if n else None, lo, hi)
    return out


def bad_rate_at_approval_rate(pd_values, y, approval_rate: float) -> float | None:
    """Default rate among the applicants a model would approve at ``approval_rate`` (lowest PDs first)."""
    p = np.asarray(pd_values, dtype=np.float64)
    k = int(round(approval_rate * len(p)))
    if k <= 0:
        return None
    threshold = np.partition(p, k - 1)[k - 1]
    approved = p <= threshold
    return float(np.asarray(y)[approved].mean())
