"""An institution's data as its node uses it: clean table → training rows and local holdout.

The holdout is chosen by the data itself, not by the run: a row is in the holdout when a hash
of its content (every column but the borrower id) and the node's ``split-seed`` falls below
the holdout fraction. So every run, every baseline and every benchmark sees the same training
rows for the same file, a coordinator cannot move borrowers between holdout and training by
changing the run config, and each borrower's side depends on that borrower's own row alone —
which is what lets the privacy ledger compose training and evaluation releases in parallel.
Because the id is left out, a re-export with re-keyed ids or with rows dropped or added
keeps every other borrower on the side it was on.

Rows are hashed by their *cell values*, not by how a table happens to store them
(:func:`canonical_cells`): a virtual node's synthetic table (int64 amounts, pandas ``str``
categories), the same rows read back from the CSV ``data synth`` wrote (float64, object), a
Parquet file (int32, categorical) or a table with its columns in another order give every
borrower the same side and the table the same fingerprint. The canonical form is the clean
table :mod:`clients.validation` produces, so a deployed node's split did not move when this
rule was introduced.

:func:`data_fingerprint` names the table *version* in the institution's lifetime ledger
(:mod:`privacy.ledger`): sha256 over the schema key and the sorted per-row hashes, so row
order and ids do not matter but any other changed value does. The ledger composes releases of
different versions conservatively (a borrower whose row changed may have changed side);
within one version, in parallel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from configs.schema import Schema

DEFAULT_HOLDOUT_FRACTION = 0.2


SPLIT_RULE = "row-hash/v2"  # v1 (earlier versions) hashed the id column too


def _content_columns(table: pd.DataFrame, schema: Schema) -> list[str]:
    """Every column but the id: the schema's columns in schema order, then any others by name."""
    known = [c for c in schema.columns if c in table.columns and c != schema.id_column]
    return known + sorted(str(c) for c in table.columns if c not in known and c != schema.id_column)


def _as_text(column: pd.Series) -> pd.Series:
    """Python strings (object dtype); a missing cell is ``None``."""
    values = column.astype(object).to_numpy()
    missing = pd.isna(values)
    return pd.Series([None if m else str(v) for v, m in zip(values, missing)], dtype=object)


def _as_number(column: pd.Series) -> pd.Series:
    """float64 with one zero (−0.0 → 0.0) and one NaN."""
    values = pd.to_numeric(column.astype(object) if column.dtype == bool else column).to_numpy(dtype=np.float64)
    return pd.Series(np.where(np.isnan(values), np.nan, values + 0.0))


def _as_label(column: pd.Series) -> pd.Series:
    """int64 when every value is a whole number (the clean table's label), else float64."""
    values = _as_number(column)
    whole = values.to_numpy()
    if np.all(np.isfinite(whole)) and np.all(whole == np.round(whole)):
        return pd.Series(whole.astype(np.int64))
    return values


def canonical_cells(table: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The content columns (:func:`_content_columns`) with one representation per cell value,
    the clean table's (:mod:`clients.validation`): categorical features as Python strings,
    the label as int64, every other feature as float64 (a column outside the schema: float64
    if numeric or boolean, else strings). What is hashed; the index is 0..n−1."""
    categorical = {f.name for f in schema.features if f.kind == "categorical"}
    label = schema.label.name
    out = {}
    for c in _content_columns(table, schema):
        column = table[c].reset_index(drop=True)
        numeric = pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype)
        if c == label and numeric:
            out[c] = _as_label(column)
        elif c in categorical or not numeric:
            out[c] = _as_text(column)
        else:
            out[c] = _as_number(column)
    return pd.DataFrame(out, index=pd.RangeIndex(len(table)))


def row_hashes(table: pd.DataFrame, schema: Schema) -> np.ndarray:
    """A 64-bit hash per row: pandas' stable hash of the row's canonical cells (every column but the id)."""
    return pd.util.hash_pandas_object(canonical_cells(table, schema), index=False).to_numpy(dtype=np.uint64)


def data_fingerprint(table: pd.DataFrame, schema: Schema) -> str:
    """Order-, id- and dtype-independent sha256 of a clean table and the schema key (hex)."""
    columns = _content_columns(table, schema)
    h = hashlib.sha256(f"{SPLIT_RULE}|{schema.key}".encode())
    h.update(np.sort(row_hashes(table, schema)).tobytes())
    h.update(str(len(columns)).encode() + ",".join(map(str, columns)).encode())
    return h.hexdigest()


def holdout_mask(table: pd.DataFrame, schema: Schema, fraction: float = DEFAULT_HOLDOUT_FRACTION,
                 seed: int = 0) -> np.ndarray:
    """Boolean mask of holdout rows: each row is in the holdout when a hash of (its content,
    seed), read as a number in [0, 1), is below ``fraction``.

    Each row's side depends on that row alone (not on its id) — adding or removing a borrower,
    or re-keying the ids, never moves another one between training and holdout — which is what
    lets the privacy ledger compose training and evaluation releases in parallel
    (:mod:`privacy.composition`).
    The holdout is ≈ ``fraction`` of each class (not exactly: it is a per-row draw).
    Deterministic for the same data and seed, independent of row order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("holdout fraction must be in (0, 1)")
    salt = _mix64(np.array([seed + 0x9E3779B9], dtype=np.uint64))[0]
    u = _mix64(row_hashes(table, schema) ^ salt).astype(np.float64) / 2.0**64
    return u < fraction


def split_id(fraction: float, seed: int) -> str:
    """Identity of the split rule and its parameters (recorded with every privacy event)."""
    return f"{SPLIT_RULE} fraction={fraction:g} seed={seed}"


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
    split: str = ""

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
        split=split_id(fraction, seed),
    )


def labels(table: pd.DataFrame, schema: Schema) -> np.ndarray:
    return table[schema.label.name].to_numpy(dtype=np.float32)
