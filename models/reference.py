"""The population a model was built on, as the model package carries it: the monitoring baseline.

Drift monitoring at an institution compares today's applicants with the population the model
was developed on — without any borrower-level data from the consortium. What the package
carries is what the federated run already released, so it costs no further privacy:

* ``feature_counts`` — per model feature the summed count vectors of the statistics query
  (:func:`models.encoder.feature_statistics` at every institution, Gaussian-noised under DP,
  summed by the server): exactly the numbers the encoder was fitted from. Layout:
  :func:`models.encoder.statistics_layout` (schema-declared bins in the transformed space for
  numeric features, one cell per level / category / value otherwise).
* ``score_neg`` / ``score_pos`` — the pooled class-conditional holdout score histograms of the
  *exported* model (the final evaluation, after recalibration): bins uniform in logit(PD) on
  ``[-LOGIT_LIMIT, LOGIT_LIMIT]`` (:func:`models.metrics.score_bin_index`), 8,000 bins when the
  evaluation was exact (simulation), fewer (e.g. 20) when the nodes noised it. Their sum is
  the development score distribution; ``score_pos / (score_neg + score_pos)`` per bin the
  development default rate.

Either part may be absent (a run that released no evaluation has no score distribution).

Noisy counts
------------
Under DP every count carries Gaussian noise (may be negative or fractional). Clipping each
count at zero would bias a histogram with many empty cells upwards everywhere (the positive half
of the noise of every empty cell stays): with 128 bins and noise std 80, thousands of phantom
rows; zeroing every cell below a threshold instead loses the real mass of a spread-out feature's
many small cells. Instead, groups of cells are formed on the *strong* cells only
(:func:`strong_counts`: those that reach ``k·s``, ``k`` = :data:`DENOISE_SIGMAS` = 4; a cell of
pure noise passes with probability 3·10⁻⁵), and the released counts are summed into the groups
as they are, so that group sums stay unbiased (they are clipped at zero only as sums);
:func:`denoise_counts` restricts a histogram to its support (first to last strong cell), the
plausible true histogram the noise is replayed on. ``s`` is the noise std per count, estimated from the counts themselves
(:func:`estimate_noise_std`: only noise makes a count negative, and the negative ones are
mostly empty cells' noise — ``s ≈ sqrt(mean(v² | v < 0))``; 0 for exact counts). What the
noise still costs is measured, not assumed: :func:`models.stability.reference_noise_floor`
replays noise + denoising on the reference itself.

:func:`reference_from_table` builds the same object from a local table the institution holds
(its own development sample or last month's book), for ``fedcredit monitor --baseline``.

File: ``reference.json`` in the model package (format :data:`REFERENCE_FORMAT`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from configs.schema import Schema
from models.encoder import feature_statistics, statistics_layout
from models.metrics import SCORE_BINS, score_bin_index

REFERENCE_FORMAT = "fedcredit-reference/1"
REFERENCE_FILE = "reference.json"
DENOISE_SIGMAS = 4.0


def clean_counts(counts) -> np.ndarray:
    """Counts as float64 with negative (noise) values set to zero."""
    return np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)


def estimate_noise_std(arrays) -> float:
    """Noise std per count of DP-noised count vectors: the root mean square of the negative
    counts (0 when none is negative, e.g. exact counts)."""
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    neg = values[values < 0]
    return float(np.sqrt(np.mean(neg ** 2))) if len(neg) else 0.0


def strong_counts(counts, noise_std: float, sigmas: float = DENOISE_SIGMAS) -> np.ndarray:
    """The cells that stand out of the noise: counts of at least ``sigmas · noise_std``, others 0
    (with ``noise_std`` 0, exact counts: the counts clipped at zero)."""
    c = np.asarray(counts, dtype=np.float64)
    return np.where(c >= sigmas * noise_std, c, 0.0) if noise_std > 0 else clean_counts(c)


def denoise_counts(counts, noise_std: float, sigmas: float = DENOISE_SIGMAS) -> np.ndarray:
    """An ordered histogram of noisy counts restricted to its support.

    The support runs from the first to the last strong cell (:func:`strong_counts`); outside it
    every cell is set to 0 (there, counts are noise). Inside it the counts stay as released —
    possibly negative — so that sums over ranges of cells stay unbiased; clip only such sums.
    With ``noise_std`` 0 (exact counts) the counts are returned unchanged.
    """
    c = np.asarray(counts, dtype=np.float64)
    if noise_std <= 0:
        return c.copy()
    strong = np.flatnonzero(strong_counts(c, noise_std, sigmas))
    out = np.zeros_like(c)
    if len(strong):
        out[strong[0]:strong[-1] + 1] = c[strong[0]:strong[-1] + 1]
    return out


@dataclass
class PopulationReference:
    """What the package knows about its development population (see the module docstring).

    ``source`` describes provenance in words and figures (``features``, ``scores``: a sentence
    each; ``dp``: whether the counts were noised; ``contributors``: how many institutions).
    """

    feature_counts: dict[str, np.ndarray] = field(default_factory=dict)
    score_neg: np.ndarray | None = None
    score_pos: np.ndarray | None = None
    source: dict = field(default_factory=dict)

    @property
    def has_scores(self) -> bool:
        return self.score_neg is not None and self.score_pos is not None

    @property
    def feature_noise_std(self) -> float:
        """Estimated noise std of one feature count (0 for exact counts)."""
        return estimate_noise_std(list(self.feature_counts.values()))

    @property
    def score_noise_std(self) -> float:
        """Estimated noise std of one score-histogram count (0 for exact counts)."""
        return estimate_noise_std([self.score_neg, self.score_pos]) if self.has_scores else 0.0

    @property
    def score_counts(self) -> np.ndarray:
        """Development score distribution (both classes) as released: sum ranges of bins, then
        clip (see the module docstring); its noise std per bin is ``√2 · score_noise_std``."""
        if not self.has_scores:
            raise ValueError("this reference has no score distribution")
        return np.asarray(self.score_neg, dtype=np.float64) + np.asarray(self.score_pos, dtype=np.float64)

    def check_layout(self, schema: Schema) -> str:
        """Empty string when ``feature_counts`` has the schema's statistics layout, else what differs."""
        layout = statistics_layout(schema)
        for name, size in layout.items():
            if name not in self.feature_counts:
                return f"no counts for feature '{name}'"
            if np.shape(self.feature_counts[name]) != (size,):
                return f"feature '{name}' has {np.size(self.feature_counts[name])} counts, the schema {size}"
        extra = sorted(set(self.feature_counts) - set(layout))
        return f"counts for features the schema does not model: {', '.join(extra)}" if extra else ""

    def to_dict(self) -> dict:
        return {
            "format": REFERENCE_FORMAT,
            "feature_counts": {k: np.asarray(v, dtype=float).tolist() for k, v in self.feature_counts.items()},
            "score_neg": None if self.score_neg is None else np.asarray(self.score_neg, dtype=float).tolist(),
            "score_pos": None if self.score_pos is None else np.asarray(self.score_pos, dtype=float).tolist(),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PopulationReference":
        if d.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"unknown reference format {d.get('format')!r} (expected {REFERENCE_FORMAT})")
        neg, pos = d.get("score_neg"), d.get("score_pos")
        if (neg is None) != (pos is None) or (neg is not None and len(neg) != len(pos)):
            raise ValueError("score_neg and score_pos must both be present with the same length, or both absent")
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in (d.get("feature_counts") or {}).items()}
        if any(a.ndim != 1 or not np.isfinite(a).all() for a in arrays.values()):
            raise ValueError("feature counts must be finite vectors")
        return cls(feature_counts=arrays,
                   score_neg=None if neg is None else np.asarray(neg, dtype=np.float64),
                   score_pos=None if pos is None else np.asarray(pos, dtype=np.float64),
                   source=dict(d.get("source") or {}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PopulationReference":
        return cls.from_dict(json.loads(text))


def score_histograms(pd_values, y, bins: int = SCORE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional score histograms (non-defaulters, defaulters) over ``bins`` logit bins."""
    idx = score_bin_index(pd_values, bins)
    y = np.asarray(y).astype(bool)
    return (np.bincount(idx[~y], minlength=bins).astype(np.float64),
            np.bincount(idx[y], minlength=bins).astype(np.float64))


def reference_from_table(table, schema: Schema, pd_values=None, y=None, source: str = "") -> PopulationReference:
    """An exact reference from a clean local table: its feature counts and, with ``pd_values``,
    its score distribution (all rows count as non-defaulters when ``y`` is None)."""
    ref = PopulationReference(feature_counts=feature_statistics(table, schema),
                              source={"features": f"exact counts of {source or 'a local table'} ({len(table)} rows)",
                                      "dp": False, "contributors": 1})
    if pd_values is not None:
        ref.score_neg, ref.score_pos = score_histograms(pd_values, np.zeros(len(pd_values)) if y is None else y)
        ref.source["scores"] = f"the package's scores of {source or 'a local table'} (exact, {SCORE_BINS} bins)"
    return ref
