"""Tables for tests that need data but not a real institution's: random valid rows of a schema,
and one synthetic institution written as a CSV file (the node reads files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def signed_amounts(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    """Log-normal amounts within ``[low, high]``; a quarter of them negative where ``low < 0``."""
    if low < 0:
        return np.clip(rng.lognormal(8, 2, size=n) * rng.choice([1, 1, 1, -0.1], size=n), low, high)
    return np.clip(rng.lognormal(np.log(max(low, 1) + 30), 1, size=n), low, high)


def rounded_amounts(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    """Whole amounts around 3,000 (log-normal, σ 1.5) within ``[low, high]``: money-like values."""
    return np.round(np.clip(rng.lognormal(np.log(max(low, 1) + 3000), 1.5, size=n), low, high))


def random_table(schema, n: int, seed: int, *, id_prefix: str = "b", numeric=signed_amounts) -> pd.DataFrame:
    """``n`` clean rows of ``schema`` (columns in ``schema.columns`` order): every value valid and drawn
    at random, the label independent of the features — so only memorisation fits it. Ids are
    ``{id_prefix}{seed}-{i}``; ``numeric(rng, low, high, n)`` draws each numeric column."""
    rng = np.random.default_rng(seed)
    cols = {schema.id_column: [f"{id_prefix}{seed}-{i}" for i in range(n)]} if schema.id_column else {}
    for f in schema.features:
        if f.kind == "categorical":
            cols[f.name] = rng.choice(list(f.categories), size=n)
        elif f.kind == "ordinal":
            cols[f.name] = rng.integers(int(f.range[0]), int(f.range[1]) + 1, size=n).astype(float)
        elif f.kind == "binary":
            cols[f.name] = rng.integers(0, 2, size=n).astype(float)
        else:
            cols[f.name] = numeric(rng, *f.range, n)
    cols[schema.label.name] = rng.integers(0, 2, size=n)
    return pd.DataFrame(cols)[schema.columns]


def synthetic_bank_csv(directory: Path, rows: int, seed: int, name: str = "bank.csv",
                       archetype: str = "regional-bank") -> Path:
    """One synthetic institution of ``archetype`` (:mod:`simulation.synthetic`, institution 0 of
    ``seed``) written as ``DIRECTORY/NAME``; returns the path."""
    from configs.schema import load_schema
    from simulation.archetypes import load_archetypes
    from simulation.synthetic import generate_institution, institution_rng, write_csv

    a = next(x for x in load_archetypes() if x.id == archetype)
    table, _ = generate_institution(a, rows, institution_rng(seed, 0), load_schema())
    path = Path(directory) / name
    write_csv(table, path)
    return path
