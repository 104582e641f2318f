"""Backtesting PDs on realised outcomes: calibration by score band, Hosmer–Lemeshow, the cut-off.

Calibration by band
-------------------
Rows are grouped into score bands (:mod:`models.score_bands`). In band ``g`` with ``n_g`` rows,
``d_g`` defaults and predicted PDs ``p_i``: observed default rate ``d_g / n_g``, mean PD
``p̄_g = Σ p_i / n_g`` and expected defaults ``E_g = Σ p_i``. The observed rate gets a binomial
confidence interval — Clopper–Pearson ("exact", conservative; default) or Wilson
(:func:`binomial_intervals`). A band whose mean PD lies inside the interval is ``within``; a
mean PD below the interval ``under-predicts`` the risk, above it ``over-predicts``.

Hosmer–Lemeshow
---------------
``H = Σ_g (d_g − E_g)² / (E_g (1 − E_g / n_g))`` over the bands with ``0 < E_g < n_g``. On
outcomes the model was *not* fitted on (a backtest), H is approximately χ² with ``G`` degrees
of freedom (Hosmer & Lemeshow, *Applied Logistic Regression*, 2nd ed., §5.2.2: no parameters
were estimated from these data; ``G − 2`` applies to the development sample). A small p-value
says the PDs do not match the realised default rates band by band.

Cut-off
-------
At the package's cut-off PD ``c`` (approve when PD < c): approval rate, the bad rate among the
approved (the losses the policy accepts) and among the declined.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
INTERVAL_METHODS = ("exact", "wilson")


def binomial_intervals(k, n, confidence: float = CONFIDENCE, method: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """Confidence intervals of proportions ``k / n`` (arrays), NaN where ``n = 0``.

    ``exact`` (Clopper–Pearson): the ``α/2`` and ``1 − α/2`` quantiles of Beta(k, n − k + 1) and
    Beta(k + 1, n − k) (0 for k = 0, 1 for k = n; :func:`scipy.special.betaincinv`). ``wilson``: the
    score interval ``(p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)``.
    """
    from scipy.special import betaincinv

    if method not in INTERVAL_METHODS:
        raise ValueError(f"method must be one of {INTERVAL_METHODS}, got {method!r}")
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    alpha = 1.0 - confidence
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "exact":
            lo = np.where(k > 0, betaincinv(k, n - k + 1, alpha / 2), 0.0)
            hi = np.where(k < n, betaincinv(k + 1, n - k, 1 - alpha / 2), 1.0)
        else:
            z = NormalDist().inv_cdf(1 - alpha / 2)
            p = k / n
            centre = (p + z * z / (2 * n)) / (1 + z * z / n)
            half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
            lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    empty = n <= 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def binomial_interval(k: int, n: int, confidence: float = CONFIDENCE, method: str = "exact") -> tuple[float, float]:
    """One proportion's interval (:func:`binomial_intervals`)."""
    lo, hi = binomial_intervals([k], [n], confidence, method)
    return float(lo[0]), float(hi[0])


@dataclass
class BandCalibration:
    band: int
    label: str
    n: int
    defaults: int
    mean_pd: float
    observed: float
    ci_low: float
    ci_high: float

    @property
    def expected_defaults(self) -> float:
        return self.mean_pd * self.n

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "empty"
        if self.mean_pd < self.ci_low:
            return "under-predicts"
        return "over-predicts" if self.mean_pd > self.ci_high else "within"

    def to_dict(self) -> dict:
        return {**asdict(self), "expected_defaults": self.expected_defaults, "verdict": self.verdict}


def calibration_by_band(pd_values, y, band_of_row: np.ndarray, labels: list[str],
                        confidence: float = CONFIDENCE, method: str = "exact") -> list[BandCalibration]:
    """Observed vs predicted default rate per band (``band_of_row``: 0-based band of every row)."""
    p = np.asarray(pd_values, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    k = len(labels)
    n = np.bincount(band_of_row, minlength=k)
    d = np.bincount(band_of_row, weights=y, minlength=k)
    s = np.bincount(band_of_row, weights=p, minlength=k)
    lo, hi = binomial_intervals(d, n, confidence, method)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pd, observed = s / n, d / n
    return [BandCalibration(band=g + 1, label=labels[g], n=int(n[g]), defaults=int(round(d[g])),
                            mean_pd=float(mean_pd[g]), observed=float(observed[g]), ci_low=float(lo[g]),
                            ci_high=float(hi[g])) for g in range(k)]


@dataclass
class HosmerLemeshow:
    statistic: float
    dof: int
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def hosmer_lemeshow(bands: list[BandCalibration], out_of_sample: bool = True) -> HosmerLemeshow:
    """The Hosmer–Lemeshow statistic over the bands (see the module docstring for the degrees of
    freedom); the p-value is the χ² survival function (:func:`scipy.special.chdtrc`)."""
    from scipy.special import chdtrc

    used = [b for b in bands if b.n > 0 and 0 < b.expected_defaults < b.n]
    h = float(sum((b.defaults - b.expected_defaults) ** 2 / (b.expected_defaults * (1 - b.expected_defaults / b.n))
                  for b in used))
    dof = len(used) if out_of_sample else len(used) - 2
    p = float(chdtrc(dof, h)) if dof > 0 else float("nan")
    return HosmerLemeshow(h, dof, p)


@dataclass
class CutoffFigures:
    cutoff_pd: float
    approved: int
    declined: int
    approval_rate: float
    bad_rate_approved: float | None
    bad_rate_declined: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def cutoff_figures(pd_values, y, cutoff_pd: float) -> CutoffFigures:
    """Approval rate and bad rates at a cut-off PD (approve when PD < cut-off)."""
    approve = np.asarray(pd_values) < cutoff_pd
    y = np.asarray(y).astype(bool)
    a, d = int(approve.sum()), int((~approve).sum())
    return CutoffFigures(cutoff_pd, a, d, a / max(a + d, 1),
                         float(y[approve].mean()) if a else None, float(y[~approve].mean()) if d else None)
