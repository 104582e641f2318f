"""Score bands: consecutive score bins merged into bands, for band distributions and calibration.

A PD is binned uniformly in logit(PD) on ``[-LOGIT_LIMIT, LOGIT_LIMIT]``
(:func:`models.metrics.score_bin_index`); bin ``i`` of ``B`` covers logits
``[-L + i·2L/B, -L + (i+1)·2L/B)`` (the outer bins extend to PD 0 and 1). A :class:`ScoreBands`
maps every bin to a band; bands of about equal population are the usual deciles
(:func:`equal_mass_bands` — of a reference histogram, e.g. the development score distribution
the model package carries, or of the scores at hand, :func:`bands_from_scores`).

Bands are numbered in increasing PD — decreasing score points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.metrics import LOGIT_LIMIT, SCORE_BINS, score_bin_index
from models.stability import DEFAULT_GROUPS, equal_mass_groups, group_spans


@dataclass
class ScoreBands:
    """``bin_group[i]``: the band of logit score bin ``i`` (``len(bin_group)`` bins in all)."""

    bin_group: np.ndarray

    @property
    def bins(self) -> int:
        return len(self.bin_group)

    @property
    def n_bands(self) -> int:
        return int(self.bin_group.max()) + 1 if self.bins else 0

    def band_of(self, pd_values) -> np.ndarray:
        """Band of each PD."""
        return self.bin_group[score_bin_index(pd_values, self.bins)]

    def counts(self, pd_values) -> np.ndarray:
        """Rows per bin (at this resolution) of a set of PDs."""
        return np.bincount(score_bin_index(pd_values, self.bins), minlength=self.bins).astype(np.float64)

    def pd_ranges(self) -> list[tuple[float, float]]:
        """``(lowest PD, highest PD)`` each band covers (0 and 1 at the ends)."""
        width = 2 * LOGIT_LIMIT / self.bins
        out = []
        for a, b in group_spans(self.bin_group):
            lo = 0.0 if a == 0 else _sigmoid(-LOGIT_LIMIT + a * width)
            hi = 1.0 if b == self.bins - 1 else _sigmoid(-LOGIT_LIMIT + (b + 1) * width)
            out.append((lo, hi))
        return out

    def labels(self, scale) -> list[str]:
        """Each band as a range of score points (``scale``: :class:`models.scoring.ScoreScale`),
        highest first; the open ends as ``≥`` / ``<``."""
        out = []
        for lo, hi in self.pd_ranges():
            top = None if lo <= 0 else float(scale.points(lo))
            bottom = None if hi >= 1 else float(scale.points(hi))
            if top is None:
                out.append(f"≥ {bottom:.0f}")
            elif bottom is None:
                out.append(f"< {top:.0f}")
            else:
                out.append(f"{bottom:.0f} – {top:.0f}")
        return out


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def equal_mass_bands(score_counts, n_bands: int = DEFAULT_GROUPS) -> ScoreBands:
    """Bands of about equal mass of a score histogram (any number of logit bins)."""
    return ScoreBands(equal_mass_groups(score_counts, n_bands))


def development_bands(reference, n_bands: int = DEFAULT_GROUPS) -> ScoreBands:
    """The score bands of a package's development population: about ``n_bands`` bands of equal
    development mass over the bins of its score histograms (:class:`models.reference.PopulationReference`),
    formed on the bins that stand out of their DP noise (:func:`models.reference.strong_counts`;
    the noise std of a bin of ``score_neg + score_pos`` is √2 times one histogram's). A function
    of the package alone — the same bands ``fedcredit monitor`` groups the score PSI into, and
    the public cells of a member's drift release (:func:`models.drift_view.band_cells`)."""
    from models.reference import strong_counts

    return equal_mass_bands(strong_counts(reference.score_counts, np.sqrt(2) * reference.score_noise_std), n_bands)


def bands_from_scores(pd_values, n_bands: int = DEFAULT_GROUPS, bins: int = SCORE_BINS) -> ScoreBands:
    """Bands of about equal population of the given PDs (at ``bins`` resolution)."""
    counts = np.bincount(score_bin_index(pd_values, bins), minlength=bins)
    return equal_mass_bands(counts, n_bands)


def mass_below_pd(counts, pd_cut: float) -> float:
    """Mass of a logit score histogram with PD below ``pd_cut`` (the bin holding the cut-off is
    split linearly in logit). Noisy counts are summed as released and the sum clipped at zero."""
    c = np.asarray(counts, dtype=np.float64)
    bins = len(c)
    z = float(np.log(pd_cut) - np.log1p(-pd_cut))
    pos = (np.clip(z, -LOGIT_LIMIT, LOGIT_LIMIT) + LOGIT_LIMIT) / (2 * LOGIT_LIMIT) * bins
    whole = int(np.floor(pos))
    below = c[:whole].sum()
    if whole < bins:
        below += (pos - whole) * c[whole]
    return max(float(below), 0.0)
