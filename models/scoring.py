"""Score scaling (points to double the odds) and credit decisions.

A PD ``p`` becomes points with the usual scorecard scaling

    odds  = (1 − p) / p                    (good : bad)
    score = offset + factor · ln(odds),    factor = PDO / ln 2,
                                           offset = base_score − factor · ln(base_odds)

so that ``base_odds`` (default 50:1) scores ``base_score`` (default 600) and every ``PDO``
(default 20) points double the odds. The decision approves an applicant whose PD is below the
cut-off PD (equivalently, whose score is at or above the cut-off score).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

_EPS = 1e-12


@dataclass(frozen=True)
class ScoreScale:
    base_score: float = 600.0
    base_odds: float = 50.0
    pdo: float = 20.0

    def __post_init__(self) -> None:
        if self.pdo <= 0 or self.base_odds <= 0:
            raise ValueError("PDO and base odds must be positive")

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)

    def points(self, pd_values) -> np.ndarray:
        p = np.clip(np.asarray(pd_values, dtype=float), _EPS, 1 - _EPS)
        return self.offset + self.factor * (np.log1p(-p) - np.log(p))

    def pd_at(self, score: float) -> float:
        """The PD that scores exactly ``score`` points."""
        odds = math.exp((score - self.offset) / self.factor)
        return 1.0 / (1.0 + odds)

    def to_dict(self) -> dict:
        return asdict(self)


def decisions(pd_values, cutoff_pd: float) -> np.ndarray:
    """'approve' where PD < cutoff_pd, else 'decline'."""
    if not 0.0 < cutoff_pd < 1.0:
        raise ValueError("the cut-off PD must lie strictly between 0 and 1")
    return np.where(np.asarray(pd_values) < cutoff_pd, "approve", "decline")
