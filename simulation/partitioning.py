"""Splitting one clean table into K institutions, for research on heterogeneity (non-IID data).

Methods (each seeded; every row goes to exactly one institution):

``iid``
    A seeded shuffle, then :class:`flwr_datasets.partitioner.IidPartitioner` (K contiguous
    shards of the shuffled rows; sizes differ by at most one).
``dirichlet``
    Label skew: :class:`flwr_datasets.partitioner.DirichletPartitioner` on the label column —
    for each class, the shares of its rows going to the K institutions are drawn from
    Dirichlet(α·1). Small α (0.1) gives institutions with very different default rates, large α
    (100) is close to IID. Sizes vary too; ``min_rows`` is enforced by re-drawing (at most 10
    attempts), after which a clear error asks for a larger α or fewer institutions.
``quantity``
    Quantity skew: institution sizes ``min_rows + Multinomial(n − K·min_rows, p)`` with
    p ~ Dirichlet(α·1), then :class:`flwr_datasets.partitioner.SizePartitioner` over a seeded
    shuffle. Default rates stay close to the pooled one; only sizes differ.
``feature``
    Covariate skew by one column. A numeric or ordinal column gives K quantile bands
    (:class:`flwr_datasets.partitioner.ContinuousPartitioner`: rows sorted by the standardised
    value blended with Gaussian noise, ``strictness`` 1 = pure bands, 0 = IID; e.g. credit-limit
    bands). A categorical or binary column gives one institution per value
    (:class:`flwr_datasets.partitioner.NaturalIdPartitioner`); K must then equal the number of
    distinct values.

The partitioners run on a :class:`datasets.Dataset` holding only the columns they need plus the
row number, in Arrow format (the default Python format makes flwr-datasets iterate row by row).
Results are lists of sorted row-index arrays, so each institution keeps the source order.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from configs.errors import UserError

METHODS = ("iid", "dirichlet", "quantity", "feature")
#: the methods that give every institution at least ``min_rows`` rows
MIN_ROWS_METHODS = ("dirichlet", "quantity")
DEFAULT_ALPHA = 0.5
DEFAULT_MIN_ROWS = 10
_ROW = "__fedcredit_row__"


@dataclass
class Partition:
    """The result of partitioning: ``indices[k]`` are the rows (sorted) of institution k."""

    method: str
    seed: int
    indices: list[np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)
    #: per institution: a description of what it holds (feature band or value), if any
    groups: list[dict[str, Any]] | None = None

    @property
    def sizes(self) -> list[int]:
        return [int(len(ix)) for ix in self.indices]

    def tables(self, table: pd.DataFrame) -> list[pd.DataFrame]:
        """The institution tables (rows of ``table`` in their original order, index reset)."""
        return [table.iloc[ix].reset_index(drop=True) for ix in self.indices]


def _dataset(table: pd.DataFrame, columns: list[str]):
    import datasets

    frame = pd.DataFrame({c: table[c].to_numpy() for c in columns})
    frame[_ROW] = np.arange(len(table), dtype=np.int64)
    return datasets.Dataset.from_pandas(frame, preserve_index=False).with_format("arrow")


def _collect(partitioner, dataset, k: int) -> list[np.ndarray]:
    partitioner.dataset = dataset
    # NaturalIdPartitioner draws a tqdm bar on stderr; keep the command's output clean.
    with contextlib.redirect_stderr(io.StringIO()):
        out = [np.sort(partitioner.load_partition(i)[_ROW].to_numpy()).astype(np.int64) for i in range(k)]
    return out


def _check_common(n: int, k: int, seed: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"--institutions must be at least 1, got {k}")
    if n < k:
        raise UserError(f"cannot split {n} rows into {k} institutions; use at most {n} institutions")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise UserError(f"--alpha must be a positive number, got {alpha!r} (small = skewed, large = near IID)")
    return alpha


def iid_partition(table: pd.DataFrame, k: int, *, seed: int = 0) -> Partition:
    """K shards of a seeded shuffle (sizes differ by at most one row)."""
    from flwr_datasets.partitioner import IidPartitioner

    _check_common(len(table), k, seed)
    ds = _dataset(table, []).shuffle(seed=int(seed))
    return Partition("iid", int(seed), _collect(IidPartitioner(num_partitions=int(k)), ds, int(k)))


def dirichlet_partition(table: pd.DataFrame, k: int, *, label: str, alpha: float = DEFAULT_ALPHA,
                        seed: int = 0, min_rows: int = DEFAULT_MIN_ROWS) -> Partition:
    """Label skew: each class's rows split over the K institutions by Dirichlet(α) shares."""
    from flwr_datasets.partitioner import DirichletPartitioner

    _check_common(len(table), k, seed)
    alpha = _check_alpha(alpha)
    if label not in table.columns:
        raise UserError(f"the table has no label column '{label}'; Dirichlet label skew needs it")
    if min_rows * k > len(table):
        raise UserError(f"{k} institutions of at least {min_rows} rows need {min_rows * k} rows; the table has "
                        f"{len(table)}. Lower --min-rows or --institutions")
    p = DirichletPartitioner(num_partitions=int(k), partition_by=label, alpha=alpha,
                             min_partition_size=int(min_rows), self_balancing=False, shuffle=False,
                             seed=int(seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            idx = _collect(p, _dataset(table, [label]), int(k))
        except ValueError as exc:
            if "attempts" not in str(exc):
                raise
            raise UserError(
                f"Dirichlet label skew with --alpha {alpha:g} could not give each of the {k} institutions "
                f"at least {min_rows} rows in 11 draws (flwr-datasets' limit). Raise --alpha, lower "
                f"--institutions or --min-rows, or try another --seed"
            ) from None
    retries = sum(1 for w in caught if "min_partition_size" in str(w.message))
    return Partition("dirichlet", int(seed), idx, {"alpha": alpha, "min_rows": int(min_rows),
                                                   "label": label, "redraws": retries})


def quantity_partition(table: pd.DataFrame, k: int, *, alpha: float = DEFAULT_ALPHA, seed: int = 0,
                       min_rows: int = DEFAULT_MIN_ROWS) -> Partition:
    """Quantity skew: Dirichlet(α) institution sizes (each ≥ ``min_rows``) over a seeded shuffle."""
    from flwr_datasets.partitioner import SizePartitioner

    n = len(table)
    _check_common(n, k, seed)
    alpha = _check_alpha(alpha)
    if min_rows < 1:
        raise UserError(f"--min-rows must be at least 1 for quantity skew, got {min_rows}")
    if min_rows * k > n:
        raise UserError(f"{k} institutions of at least {min_rows} rows need {min_rows * k} rows; the table has "
                        f"{n}. Lower --min-rows or --institutions")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0x5153,)))
    shares = rng.dirichlet(np.full(int(k), alpha))
    sizes = min_rows + rng.multinomial(n - min_rows * k, shares)
    ds = _dataset(table, []).shuffle(seed=int(seed))
    p = SizePartitioner(partition_sizes=[int(s) for s in sizes])
    return Partition("quantity", int(seed), _collect(p, ds, int(k)),
                     {"alpha": alpha, "min_rows": int(min_rows)})


def feature_partition(table: pd.DataFrame, k: int, *, feature: str, seed: int = 0,
                      strictness: float = 1.0, categorical: bool | None = None) -> Partition:
    """Covariate skew by ``feature``: quantile bands of a numeric column, or one institution per value.

    ``categorical`` forces the kind (default: object/categorical/bool dtypes and columns with
    two distinct values are treated as categorical).
    """
    from flwr_datasets.partitioner import ContinuousPartitioner, NaturalIdPartitioner

    _check_common(len(table), k, seed)
    if feature not in table.columns:
        raise UserError(f"--feature '{feature}' is not a column of the table; columns: {', '.join(map(str, table.columns))}")
    col = table[feature]
    if categorical is None:
        categorical = (not pd.api.types.is_numeric_dtype(col)) or pd.api.types.is_bool_dtype(col) or col.nunique() <= 2
    if categorical:
        values = sorted(pd.unique(col.astype(str)))
        if len(values) != k:
            raise UserError(f"--feature {feature} has {len(values)} distinct values ({', '.join(values[:10])}"
                            f"{', ...' if len(values) > 10 else ''}), one institution each: use --institutions "
                            f"{len(values)}")
        frame = pd.DataFrame({feature: col.astype(str).to_numpy()})
        p = NaturalIdPartitioner(partition_by=feature)
        idx = _collect(p, _dataset(frame, [feature]), k)
        names = [p.partition_id_to_natural_id[i] for i in range(k)]
        order = np.argsort(names, kind="stable")
        idx = [idx[i] for i in order]
        groups = [{"feature": feature, "value": names[i]} for i in order]
        return Partition("feature", int(seed), idx, {"feature": feature, "kind": "categorical"}, groups)

    strictness = float(strictness)
    if not 0.0 <= strictness <= 1.0:
        raise UserError(f"--strictness must be between 0 (IID) and 1 (pure bands), got {strictness}")
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise UserError(f"--feature {feature} has missing or non-numeric values; validate the table first")
    if strictness > 0 and values.std() < 1e-12:
        raise UserError(f"--feature {feature} is constant; it cannot split the table")
    frame = pd.DataFrame({feature: values})
    p = ContinuousPartitioner(num_partitions=int(k), partition_by=feature, strictness=strictness,
                              shuffle=False, seed=int(seed))
    idx = _collect(p, _dataset(frame, [feature]), int(k))
    groups = []
    for ix in idx:
        v = values[ix]
        groups.append({"feature": feature, "min": float(v.min()) if v.size else None,
                       "median": float(np.median(v)) if v.size else None,
                       "max": float(v.max()) if v.size else None})
    return Partition("feature", int(seed), idx, {"feature": feature, "kind": "numeric", "strictness": strictness},
                     groups)


def partition_table(table: pd.DataFrame, k: int, method: str, *, seed: int = 0, label: str | None = None,
                    alpha: float = DEFAULT_ALPHA, feature: str | None = None, strictness: float = 1.0,
                    min_rows: int = DEFAULT_MIN_ROWS) -> Partition:
    """Dispatch to one of :data:`METHODS` (see the module docstring)."""
    if method == "iid":
        part = iid_partition(table, k, seed=seed)
    elif method == "dirichlet":
        if label is None:
            raise UserError("the dirichlet method needs the label column")
        part = dirichlet_partition(table, k, label=label, alpha=alpha, seed=seed, min_rows=min_rows)
    elif method == "quantity":
        part = quantity_partition(table, k, alpha=alpha, seed=seed, min_rows=min_rows)
    elif method == "feature":
        if not feature:
            raise UserError("--by feature needs --feature NAME (e.g. credit_limit for credit-limit bands)")
        part = feature_partition(table, k, feature=feature, seed=seed, strictness=strictness)
    else:
        raise UserError(f"unknown partition method '{method}'; choose one of {', '.join(METHODS)}")
    check_partition(part, len(table))
    return part


def check_partition(part: Partition, n: int) -> None:
    """Assert that every row 0..n-1 is assigned to exactly one institution (a bug otherwise)."""
    allrows = np.concatenate(part.indices) if part.indices else np.empty(0, dtype=np.int64)
    if allrows.size != n or not np.array_equal(np.sort(allrows), np.arange(n)):
        raise AssertionError(f"partition {part.method} does not assign each of {n} rows exactly once")


def label_skew(part: Partition, y: np.ndarray) -> float:
    """Size-weighted mean total-variation distance between each institution's label distribution and
    the pooled one (0 = identical label mix; 1 = fully separated)."""
    y = np.asarray(y)
    classes = np.unique(y)
    pooled = np.array([(y == c).mean() for c in classes])
    n = y.size
    tv = 0.0
    for ix in part.indices:
        if len(ix) == 0:
            continue
        local = np.array([(y[ix] == c).mean() for c in classes])
        tv += len(ix) / n * 0.5 * np.abs(local - pooled).sum()
    return float(tv)


PARTITION_GENERATOR = "fedcredit-partition"


def _whole_numbers(table: pd.DataFrame, schema) -> pd.DataFrame:
    """Numeric/ordinal/binary columns holding only whole numbers as int64 (so 20000.0 → 20000)."""
    out = table.copy()
    for f in schema.features:
        if f.name in out.columns and f.is_numeric_kind:
            v = out[f.name].to_numpy(dtype=float)
            if np.isfinite(v).all() and (np.abs(v) < 2**53).all() and np.array_equal(v, np.round(v)):
                out[f.name] = v.astype(np.int64)
    return out


def write_partition(table: pd.DataFrame, out_dir, *, schema, k: int, method: str, seed: int = 0,
                    alpha: float = DEFAULT_ALPHA, feature: str | None = None, strictness: float = 1.0,
                    min_rows: int = DEFAULT_MIN_ROWS, source: str | None = None,
                    force: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Partition a clean ``table`` and write ``institution-<k>.csv`` files and ``manifest.json``.

    Returns the manifest. Files keep the table's columns (the schema's clean columns) and the
    source row order. ``extra`` adds keys to the manifest (a sweep records the fingerprint of
    the settings the partition was made with).
    """
    from pathlib import Path

    from fedcredit.atomic_write import write_json_atomic
    from simulation.synthetic import file_sha256, prepare_out_dir, write_csv

    label = schema.label.name
    part = partition_table(table, k, method, seed=seed, label=label if label in table.columns else None,
                           alpha=alpha, feature=feature, strictness=strictness, min_rows=min_rows)
    out = Path(out_dir)
    prepare_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    clean = _whole_numbers(table, schema)
    width = len(str(k))
    y = clean[label].to_numpy() if label in clean.columns else None
    entries = []
    warnings_out = []
    for i, ix in enumerate(part.indices):
        iid = f"institution-{i + 1:0{width}d}"
        frame = clean.iloc[ix].reset_index(drop=True)
        write_csv(frame, out / f"{iid}.csv")
        defaults = int((y[ix] == 1).sum()) if y is not None else None
        entry: dict[str, Any] = {
            "id": iid, "rows": int(len(ix)), "defaults": defaults,
            "default_rate": (round(defaults / len(ix), 6) if defaults is not None and len(ix) else None),
            "file": f"{iid}.csv",
        }
        if part.groups is not None:
            entry["group"] = part.groups[i]
        if len(ix) < 500 or (defaults is not None and defaults < 50):
            warnings_out.append(f"{iid}: {len(ix)} rows, {defaults} defaults — below the DP-training "
                                f"minimum of 500 rows and 50 defaults")
        if defaults is not None and len(ix) and defaults in (0, len(ix)):
            which = "every row is a default (default rate 100%)" if defaults else "no row is a default (default rate 0%)"
            hint = " (a larger --alpha makes this less likely)" if part.method == "dirichlet" else ""
            warnings_out.append(f"{iid}: a single class — {which}; a model cannot be trained or evaluated on one "
                                f"class and `fedcredit data validate` refuses such a table{hint}")
        entries.append(entry)
    manifest: dict[str, Any] = {
        "generator": PARTITION_GENERATOR,
        "schema": schema.key,
        "source": str(source) if source is not None else None,
        "source_sha256": file_sha256(source) if source is not None and Path(source).is_file() else None,
        "method": part.method,
        "seed": int(seed),
        "params": part.params,
        "rows": int(len(table)),
        "label_skew": round(label_skew(part, y), 6) if y is not None else None,
        "institutions": entries,
        "warnings": warnings_out,
        **(extra or {}),
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
