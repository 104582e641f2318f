"""Population stability (PSI) and characteristic stability (CSI) against a reference population.

For a partition of the values into groups ``g = 1..G``, with ``e_g`` the reference (expected)
share and ``a_g`` the current (actual) share of rows in group ``g``,

    PSI = Σ_g (a_g − e_g) · ln(a_g / e_g)

— the symmetrised Kullback–Leibler divergence ``KL(a‖e) + KL(e‖a)`` of the two grouped
distributions (≥ 0; 0 only when every share matches). The PSI of the score is the
*population stability index*; the same index of one input feature is its *characteristic
stability index* (CSI). A share of zero would make the logarithm infinite, so shares are
floored at :data:`EMPTY_SHARE` (0.01 %) — the usual convention.

Grouping (:func:`equal_mass_groups`): consecutive cells of an ordered histogram (score bins,
numeric feature bins, ordinal levels) are merged into about ``G = 10`` groups of equal
*reference* mass, the classic deciles of the development sample; a single cell holding more
than 1/G of the mass (a mass point such as "no payment") is one group of its own. Unordered
cells (categories, binary values) are compared cell by cell.

Usual reading (:func:`traffic_light`): PSI < 0.10 stable; 0.10 – 0.25 watch (investigate);
> 0.25 act (the population has shifted: review or redevelop the model).

Sampling noise: two samples of ``N`` and ``M`` rows drawn from one population give, for small
differences, ``PSI ≈ Σ (a_g − e_g)² / e_g`` with expectation ``(G − 1)(1/N + 1/M)``
(:func:`psi_sampling_floor`) — a PSI near that floor is noise, not drift.

DP noise: with a reference of DP-noised counts, the groups of an ordered histogram are formed on
its strong cells (:func:`models.reference.strong_counts`; a weak cell belongs to the group of
the strong cell before it, leading ones to the first group), then the *released* counts are summed into the groups as they are — sums of
noisy counts are unbiased — and only the group totals are clipped at zero. What the noise does
to the index is measured by a parametric bootstrap on the reference itself
(:func:`reference_noise_floor`: the reference restricted to its support
(:func:`models.reference.denoise_counts`) plus fresh noise of the same std, summed
into the same groups; the PSI against the reference, 90th percentile of 20 replays). A characteristic whose
noise floor reaches :data:`RELIABLE_BELOW` (0.05) cannot resolve the 0.10 line: its light is
``unknown`` ("the reference is too noisy at this size") rather than a false alarm or a false
all-clear. With tens of thousands of development rows the floor is far below it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.reference import clean_counts, denoise_counts, strong_counts

EMPTY_SHARE = 1e-4
RELIABLE_BELOW = 0.05
NOISE_REPLAYS = 20
STABLE_BELOW = 0.10
ACT_ABOVE = 0.25
DEFAULT_GROUPS = 10
LIGHTS = ("stable", "watch", "act")


def traffic_light(psi: float) -> str:
    """'stable' (PSI < 0.10), 'watch' (0.10 ≤ PSI ≤ 0.25), 'act' (PSI > 0.25); 'unknown' for NaN."""
    if psi is None or not np.isfinite(psi):
        return "unknown"
    if psi < STABLE_BELOW:
        return "stable"
    return "watch" if psi <= ACT_ABOVE else "act"


def worst_light(lights) -> str:
    """The most severe of several lights ('unknown' only when there is nothing else)."""
    known = [LIGHTS.index(x) for x in lights if x in LIGHTS]
    return LIGHTS[max(known)] if known else "unknown"


def shares(counts) -> np.ndarray:
    """Counts (negative ones as zero) as shares of their total; all zero when the total is zero."""
    c = clean_counts(counts)
    total = c.sum()
    return c / total if total > 0 else c


def psi_terms(expected_counts, actual_counts) -> np.ndarray:
    """Per-group contributions ``(a − e) · ln(a / e)`` with shares floored at :data:`EMPTY_SHARE`."""
    e = np.maximum(shares(expected_counts), EMPTY_SHARE)
    a = np.maximum(shares(actual_counts), EMPTY_SHARE)
    return (a - e) * np.log(a / e)


def population_stability_index(expected_counts, actual_counts) -> float:
    """PSI of two grouped count vectors of the same length (see the module docstring)."""
    e, a = np.asarray(expected_counts), np.asarray(actual_counts)
    if e.shape != a.shape:
        raise ValueError(f"expected and actual counts differ in shape: {e.shape} vs {a.shape}")
    return float(psi_terms(e, a).sum())


def psi_sampling_floor(groups: int, n_reference: float, n_current: float) -> float:
    """Expected PSI of two samples of one population, ``(G − 1)(1/N + 1/M)`` (small-difference limit)."""
    if n_reference <= 0 or n_current <= 0:
        return float("inf")
    return (groups - 1) * (1.0 / n_reference + 1.0 / n_current)


def equal_mass_groups(reference_counts, groups: int = DEFAULT_GROUPS) -> np.ndarray:
    """Group index (0, 1, …, consecutive) of each cell of an ordered histogram.

    A cell with reference mass goes to group ``floor(G · R_{<i} / R)`` with ``R_{<i}`` the
    reference mass before it and ``R`` the total; the indices are then renumbered consecutively.
    A cell without reference mass joins the group of the nearest cell before it that has mass
    (leading empty cells: the first group), so no group is empty in the reference. With no
    reference mass at all everything is one group.
    """
    c = clean_counts(reference_counts)
    total = c.sum()
    if total <= 0 or groups <= 1:
        return np.zeros(len(c), dtype=np.int64)
    before = np.concatenate([[0.0], np.cumsum(c)[:-1]])
    raw = np.minimum((groups * before / total).astype(np.int64), groups - 1)
    filled = np.flatnonzero(c > 0)
    owner = np.maximum.accumulate(np.where(c > 0, np.arange(len(c)), filled[0]))
    return np.unique(raw[owner], return_inverse=True)[1].astype(np.int64)


def merge_cells(counts, group_of_cell: np.ndarray) -> np.ndarray:
    """Sum a histogram's cells into their groups; the group totals are clipped at zero (the
    cells are summed as they are, so sums of noisy counts stay unbiased)."""
    n_groups = int(group_of_cell.max()) + 1 if len(group_of_cell) else 0
    return clean_counts(np.bincount(group_of_cell, weights=np.asarray(counts, dtype=np.float64), minlength=n_groups))


def group_spans(group_of_cell: np.ndarray) -> list[tuple[int, int]]:
    """``(first cell, last cell)`` of each group of consecutive cells."""
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], group_of_cell])))
    ends = np.concatenate([starts[1:], [len(group_of_cell)]]) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


@dataclass
class StabilityResult:
    """The PSI of one characteristic (or the score) with its grouped table.

    ``noise_floor``: the PSI the reference's own DP noise produces (0 for exact counts).
    """

    psi: float
    labels: list[str]
    expected: np.ndarray  # reference counts per group (denoised)
    actual: np.ndarray  # current counts per group
    terms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    noise_floor: float = 0.0
    group_of_cell: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def reliable(self) -> bool:
        return self.noise_floor < RELIABLE_BELOW

    @property
    def light(self) -> str:
        return traffic_light(self.psi) if self.reliable else "unknown"

    @property
    def groups(self) -> int:
        return len(self.labels)

    def sampling_floor(self) -> float:
        return psi_sampling_floor(self.groups, float(self.expected.sum()), float(self.actual.sum()))

    def to_dict(self) -> dict:
        e, a = shares(self.expected), shares(self.actual)
        return {"psi": self.psi, "light": self.light, "sampling_floor": self.sampling_floor(),
                "noise_floor": self.noise_floor, "reliable": self.reliable,
                "groups": [{"label": lab, "reference_share": float(e[i]), "current_share": float(a[i]),
                            "current_rows": float(self.actual[i]), "psi_term": float(self.terms[i])}
                           for i, lab in enumerate(self.labels)]}


def reference_noise_floor(truth, group_of_cell: np.ndarray, noise_std: float, replays: int = NOISE_REPLAYS,
                          seed: int = 0) -> float:
    """90th percentile of the PSI between a reference (``truth``: its denoised counts) and the
    same plus fresh noise of ``noise_std`` per count, summed into the same groups; ``inf`` when
    the reference has no mass left; 0 when the counts are exact (``noise_std`` 0)."""
    if noise_std <= 0:
        return 0.0
    ref = clean_counts(truth)
    if ref.sum() <= 0:
        return float("inf")
    rng = np.random.default_rng(seed)
    base = merge_cells(ref, group_of_cell)
    psis = [population_stability_index(base, merge_cells(ref + rng.normal(0.0, noise_std, ref.shape), group_of_cell))
            for _ in range(replays)]
    return float(np.quantile(psis, 0.9))


def grouped_stability(reference_counts, current_counts, group_of_cell: np.ndarray, labels: list[str],
                      noise_std: float = 0.0, truth=None) -> StabilityResult:
    """PSI of two histograms over the same cells, after summing the cells into groups. With
    ``noise_std`` > 0 the reference counts are DP-noised: ``truth`` (default: the counts
    clipped at zero) is their denoised form for :func:`reference_noise_floor`."""
    if np.shape(reference_counts) != np.shape(current_counts):
        raise ValueError(f"reference and current histograms differ in length: {np.shape(reference_counts)} vs "
                         f"{np.shape(current_counts)}")
    e = merge_cells(reference_counts, group_of_cell)
    a = merge_cells(current_counts, group_of_cell)
    terms = psi_terms(e, a)
    floor = reference_noise_floor(reference_counts if truth is None else truth, group_of_cell, noise_std)
    return StabilityResult(psi=float(terms.sum()), labels=list(labels), expected=e, actual=a, terms=terms,
                           noise_floor=floor, group_of_cell=np.asarray(group_of_cell))


def histogram_stability(released, current, noise_std: float, grouping, ordered: bool = True) -> StabilityResult:
    """PSI of a current histogram against a released (possibly DP-noised) reference histogram
    over the same cells (see the module docstring for the noise).

    ``grouping(basis) -> (group_of_cell, labels)`` forms the groups on ``basis``: the strong
    cells of an ordered histogram (:func:`models.reference.strong_counts`), all cells (clipped
    at zero) of an unordered one.
    """
    released = np.asarray(released, dtype=np.float64)
    truth = denoise_counts(released, noise_std) if ordered else clean_counts(released)
    basis = strong_counts(released, noise_std) if ordered else clean_counts(released)
    group_of_cell, labels = grouping(basis)
    return grouped_stability(released, current, group_of_cell, labels, noise_std, truth)


# ------------------------------------------------------------------ characteristics (CSI)
def _number(x: float) -> str:
    """A compact label number: thousands separated, at most 3 significant decimals."""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def feature_groups(feature, reference_counts, groups: int = DEFAULT_GROUPS) -> tuple[np.ndarray, list[str]]:
    """Cell → group map and group labels for one schema feature's statistics vector.

    Numeric features and ordinal levels are merged into equal-reference-mass groups (labels:
    value ranges in the feature's own units, or levels); categories and binary values stay one
    group each.
    """
    from models.encoder import inverse_transform

    n_cells = len(reference_counts)
    if feature.kind == "categorical":
        return np.arange(n_cells), list(feature.categories)
    if feature.kind == "binary":
        return np.arange(n_cells), ["0", "1"]
    group_of_cell = equal_mass_groups(reference_counts, groups)
    spans = group_spans(group_of_cell)
    if feature.kind == "ordinal":
        levels = feature.levels()
        labels = [str(levels[a]) if a == b else f"{levels[a]} to {levels[b]}" for a, b in spans]
        return group_of_cell, labels
    edges = feature.bin_edges()
    labels = [f"{_number(inverse_transform(feature.transform, edges[a]))} – "
              f"{_number(inverse_transform(feature.transform, edges[b + 1]))}" for a, b in spans]
    return group_of_cell, labels


def characteristic_stability(reference_counts: dict[str, np.ndarray], current_counts: dict[str, np.ndarray],
                             schema, groups: int = DEFAULT_GROUPS, noise_std: float = 0.0) -> dict[str, StabilityResult]:
    """CSI of every model feature: reference and current statistics vectors in the layout of
    :func:`models.encoder.statistics_layout` (the current ones from
    :func:`models.encoder.feature_statistics` of the monitored table). ``noise_std``: the noise
    std per reference count (0 for exact counts; see the module docstring)."""
    return {f.name: histogram_stability(reference_counts[f.name], current_counts[f.name], noise_std,
                                        lambda basis, f=f: feature_groups(f, basis, groups),
                                        ordered=f.kind in ("numeric", "ordinal"))
            for f in schema.model_features()}


def moved_most(results: dict[str, StabilityResult], k: int = 5) -> list[str]:
    """The ``k`` characteristics with the largest PSI, largest first."""
    return sorted(results, key=lambda name: -results[name].psi)[:k]
