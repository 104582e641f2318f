"""An institution's data as its node uses it: clean table → training rows and local holdout.

The holdout is chosen by the data itself, not by the run: each row's position in a seeded
permutation is derived from a hash of its content (or its borrower id) and the node's
``split-seed``, and the split is stratified by label. So every run, every baseline and every
benchmark sees the same training rows for the same file, and a coordinator cannot move
borrowers between holdout and training by changing the run config.

:func:`data_fingerprint` identifies the institution's dataset for lifetime privacy accounting:
sha256 over the schema key and the sorted per-row hashes of the clean table, so row order
does not matter but any changed value does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from configs.schema import Schema

DEFAULT_HOLDOUT_FRACTION = 0.2


def row_hashes(table: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash per row of the clean table (pandas' stable hash of all columns)."""
    return pd.util.hash_pandas_object(table, index=False).to_numpy(dtype=np.uint64)


def data_fingerprint(table: pd.DataFrame, schema: Schema) -> str:
    """Order-independent sha256 of a clean table and the schema key (hex)."""
    h = hashlib.sha256(schema.key.encode())
    h.update(np.sort(row_hashes(table)).tobytes())
    h.update(str(len(table.columns)).encode() + ",".join(map(str, table.columns)).encode())
    return h.hexdigest()


def holdout_mask(table: pd.DataFrame, schema: Schema, fraction: float = DEFAULT_HOLDOUT_FRACTION,
                 seed: int = 0) -> np.ndarray:
    """Boolean mask of holdout rows: ``round(fraction · n_class)`` rows of each label class.

    Within a class, rows are ranked by a hash of (row hash, seed); the lowest ranks form the
    holdout. Deterministic for the same data and seed, independent of row order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("holdout fraction must be in (0, 1)")
    salted = _mix64(row_hashes(table) ^ np.uint64(_mix64(np.array([seed + 0x9E3779B9], dtype=np.uint64))[0]))
    y = table[schema.label.name].to_numpy()
    mask = np.zeros(len(table), dtype=bool)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        k = int(round(fraction * len(idx)))
        order = idx[np.lexsort((idx, salted[idx]))]
        mask[order[:k]] = True
    return mask


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: decorrelates hashes for different seeds."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


@dataclass
class InstitutionSplit:
    """Training rows and local holdout of one institution (clean tables)."""

    institution_id: str
    train: pd.DataFrame
    holdout: pd.DataFrame
    fingerprint: str

    @property
    def n_train(self) -> int:
        return len(self.train)


def split_institution(table: pd.DataFrame, schema: Schema, institution_id: str,
                      fraction: float = DEFAULT_HOLDOUT_FRACTION, seed: int = 0) -> InstitutionSplit:
    mask = holdout_mask(table, schema, fraction, seed)
    return InstitutionSplit(
        institution_id=institution_id,
        train=table.loc[~mask].reset_index(drop=True),
        holdout=table.loc[mask].reset_index(drop=True),
        fingerprint=data_fingerprint(table, schema),
    )


def labels(table: pd.DataFrame, schema: Schema) -> np.ndarray:
    return table[schema.label.name].to_numpy(dtype=np.float32)
