"""Tables shaped like the public credit datasets a researcher brings (made up here, seeded).

* :func:`standardised_table` — like a 30,000-borrower file of 10 standardised, heavy-tailed
  numeric features (z-scores of log-normal and t(1.5)-distributed quantities: most borrowers
  within a few hundredths of 0, a few at z in the hundreds), written with runs of spaces
  between aligned columns; the label ``Y`` is coded ``0`` = default (≈ 7 %), ``1`` = good, and
  depends on the quantities on a log scale.
* :func:`coded_categorical_table` — like a 1,000-borrower file of coded attributes (``A11`` …
  ``A14``, ``A30`` … ``A34``, …), a few amounts and counts, semicolon-separated; the label
  ``creditability`` is coded ``1`` = good / ``2`` = bad (30 % bad).
* :func:`three_party_tables` — one table already split into three parties' comma-separated
  files whose header starts with one junk name more than the records have fields (a title over
  the row labels); the label ``defaulted`` is text, ``yes`` / ``no``.

Every label depends on the features through a logistic model, so a model can learn it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _labels(rng: np.random.Generator, score: np.ndarray, rate: float) -> np.ndarray:
    """Bernoulli outcomes with P(default) = sigmoid(score + b), b set so the mean is ``rate``."""
    z = (score - score.mean()) / score.std()
    lo, hi = -20.0, 20.0
    for _ in range(60):
        b = (lo + hi) / 2
        if (1 / (1 + np.exp(-(1.6 * z + b)))).mean() > rate:
            hi = b
        else:
            lo = b
    return rng.random(len(z)) < 1 / (1 + np.exp(-(1.6 * z + b)))


def standardised_table(n: int = 30000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spreads = [1.0, 2.5, 1.5, 2.0, 1.2, 2.5, 1.8, 1.0, 2.2, 1.5]
    raw = np.column_stack([rng.standard_t(1.5, n) if j % 2 else rng.lognormal(0, spreads[j], n) for j in range(10)])
    z = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    weights = np.array([0.9, -0.6, 0.5, 0.0, -0.4, 0.3, 0.0, 0.25, -0.2, 0.1])
    # the outcome depends on the quantities on a log scale, where the bulk of the borrowers differ
    signal = np.column_stack([np.sign(raw[:, j]) * np.log1p(np.abs(raw[:, j])) if j % 2 else np.log(raw[:, j])
                              for j in range(10)])
    score = ((signal - signal.mean(axis=0)) / signal.std(axis=0)) @ weights
    default = _labels(rng, score, 0.068)
    frame = pd.DataFrame({f"X{j + 1}": np.round(z[:, j], 6) for j in range(10)})
    frame["Y"] = np.where(default, 0, 1)
    return frame


def write_aligned(frame: pd.DataFrame, path: Path) -> None:
    """Columns right-aligned and separated by runs of spaces, as fixed-width exports write them."""
    cells = [[str(c) for c in frame.columns]] + [[f"{v:g}" if isinstance(v, float) else str(v) for v in row]
                                                 for row in frame.itertuples(index=False)]
    widths = [max(len(r[j]) for r in cells) for j in range(frame.shape[1])]
    path.write_text("".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) + "\n" for r in cells))


def coded_categorical_table(n: int = 1000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)

    def codes(prefix: str, k: int, p=None) -> np.ndarray:
        return np.array([f"{prefix}{i}" for i in rng.choice(np.arange(k), n, p=p)])

    status = codes("A1", 4, [0.27, 0.27, 0.06, 0.40])
    history = codes("A3", 5, [0.04, 0.05, 0.53, 0.09, 0.29])
    purpose = np.array([f"A4{i}" for i in rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 9, 10], n)])
    savings = codes("A6", 5, [0.6, 0.1, 0.06, 0.05, 0.19])
    duration = np.clip(np.round(rng.gamma(3.0, 7.0, n)), 4, 72).astype(int)
    amount = np.clip(np.round(rng.lognormal(7.8, 0.75, n)), 250, 18424).astype(int)
    installment = rng.integers(1, 5, n)
    age = np.clip(np.round(rng.gamma(9.0, 4.0, n)), 19, 75).astype(int)
    credits = rng.choice([1, 2, 3, 4], n, p=[0.63, 0.33, 0.03, 0.01])
    score = (0.9 * (status == "A11") + 0.5 * (status == "A12") - 0.8 * (status == "A13")
             + 0.6 * (history == "A30") + 0.4 * (history == "A31") - 0.4 * (history == "A34")
             + 0.03 * duration + 0.00007 * amount - 0.3 * (savings == "A64") + 0.15 * installment
             - 0.015 * age)
    bad = _labels(rng, score, 0.30)
    return pd.DataFrame({"status": status, "duration": duration, "credit_history": history, "purpose": purpose,
                         "amount": amount, "savings": savings, "installment_rate": installment, "age": age,
                         "existing_credits": credits, "creditability": np.where(bad, 2, 1)})


def three_party_tables(n_per_party: tuple[int, ...] = (1400, 1000, 700), seed: int = 2) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    parts = []
    for k, n in enumerate(n_per_party):
        income = np.round(rng.lognormal(10.2 + 0.2 * k, 0.6, n), 2)
        debt_ratio = np.round(rng.beta(2, 5, n), 4)
        late = rng.poisson(0.3 + 0.1 * k, n)
        tenure = np.clip(np.round(rng.exponential(6, n)), 0, 40).astype(int)
        channel = rng.choice(["branch", "online", "broker"], n, p=[0.5, 0.35, 0.15])
        score = -0.6 * np.log(income) + 3.0 * debt_ratio + 0.8 * late - 0.05 * tenure + 0.3 * (channel == "broker")
        default = _labels(rng, score, 0.12 + 0.03 * k)
        parts.append(pd.DataFrame({"customer_id": [f"P{k + 1}-{i:05d}" for i in range(n)], "income": income,
                                   "debt_ratio": debt_ratio, "late_payments": late, "tenure_years": tenure,
                                   "channel": channel, "defaulted": np.where(default, "yes", "no")}))
    return parts


def write_with_title_column(frame: pd.DataFrame, path: Path, title: str = "party export") -> None:
    """Comma-separated, the header starting with one name (``title``) that no record has a field for."""
    body = frame.to_csv(index=False, lineterminator="\n")
    header, rest = body.split("\n", 1)
    path.write_text(f"{title},{header}\n{rest}")
