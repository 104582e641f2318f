"""ε of an institution's releases: composition of privacy events with Opacus's accountants.

Pure mathematics: events in, ε out; nothing here reads or writes state.

Sequential composition. Every event is ``steps`` applications of the sampled Gaussian
mechanism ``(σ, q)``. :func:`epsilon_of_history` feeds a history of ``(σ, q, steps)`` entries to
a fresh Opacus accountant and asks for ε at δ:

* ``"rdp"`` — Rényi DP (Mironov 2017; Opacus ``RDPAccountant`` with its default orders and
  the RDP → (ε, δ) conversion of Balle et al. 2020), computed exactly as
  ``RDPAccountant.get_privacy_spent`` does — ``compute_rdp`` per entry, summed, then
  ``get_privacy_spent`` — with the per-step RDP curve of each ``(σ, q)`` memoised (``s`` steps
  are ``s`` × that curve), so the value is the number a fresh ``RDPAccountant`` returns.
* ``"prv"`` — privacy random variables (Gopi et al. 2021; a fresh Opacus ``PRVAccountant``):
  tighter, slower. A history it cannot evaluate gives ``inf``, so a release is refused
  rather than under-counted.

Parallel composition (:func:`compute_epsilon`). A node splits each version of its table into
training rows and a holdout by a rule that puts each row on one side by its own content
(:func:`clients.dataset.holdout_mask`); statistics, counts of training rows and DP-SGD read
the training side, evaluations and the holdout count read the holdout. So within one data
version a borrower is read by one side's events only. Across versions (a new export, a
changed row) the same person may sit on the other side. With the events grouped by data
version ``g`` (key ``(split, data)``), a borrower's privacy loss is the composition of

    the events that read every row (no side)  +  Σ_g  the events of the side s_g that borrower is on in g.

ε is the worst case over the choices ``(s_g)``: each choice is one history, composed
sequentially by the accountant; the node's ε is the largest of them. With one version that
is ``max(ε(all-row + train side), ε(all-row + holdout side))``. With more than
:data:`MAX_EXACT_VERSIONS` versions the choices are too many to enumerate, and the bound is
taken per Rényi order (RDP: Σ_g max_s RDP_{g,s}(α), valid for every borrower because it
bounds every choice at every order) or, for PRV, by composing every event sequentially.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import warnings
from typing import Iterable, Sequence

from privacy.events import ROW_SETS, PrivacyEvent

ACCOUNTANTS = ("rdp", "prv")
MAX_EXACT_VERSIONS = 6  # 2⁶ = 64 histories to compose at most


def accountant_history(events: Iterable[PrivacyEvent]) -> list[tuple[float, float, int]]:
    """Opacus history entries ``(σ, q, steps)``: events with equal (σ, q) merged, first-seen order."""
    merged: dict[tuple[float, float], int] = {}
    for e in events:
        key = (float(e.noise_multiplier), float(e.sample_rate))
        merged[key] = merged.get(key, 0) + int(e.steps)
    return [(s, q, n) for (s, q), n in merged.items()]


def version_groups(events: Sequence[PrivacyEvent]) -> tuple[list[PrivacyEvent], list[dict[str, list[PrivacyEvent]]]]:
    """``(all-row events, [per data version: side → its events])`` (see the module docstring).

    An event without a side, split or data version reads (as far as the ledger knows) every
    row: it lands in the first list and composes with everything.
    """
    everyone: list[PrivacyEvent] = []
    groups: dict[tuple[str, str], dict[str, list[PrivacyEvent]]] = {}
    for e in events:
        if e.sided:
            groups.setdefault((e.split, e.data), {s: [] for s in ROW_SETS})[e.rows].append(e)
        else:
            everyone.append(e)
    return everyone, list(groups.values())


def disjoint_sides(events: Sequence[PrivacyEvent]) -> dict[str, list[PrivacyEvent]] | None:
    """The events by side when they all read one side of one data version, else None."""
    everyone, groups = version_groups(events)
    if everyone or len(groups) != 1:
        return None
    return groups[0]


def worst_case_histories(events: Sequence[PrivacyEvent]) -> list[list[PrivacyEvent]] | None:
    """Every borrower's possible history (one per choice of side in each data version), or
    None when there are more than :data:`MAX_EXACT_VERSIONS` versions."""
    everyone, groups = version_groups(events)
    if len(groups) > MAX_EXACT_VERSIONS:
        return None
    if not groups:
        return [everyone]
    return [everyone + [e for g, side in zip(groups, choice) for e in g[side]]
            for choice in itertools.product(ROW_SETS, repeat=len(groups))]


def compute_epsilon(events: Sequence[PrivacyEvent], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of ``events`` under sequential and parallel composition (module docstring);
    0.0 for none."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not events:
        return 0.0
    histories = worst_case_histories(events)
    if histories is not None:
        return max(epsilon_of_history(accountant_history(h), delta, accountant) for h in histories)
    if accountant == "prv":
        return epsilon_of_history(accountant_history(events), delta, accountant)
    return _rdp_bound_over_versions(events, delta)


def side_epsilons(events: Sequence[PrivacyEvent], delta: float, accountant: str = "rdp") -> dict[str, float]:
    """ε of each side on its own: the all-row events plus every version's events of that side,
    composed sequentially — what ``privacy status`` shows as training-side and holdout-side spend."""
    everyone, groups = version_groups(events)
    return {side: compute_epsilon(everyone + [e for g in groups for e in g[side]], delta, accountant)
            if (everyone or any(g[side] for g in groups)) else 0.0 for side in ROW_SETS}


def epsilon_of_history(history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε of Opacus history entries ``(σ, q, steps)`` composed sequentially (module docstring)."""
    if not history:
        return 0.0
    with warnings.catch_warnings(), _quiet_numpy():
        warnings.simplefilter("ignore")
        if accountant == "rdp":
            eps = _rdp_to_epsilon(sum([_rdp_curve(float(s), float(q)) * int(n) for s, q, n in history]), delta)
        else:
            from opacus.accountants import PRVAccountant

            acc = PRVAccountant()
            acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
            try:
                eps = float(acc.get_epsilon(delta=delta))
            except (ValueError, RuntimeError, FloatingPointError, OverflowError, ZeroDivisionError):
                eps = float("inf")
    if math.isnan(eps):
        eps = float("inf")
    return max(0.0, eps)


def _rdp_bound_over_versions(events: Sequence[PrivacyEvent], delta: float) -> float:
    import numpy as np

    everyone, groups = version_groups(events)

    def curve(evs):
        return sum([_rdp_curve(float(s), float(q)) * int(n) for s, q, n in accountant_history(evs)],
                   np.zeros(len(RDP_ORDERS)))

    with warnings.catch_warnings(), _quiet_numpy():
        warnings.simplefilter("ignore")
        total = curve(everyone) + sum([np.maximum(curve(g["train"]), curve(g["holdout"])) for g in groups],
                                      np.zeros(len(RDP_ORDERS)))
        eps = _rdp_to_epsilon(total, delta)
    return float("inf") if math.isnan(eps) else max(0.0, eps)


#: Opacus ``RDPAccountant.DEFAULT_ALPHAS`` (a test keeps them equal)
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


@functools.lru_cache(maxsize=1)
def rdp_analysis():
    """Opacus's RDP analysis, ``opacus/accountants/analysis/rdp.py`` (``compute_rdp``,
    ``get_privacy_spent``).

    That module needs only NumPy and SciPy, but importing it through the ``opacus`` package
    runs ``opacus/__init__``, which imports PyTorch and the whole engine (seconds). When Opacus
    is not imported yet, the file is loaded on its own — the same code — so that ``privacy
    status`` and a node's budget checks do not pay for PyTorch.
    """
    import sys

    if "opacus" in sys.modules:
        from opacus.accountants.analysis import rdp

        return rdp
    import importlib.util
    from pathlib import Path

    package = importlib.util.find_spec("opacus")
    path = Path(list(package.submodule_search_locations)[0]) / "accountants" / "analysis" / "rdp.py"
    spec = importlib.util.spec_from_file_location("_fedcredit_opacus_rdp_analysis", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rdp_to_epsilon(rdp, delta: float) -> float:
    return float(rdp_analysis().get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)[0])


@functools.lru_cache(maxsize=8192)
def _rdp_curve(sigma: float, q: float):
    """RDP of one step of the sampled Gaussian mechanism at Opacus's default orders (read-only)."""
    with warnings.catch_warnings(), _quiet_numpy():
        warnings.simplefilter("ignore")
        curve = rdp_analysis().compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(RDP_ORDERS))
    curve.setflags(write=False)
    return curve


@contextlib.contextmanager
def _quiet_numpy():
    import numpy as np

    with np.errstate(all="ignore"):
        yield
