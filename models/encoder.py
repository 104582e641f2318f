"""The consortium feature encoder, fitted from federated statistics.

Protocol
--------
1. Each institution computes :func:`feature_statistics` on its own clean table: per model
   feature a vector of counts —

   * numeric: rows per histogram bin over the schema-declared edges in the *transformed* space
     (:meth:`configs.schema.Feature.bin_edges`; values clipped into the range first);
   * ordinal: rows per integer level; categorical: rows per declared category;
     binary: rows with 0 and with 1.

   Every row adds exactly 1 to exactly one cell of each feature's vector, so adding or
   removing one borrower changes the whole statistics vector by L2 norm ``sqrt(F)`` (F = number
   of features). :mod:`privacy` uses that sensitivity to answer the query with the Gaussian
   mechanism; the encoder only ever sees (possibly noisy) sums.
2. The server sums the vectors over institutions and calls :func:`fit_encoder_from_histograms`.
3. The fitted :class:`FeatureEncoder` is sent to every node with the model and saved in the model
   package; it turns a clean table into a float32 matrix.

Encodings
---------
* numeric → *piecewise-linear encoding* (Gorishniy et al., 2022) over global quantile knots
  ``k_0 < … < k_m`` of the transformed value ``t``: component ``j = clip((t − k_{j−1}) /
  (k_j − k_{j−1}), 0, 1)``. A linear model over it is a piecewise-linear function of the
  feature; knots coinciding at a mass point (e.g. many zero payments) collapse into one.
* ordinal → thermometer: one column ``1[x ≥ l]`` per level ``l`` above the lowest.
* categorical → one-hot over the declared categories. binary → the 0/1 value.

All outputs lie in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from configs.schema import Feature, Schema, apply_transform

DEFAULT_KNOTS = 8
#: rows encoded at a time by :meth:`FeatureEncoder.transform` (keeps intermediates cache-sized)
TRANSFORM_ROWS_PER_BLOCK = 8192


def model_feature_list(schema: Schema, include_protected: bool = False) -> list[Feature]:
    return schema.model_features(include_protected)


def statistics_layout(schema: Schema, include_protected: bool = False) -> dict[str, int]:
    """Feature name → length of its count vector, in query order."""
    out = {}
    for f in model_feature_list(schema, include_protected):
        if f.kind == "numeric":
            out[f.name] = f.bins
        elif f.kind == "ordinal":
            out[f.name] = len(f.levels())
        elif f.kind == "categorical":
            out[f.name] = len(f.categories or ())
        else:
            out[f.name] = 2
    return out


def feature_statistics(table, schema: Schema, include_protected: bool = False) -> dict[str, np.ndarray]:
    """Exact per-feature count vectors of one institution's clean table (float64).

    See the module docstring for the layout; each row contributes 1 to one cell per feature.
    """
    return {f.name: feature_counts(f, table[f.name]) for f in model_feature_list(schema, include_protected)}


def feature_counts(f: Feature, col, converted: np.ndarray | None = None) -> np.ndarray:
    """One feature's count vector (the layout of :func:`statistics_layout`) from its clean column.

    ``converted``: what the encoder already computed from the same column, so it is not
    computed again — for a numeric feature the transformed values ``transform(clip(x, range))``,
    for a categorical one the category codes (:meth:`FeatureEncoder.transform` with ``keep``;
    valid only when the encoder's range, transform and categories are the schema's, see
    :meth:`FeatureEncoder.converted_like_schema`).
    """
    if f.kind == "numeric":
        t = converted if converted is not None else apply_transform(
            f.transform, np.clip(col.to_numpy(dtype=float), *f.range))
        return np.bincount(uniform_bin_index(t, f.bin_edges()), minlength=f.bins).astype(np.float64)
    if f.kind == "categorical":
        codes = converted if converted is not None else _category_codes(col, f)
        return np.bincount(codes, minlength=len(f.categories)).astype(np.float64)
    if f.kind == "ordinal":
        idx = col.to_numpy(dtype=float).astype(np.int64) - int(f.range[0])
        return np.bincount(idx, minlength=len(f.levels())).astype(np.float64)
    return np.bincount(col.to_numpy(dtype=float).astype(np.int64), minlength=2).astype(np.float64)


def add_feature_counts(totals: dict[str, np.ndarray], table, schema: Schema, converted: dict | None = None,
                       usable: set[str] = frozenset()) -> None:
    """Add the count vectors of ``table`` (one block of rows) to ``totals`` (the model features of
    :func:`feature_statistics`); ``converted[name]`` is used for the names in ``usable``. The
    counts are integers, so block sums equal the counts of the whole table exactly."""
    for f in model_feature_list(schema):
        c = feature_counts(f, table[f.name], converted.get(f.name) if converted and f.name in usable else None)
        totals[f.name] = totals[f.name] + c if f.name in totals else c


def uniform_bin_index(t: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value over equally spaced ``edges`` (values inside ``[edges[0], edges[-1]]``):
    the same as ``clip(searchsorted(edges, t, side="right") − 1, 0, bins − 1)``, computed by
    division and one comparison with the neighbouring edges (which corrects rounding) instead of
    a binary search per value."""
    bins = len(edges) - 1
    i = np.clip(((t - edges[0]) * (bins / (edges[-1] - edges[0]))).astype(np.int64), 0, bins - 1)
    i -= t < edges[i]
    i += t >= edges[i + 1]
    return np.clip(i, 0, bins - 1)


def sum_statistics(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Elementwise sum of several institutions' count vectors (same layout required)."""
    if not parts:
        raise ValueError("no statistics to sum")
    keys = list(parts[0])
    for p in parts[1:]:
        if list(p) != keys or any(p[k].shape != parts[0][k].shape for k in keys):
            raise ValueError("statistics from different schemas cannot be summed")
    return {k: np.sum([p[k] for p in parts], axis=0) for k in keys}


def _category_codes(col, f: Feature) -> np.ndarray:
    """Index of each row's category in ``f.categories``: one dictionary look-up per distinct
    value (:func:`pandas.factorize`), not per row; an undeclared or missing value is a ValueError."""
    codes, uniques = pd.factorize(col)
    lookup = {c: i for i, c in enumerate(f.categories)}
    index = np.array([lookup.get(u, -1) for u in uniques], dtype=np.int64)
    if (codes < 0).any():
        raise ValueError(f"column {f.name}: a value is missing (not a declared category)")
    if (index < 0).any():
        bad = uniques[int(np.argmax(index < 0))]
        raise ValueError(f"column {f.name}: value {bad!r} is not a declared category")
    return index[codes]


def histogram_quantiles(counts: np.ndarray, edges: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Quantiles of a histogram, the CDF taken piecewise linear inside each bin.

    For each q, the smallest x with CDF(x) = q (q = 0 gives the left edge of the first
    non-empty bin). Negative counts (from DP noise) count as zero; with no mass at all the
    range ends are interpolated.
    """
    c = np.clip(np.asarray(counts, dtype=float), 0, None)
    total = c.sum()
    if total <= 0:
        return edges[0] + np.asarray(qs, dtype=float) * (edges[-1] - edges[0])
    cdf = np.concatenate([[0.0], np.cumsum(c)]) / total
    out = np.empty(len(qs), dtype=float)
    for j, q in enumerate(qs):
        if q <= 0:
            out[j] = edges[int(np.argmax(c > 0))]
            continue
        i = min(max(int(np.searchsorted(cdf, q, side="left")), 1), len(edges) - 1)
        lo_c, hi_c = cdf[i - 1], cdf[i]
        frac = 0.0 if hi_c <= lo_c else (q - lo_c) / (hi_c - lo_c)
        out[j] = edges[i - 1] + frac * (edges[i] - edges[i - 1])
    return out


def quantile_knots(counts: np.ndarray, edges: np.ndarray, n_knots: int) -> np.ndarray:
    """Quantile knots ``k_0..k_m`` (m ≤ n_knots) from a histogram, in the histogram's space.

    Quantiles ``j / n_knots`` (j = 0..n_knots) of :func:`histogram_quantiles`; knots closer
    than 1e-9 of the range collapse; with all mass in one point a single narrow interval
    around it remains.
    """
    if np.clip(np.asarray(counts, dtype=float), 0, None).sum() <= 0:
        return np.array([edges[0], edges[-1]], dtype=float)
    knots = histogram_quantiles(counts, edges, np.linspace(0.0, 1.0, n_knots + 1))
    tol = 1e-9 * max(1.0, float(edges[-1] - edges[0]))
    kept = [knots[0]]
    for k in knots[1:]:
        if k - kept[-1] > tol:
            kept.append(k)
    if len(kept) == 1:  # all mass in one point: one narrow interval around it
        kept = [kept[0] - 0.5 * (edges[1] - edges[0]), kept[0] + 0.5 * (edges[1] - edges[0])]
    return np.asarray(kept, dtype=float)


def inverse_transform(name: str, t: float) -> float:
    """Inverse of :func:`configs.schema.apply_transform` for one value."""
    if name == "log1p":
        return float(np.expm1(t))
    if name == "signed-log1p":
        return float(np.sign(t) * np.expm1(abs(t)))
    return float(t)


@dataclass
class EncodedFeature:
    """How one feature is encoded and where its columns sit in the output matrix."""

    name: str
    kind: str
    transform: str = "identity"
    knots: list[float] = field(default_factory=list)  # numeric
    levels: list[int] = field(default_factory=list)  # ordinal
    categories: list[str] = field(default_factory=list)  # categorical
    value_range: list[float] = field(default_factory=list)
    reference: Any = None  # the consortium's typical value (median, or most common category)
    start: int = 0
    width: int = 0

    @property
    def output_names(self) -> list[str]:
        if self.kind == "numeric":
            return [f"{self.name}:ple{j}" for j in range(1, len(self.knots))]
        if self.kind == "ordinal":
            return [f"{self.name}>={lvl}" for lvl in self.levels[1:]]
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in self.categories]
        return [self.name]


@dataclass
class FeatureEncoder:
    """Turns a clean table into the model's float32 input matrix (see the module docstring)."""

    schema_key: str
    features: list[EncodedFeature]
    include_protected: bool = False

    @property
    def n_outputs(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def output_names(self) -> list[str]:
        return [n for f in self.features for n in f.output_names]

    def feature_slices(self) -> dict[str, slice]:
        """Feature name → the columns of the encoded matrix that belong to it."""
        return {f.name: slice(f.start, f.start + f.width) for f in self.features}

    def transform(self, table, keep: dict | None = None) -> np.ndarray:
        """Encode a clean table (schema columns, validated) as an ``(n, n_outputs)`` float32 matrix.

        Each column is read once; the matrix is then filled in blocks of
        :data:`TRANSFORM_ROWS_PER_BLOCK` rows, so the float64 intermediates of the
        piecewise-linear encoding stay small (cache-sized) whatever the number of rows.
        ``keep``: a dict that receives, per numeric feature, the transformed values
        ``transform(clip(x, value_range))`` and, per categorical feature, the category codes
        (for :func:`feature_counts`, which then need not compute them again).
        """
        n = len(table)
        out = np.zeros((n, self.n_outputs), dtype=np.float32)
        columns = []  # (feature, per-row values, what the encoding compares them with)
        for f in self.features:
            col = table[f.name]
            if f.kind == "numeric":
                x = np.clip(col.to_numpy(dtype=float), *f.value_range)
                k = np.asarray(f.knots, dtype=float)
                columns.append((f, apply_transform(f.transform, x), (k[:-1], k[1:] - k[:-1])))
            elif f.kind == "ordinal":
                columns.append((f, col.to_numpy(dtype=float), np.asarray(f.levels[1:], dtype=float)))
            elif f.kind == "categorical":
                columns.append((f, _category_codes(col, f), None))
            else:
                columns.append((f, col.to_numpy(dtype=float), None))
        if keep is not None:
            keep.update({f.name: values for f, values, _ in columns if f.kind in ("numeric", "categorical")})
        for start in range(0, n, TRANSFORM_ROWS_PER_BLOCK):
            stop = min(n, start + TRANSFORM_ROWS_PER_BLOCK)
            rows = out[start:stop]
            for f, values, against in columns:
                block = rows[:, f.start:f.start + f.width]
                if f.kind == "numeric":
                    lower, width = against
                    part = np.subtract(values[start:stop, None], lower)
                    np.divide(part, width, out=part)
                    np.clip(part, 0.0, 1.0, out=part)
                    block[:] = part
                elif f.kind == "ordinal":
                    block[:] = values[start:stop, None] >= against
                elif f.kind == "categorical":
                    block[np.arange(stop - start), values[start:stop]] = 1.0
                else:
                    block[:, 0] = values[start:stop]
        return out

    def converted_like_schema(self, schema: Schema) -> set[str]:
        """The features whose values :meth:`transform` converts exactly as :func:`feature_counts`
        does from the schema (same range and transform, same categories in the same order)."""
        same = set()
        for e in self.features:
            f = schema.feature(e.name) if e.name in schema.feature_names else None
            if f is None or f.kind != e.kind:
                continue
            if (e.kind == "numeric" and e.transform == f.transform
                    and list(e.value_range) == [float(f.range[0]), float(f.range[1])]):
                same.add(e.name)
            elif e.kind == "categorical" and list(e.categories) == list(f.categories or ()):
                same.add(e.name)
        return same

    def reference_frame(self) -> pd.DataFrame:
        """One row holding each feature's consortium reference value (the typical applicant)."""
        return pd.DataFrame({f.name: [f.reference] for f in self.features})

    def reference_vector(self) -> np.ndarray:
        """The encoded typical applicant, shape ``(n_outputs,)``: the baseline for reason codes."""
        return self.transform(self.reference_frame())[0]

    def to_dict(self) -> dict:
        return {
            "format": "fedcredit-encoder/1",
            "schema_key": self.schema_key,
            "include_protected": self.include_protected,
            "features": [vars(f) for f in self.features],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureEncoder":
        if d.get("format") != "fedcredit-encoder/1":
            raise ValueError(f"unknown encoder format {d.get('format')!r}")
        return cls(schema_key=d["schema_key"], include_protected=bool(d["include_protected"]),
                   features=[EncodedFeature(**f) for f in d["features"]])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeatureEncoder":
        return cls.from_dict(json.loads(text))


def fit_encoder_from_histograms(
    schema: Schema,
    stats: dict[str, np.ndarray],
    n_knots: int = DEFAULT_KNOTS,
    include_protected: bool = False,
) -> FeatureEncoder:
    """Build the consortium encoder from summed (possibly noisy) count vectors.

    ``stats`` must have the layout of :func:`statistics_layout`. Only numeric features use the
    counts (for their quantile knots); the other kinds are encoded from their declarations.
    """
    layout = statistics_layout(schema, include_protected)
    missing = [k for k in layout if k not in stats]
    if missing:
        raise ValueError(f"statistics lack features: {', '.join(missing)}")
    encoded: list[EncodedFeature] = []
    start = 0
    for f in model_feature_list(schema, include_protected):
        counts = np.asarray(stats[f.name], dtype=float)
        if counts.shape != (layout[f.name],):
            raise ValueError(f"statistics for {f.name}: expected {layout[f.name]} counts, got {counts.shape}")
        e = EncodedFeature(name=f.name, kind=f.kind, transform=f.transform,
                           value_range=[float(f.range[0]), float(f.range[1])] if f.range else [])
        if f.kind == "numeric":
            edges = f.bin_edges()
            e.knots = [float(k) for k in quantile_knots(counts, edges, n_knots)]
            e.width = len(e.knots) - 1
            median = histogram_quantiles(counts, edges, np.array([0.5]))[0]
            e.reference = float(np.clip(inverse_transform(f.transform, median), *f.range))
        elif f.kind == "ordinal":
            e.levels = f.levels()
            e.width = len(e.levels) - 1
            e.reference = int(e.levels[_median_index(counts)])
        elif f.kind == "categorical":
            e.categories = list(f.categories)
            e.width = len(e.categories)
            e.reference = e.categories[int(np.argmax(counts))]
        else:
            e.width = 1
            e.reference = float(np.argmax(counts))
        e.start = start
        start += e.width
        encoded.append(e)
    return FeatureEncoder(schema_key=schema.key, features=encoded, include_protected=include_protected)


def _median_index(counts: np.ndarray) -> int:
    c = np.clip(np.asarray(counts, dtype=float), 0, None)
    if c.sum() <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(c) / c.sum(), 0.5))


def fit_encoder_from_tables(schema: Schema, tables: list, n_knots: int = DEFAULT_KNOTS,
                            include_protected: bool = False) -> FeatureEncoder:
    """Exact (non-private) fit from several clean tables — for baselines and tests."""
    parts = [feature_statistics(t, schema, include_protected) for t in tables]
    return fit_encoder_from_histograms(schema, sum_statistics(parts), n_knots, include_protected)
