"""Splitting one clean table into K institutions, for research on heterogeneity (non-IID data).

Methods (each seeded; every row goes to exactly one institution):

``iid``
    A seeded shuffle, then :class:`flwr_datasets.partitioner.IidPartitioner` (K contiguous
    shards of the shuffled rows; sizes differ by at most one).
``dirichlet`` (also called ``label``)
    Label skew: :class:`flwr_datasets.partitioner.DirichletPartitioner` on the label column —
    for each class, the shares of its rows going to the K institutions are drawn from
    Dirichlet(α·1). Small α (0.1) gives institutions with very different default rates, large α
    (100) is close to IID. Sizes vary too. Every institution must get at least ``min_rows``
    rows and ``min_positives`` defaults (and as many non-defaults): a draw that misses is
    redrawn with the next seed of a seeded sequence (draw 0 uses ``seed`` itself; at most
    :data:`MAX_REDRAWS`), and the seed of the draw kept is recorded. When no draw fits, the
    error says which ``--alpha`` (with which ``--seed``) does — found by trying — or that no α
    can, because the table has too few defaults.
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
#: other names of methods (``--by label`` is Dirichlet label skew)
METHOD_ALIASES = {"label": "dirichlet"}
#: the methods that give every institution at least ``min_rows`` rows
MIN_ROWS_METHODS = ("dirichlet", "quantity")
DEFAULT_ALPHA = 0.5
DEFAULT_MIN_ROWS = 10
#: fewest defaults (and non-defaults) per institution of a label-skew partition: the DP-training
#: minimum of ``fedcredit data validate`` (clients.validation.DEFAULT_MIN_POSITIVES)
DEFAULT_MIN_POSITIVES = 50
#: seeded redraws of a label-skew partition before it is refused
MAX_REDRAWS = 50
#: to advise a refused partition, α is multiplied by this factor until it passes :data:`SUGGEST_MAX_ALPHA`
#: (near IID), each with up to :data:`SUGGEST_REDRAWS` seeds
SUGGEST_ALPHA_FACTOR = 4
SUGGEST_MAX_ALPHA = 1000.0
SUGGEST_REDRAWS = 5
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
                        seed: int = 0, min_rows: int = DEFAULT_MIN_ROWS,
                        min_positives: int = 0) -> Partition:
    """Label skew: each class's rows split over the K institutions by Dirichlet(α) shares,
    redrawn (seeded) until every institution has ``min_rows`` rows and ``min_positives`` of each
    class (the label's value 1 is a default; see the module docstring)."""
    _check_common(len(table), k, seed)
    alpha = _check_alpha(alpha)
    if label not in table.columns:
        raise UserError(f"the table has no label column '{label}'; Dirichlet label skew needs it")
    if min_rows * k > len(table):
        raise UserError(f"{k} institutions of at least {min_rows} rows need {min_rows * k} rows; the table has "
                        f"{len(table)}. Lower --min-rows or --institutions")
    y = table[label].to_numpy()
    _check_enough_of_each_class(y, k, int(min_positives))
    dataset = _dataset(table, [label])
    for attempt in range(MAX_REDRAWS):
        draw = draw_seed(int(seed), attempt)
        idx = _dirichlet_draw(dataset, label, int(k), alpha, draw, int(min_rows))
        if idx is not None and _has_both_classes(idx, y, int(min_positives)):
            return Partition("dirichlet", int(seed), idx, {
                "alpha": alpha, "min_rows": int(min_rows), "min_positives": int(min_positives), "label": label,
                "redraws": attempt, "draw_seed": draw})
    raise UserError(_refusal(dataset, label, y, int(k), alpha, int(seed), int(min_rows), int(min_positives)))


def draw_seed(seed: int, attempt: int) -> int:
    """The seed of redraw ``attempt`` (0: ``seed`` itself; then a seeded sequence from it)."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(0x4C42, attempt)).generate_state(1)[0])


def _dirichlet_draw(dataset, label: str, k: int, alpha: float, seed: int, min_rows: int) -> list[np.ndarray] | None:
    """One flwr-datasets Dirichlet partition (its own ≤ 10 redraws for ``min_rows``); None when
    it gives up."""
    from flwr_datasets.partitioner import DirichletPartitioner

    p = DirichletPartitioner(num_partitions=k, partition_by=label, alpha=alpha,
                             min_partition_size=min_rows, self_balancing=False, shuffle=False, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _collect(p, dataset, k)
        except ValueError as exc:
            if "attempts" not in str(exc):
                raise
            return None


def _has_both_classes(indices: list[np.ndarray], y: np.ndarray, minimum: int) -> bool:
    """Every institution holds at least ``minimum`` defaults (y = 1) and ``minimum`` non-defaults
    (and at least one of each, whatever ``minimum``)."""
    floor = max(1, minimum)
    for ix in indices:
        positives = int((y[ix] == 1).sum())
        if positives < floor or len(ix) - positives < floor:
            return False
    return True


def _check_enough_of_each_class(y: np.ndarray, k: int, minimum: int) -> None:
    positives = int((y == 1).sum())
    negatives = len(y) - positives
    floor = max(1, minimum)
    for count, what in ((positives, "defaults"), (negatives, "non-defaults")):
        if count < k * floor:
            raise UserError(
                f"the table has {count} {what}; {k} institutions with at least {floor} {what} each need {k * floor}, "
                f"so no --alpha or --seed can give every institution enough. Lower --min-positives to at most "
                f"{count // k} or --institutions to at most {max(1, count // floor)}")


def _refusal(dataset, label: str, y: np.ndarray, k: int, alpha: float, seed: int, min_rows: int, min_positives: int) -> str:
    """Why no draw fitted, and an ``--alpha``/``--seed`` that does (tried with the real partitioner)."""
    need = (f"at least {min_rows} rows and {max(1, min_positives)} defaults and non-defaults each"
            if min_positives else f"at least {min_rows} rows and both classes")
    head = (f"Dirichlet label skew with --alpha {alpha:g} gave no partition in which each of the {k} institutions "
            f"has {need}, in {MAX_REDRAWS} seeded draws from --seed {seed}")
    larger = alpha
    while larger < SUGGEST_MAX_ALPHA:
        larger *= SUGGEST_ALPHA_FACTOR
        for attempt in range(SUGGEST_REDRAWS):
            draw = draw_seed(seed, attempt)
            idx = _dirichlet_draw(dataset, label, k, larger, draw, min_rows)
            if idx is not None and _has_both_classes(idx, y, min_positives):
                return (f"{head}. --alpha {larger:g} --seed {draw} works (a larger alpha is closer to IID); or lower "
                        f"--institutions, --min-rows or --min-positives")
    return (f"{head}, nor with --alpha up to {larger:g} (close to IID). Lower --institutions, --min-rows or "
            f"--min-positives")


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
                    min_rows: int = DEFAULT_MIN_ROWS, min_positives: int = 0) -> Partition:
    """Dispatch to one of :data:`METHODS` or their :data:`METHOD_ALIASES` (see the module docstring)."""
    method = METHOD_ALIASES.get(method, method)
    if method == "iid":
        part = iid_partition(table, k, seed=seed)
    elif method == "dirichlet":
        if label is None:
            raise UserError("the dirichlet method needs the label column")
        part = dirichlet_partition(table, k, label=label, alpha=alpha, seed=seed, min_rows=min_rows,
                                   min_positives=min_positives)
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
