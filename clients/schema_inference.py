"""Drafting a consortium schema from a table: what each column is, and why.

:func:`infer_schema` looks at every column of a :class:`~clients.raw_table.RawTable` and decides,
with the reason written down for the schema's comments:

* **the label** (``--label`` or a two-valued column with a label-like name) and **its coding**:
  the positive value (default) is ``--positive``, else a word meaning default (``bad``,
  ``default``, ``yes`` …), else the *rarer* value — defaults are the minority in credit data;
* **the id** (``--id`` or an id-like name with unique values); a column counting the rows
  1, 2, 3 … is dropped (it would let the model learn the file's order);
* **the kind**: two values 0/1 → ``binary``; a few whole numbers (≤ :data:`MAX_LEVELS`) →
  ``ordinal`` when they run without gaps, ``categorical`` (codes as categories) otherwise;
  other numbers → ``numeric``; text with ≤ :data:`MAX_CATEGORIES` values → ``categorical``;
  a constant column or free text → left out (listed in the mapping's ``[ignore]``);
* **missing values**: none seen → ``reject``; some → ``impute`` with the median (numeric), the
  middle level (ordinal) or the most frequent category. Missing-value words in a numeric column
  (``NA``, ``?`` …) become ``[recode]`` entries to ``""`` (missing) in the mapping;
* **range** (numeric): the values seen widened by :data:`RANGE_MARGIN` of their span on each
  side (not below 0 for a column without negative values), rounded outward to three
  significant digits;
* **transform** (numeric): among identity, ``log1p`` (values > −1) and ``signed-log1p``, the
  one whose histogram over the schema's bins spreads the rows most evenly — the most
  *effectively occupied* bins, exp(entropy of the bin shares); heavy right tails → log1p,
  heavy tails on both sides (e.g. standardised amounts) → signed-log1p;
* **bins** (numeric): the fewest of 32, 64 … :data:`MAX_BINS` in which no bin holds more than
  :data:`MAX_BIN_SHARE` of the rows (bins that are one repeated value, such as zero balances,
  excepted: no binning can split them). The encoder's quantile knots are read off these
  histograms, so a coarse histogram gives coarse knots (docs/schemas.md measures it).

Nothing is written here; :mod:`clients.schema_drafts` renders the TOML.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clients.raw_table import RawTable
from configs.errors import UserError

MAX_LEVELS = 12
#: whole numbers are levels (ordinal) when at least this share of the integers between their
#: smallest and largest value occur (and there are three or more); else codes (categorical)
MIN_LEVEL_DENSITY = 0.75
MAX_CATEGORIES = 50
RANGE_MARGIN = 0.10
BIN_CHOICES = (32, 64, 128, 256, 512)
MAX_BINS = BIN_CHOICES[-1]
MAX_BIN_SHARE = 0.05
#: a bin is a point mass when one value holds this share of its rows
POINT_MASS = 0.9
LABEL_NAME = re.compile(r"default|target|label|class|outcome|creditab|risk|bad|\by\b|status|response", re.I)
ID_NAME = re.compile(r"(^|[_\W])(id|key|no|number|nr)$|^id", re.I)
POSITIVE_WORDS = {"bad", "default", "defaulted", "yes", "y", "true", "t", "delinquent", "charged off",
                  "chargedoff", "positive", "fraud", "1"}
NAN_WORDS = {"na", "n/a", "nan", "null", "none", "?", "-", "--", ".", "missing", "#n/a", "nil", "<na>"}


@dataclass
class FeatureDraft:
    """One ``[[feature]]`` of the draft: its keys, and the sentence that explains them."""

    name: str
    kind: str
    keys: dict[str, Any]
    why: str
    nan_words: list[str] = field(default_factory=list)  # cells to recode to "" (missing) in the mapping


@dataclass
class LabelDraft:
    name: str
    positive: Any
    negative: Any
    why: str


@dataclass
class SchemaDraft:
    """A drafted schema: label, id, features, the columns left out (with why) and the read options."""

    name: str
    source: str
    rows: int
    label: LabelDraft
    id_column: str | None
    id_why: str
    features: list[FeatureDraft]
    ignored: dict[str, str]  # column → why it is not a feature
    delimiter: str | None
    drop_leading_column: bool


def infer_schema(raw: RawTable, name: str, *, label: str | None = None, id_column: str | None = None,
                 positive: str | None = None) -> SchemaDraft:
    """Draft a schema for ``raw`` (see the module docstring)."""
    columns = [str(c) for c in raw.frame.columns]
    _check_header(columns, raw.source)
    label = label or _guess_label(raw.frame, columns)
    for given, what in ((label, "--label"), (id_column, "--id")):
        if given is not None and given not in columns:
            raise UserError(f"{what} {given!r} is not a column of {raw.source}; columns: {', '.join(columns)}")
    label_draft = _label(raw.frame[label], label, positive)
    id_column, id_why = _id_column(raw.frame, columns, label, id_column)
    features, ignored = [], {}
    for col in columns:
        if col in (label, id_column):
            continue
        draft, why_not = _feature(col, raw.frame[col], len(raw.frame))
        if draft is None:
            ignored[col] = why_not
        else:
            features.append(draft)
    if not features:
        raise UserError(f"{raw.source}: no column besides the label and id can be a feature ("
                        + "; ".join(f"{c}: {w}" for c, w in ignored.items()) + ")")
    opts = raw.read_options
    return SchemaDraft(name, raw.source, len(raw.frame), label_draft, id_column, id_why, features, ignored,
                       opts.delimiter_name() if raw.format == "csv" else None, opts.drop_leading_column)


# --------------------------------------------------------------------------------------------
# label and id
# --------------------------------------------------------------------------------------------


def _check_header(columns: list[str], source: str) -> None:
    empty = [i + 1 for i, c in enumerate(columns) if not c.strip()]
    if empty:
        raise UserError(f"{source}: column {empty[0]} has no name; name it in the header, or read the file with "
                        f"--drop-leading-column if it is a row index")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise UserError(f"{source}: the header names {', '.join(repr(d) for d in dupes)} more than once; rename them")


def _texts(col: pd.Series) -> pd.Series:
    """Cells as stripped text, whole floats without '.0' (as validation compares them); NaN → ''."""
    from clients.cell_values import as_text

    return as_text(col).fillna("")


def _guess_label(frame: pd.DataFrame, columns: list[str]) -> str:
    two = [c for c in columns if _texts(frame[c]).replace("", np.nan).dropna().nunique() == 2]
    named = [c for c in two if LABEL_NAME.search(c)]
    if len(named) == 1:
        return named[0]
    choices = ", ".join(named or two) or "none"
    raise UserError(f"which column is the label (the outcome: default or not)? Give --label COLUMN (columns with "
                    f"two values: {choices})")


def _label(col: pd.Series, name: str, positive: str | None) -> LabelDraft:
    text = _texts(col)
    present = text[text != ""]
    counts = present.value_counts()
    if len(counts) != 2:
        shown = ", ".join(f"'{v}'" for v in counts.index[:6])
        raise UserError(f"--label {name}: a label needs exactly two values (default and not); the column has "
                        f"{len(counts)}: {shown}")
    if (text == "").any():
        raise UserError(f"--label {name}: {int((text == '').sum())} rows have no label; every training row needs "
                        f"its outcome — remove them or fill them in")
    values = list(counts.index)
    n = len(present)
    share = {v: counts[v] / n for v in values}
    if positive is not None:
        if str(positive) not in values:
            raise UserError(f"--positive {positive}: not a value of '{name}' (its values: {values[0]}, {values[1]})")
        pos, how = str(positive), "given with --positive"
    else:
        words = [v for v in values if v.strip().lower() in POSITIVE_WORDS - {"1"}]
        if len(words) == 1:
            pos, how = words[0], f"'{words[0]}' reads as a default"
        else:
            pos = min(values, key=lambda v: (share[v], v))
            how = (f"the rarer value ({100 * share[pos]:.1f} % of rows) — defaults are the minority in credit "
                   f"data. CHECK IT: if '{pos}' means 'no default', swap positive and negative (or rerun with "
                   f"--positive {[v for v in values if v != pos][0]})")
    neg = next(v for v in values if v != pos)
    why = (f"'{name}' has two values: '{pos}' ({counts[pos]} rows, {100 * share[pos]:.1f} %) and '{neg}' "
           f"({counts[neg]} rows). positive (= default) is '{pos}': {how}.")
    return LabelDraft(name, _typed(pos), _typed(neg), why)


def _typed(text: str):
    """A label value as the schema writes it: a whole number as an integer, else the text."""
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else text


def _id_column(frame: pd.DataFrame, columns: list[str], label: str, given: str | None) -> tuple[str | None, str]:
    if given is not None:
        text = _texts(frame[given])
        if (text == "").any() or text.duplicated().any():
            raise UserError(f"--id {given}: the ids must be present and unique; {int(text.duplicated().sum())} repeat "
                            f"and {int((text == '').sum())} are empty")
        return given, "given with --id; checked for duplicates, never a model input"
    for c in columns:
        if c == label or not ID_NAME.search(c):
            continue
        text = _texts(frame[c])
        if not (text == "").any() and not text.duplicated().any():
            return c, f"'{c}' has an id-like name and a different value in every row; never a model input"
    return None, ""


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


def _feature(name: str, col: pd.Series, n_rows: int) -> tuple[FeatureDraft | None, str]:
    text = _texts(col)
    nan_words = sorted({v for v in text.unique() if v.lower() in NAN_WORDS})
    missing = (text == "") | text.isin(nan_words)
    present = text[~missing]
    if present.empty:
        return None, "every cell is empty"
    values = pd.to_numeric(present, errors="coerce")
    numeric = bool(values.notna().all()) and np.isfinite(values.to_numpy(dtype=float)).all()
    distinct = present.nunique()
    if distinct == 1:
        return None, f"a single value ('{present.iloc[0]}') in every row: it carries no information"
    n_missing = int(missing.sum())
    if numeric:
        v = values.to_numpy(dtype=float)
        whole = bool(np.all(v == np.floor(v)))
        if whole and distinct == len(text) and np.array_equal(np.sort(v), np.arange(v.min(), v.min() + len(v))) \
                and n_missing == 0 and np.array_equal(v, np.sort(v)):
            return None, "it counts the rows (1, 2, 3 …): a row number, not a property of the borrower"
        return _numeric_feature(name, v, whole, distinct, n_missing, n_rows, nan_words), ""
    if nan_words:  # text with NA words: the words are just more categories
        present, missing, nan_words = text[text != ""], text == "", []
        distinct = present.nunique()
    if distinct > MAX_CATEGORIES:
        return None, (f"text with {distinct} different values (more than {MAX_CATEGORIES}): free text or an "
                      f"identifier, not a category")
    return _categorical(name, present, int(missing.sum()), n_rows,
                        f"text with {distinct} values"), ""


def _numeric_feature(name: str, v: np.ndarray, whole: bool, distinct: int, n_missing: int, n_rows: int,
                     nan_words: list[str]) -> FeatureDraft:
    dense = whole and distinct >= 3 and distinct / (int(v.max() - v.min()) + 1) >= MIN_LEVEL_DENSITY
    if whole and set(np.unique(v)) == {0.0, 1.0}:
        draft = FeatureDraft(name, "binary", {}, "two values, 0 and 1")
        _missing(draft, n_missing, n_rows, fill=int(np.median(v) >= 0.5))
    elif whole and distinct <= MAX_LEVELS and dense:
        lo, hi = int(v.min()), int(v.max())
        gaps = "without gaps" if distinct == hi - lo + 1 else f"({hi - lo + 1 - distinct} level(s) unused)"
        draft = FeatureDraft(name, "ordinal", {"range": [lo, hi]},
                             f"{distinct} whole numbers from {lo} to {hi} {gaps}: levels (if they are codes "
                             f"without an order, make it categorical with these codes as categories)")
        _missing(draft, n_missing, n_rows, fill=int(np.median(v)))
    elif whole and distinct <= MAX_LEVELS:
        codes = pd.Series(v.astype(np.int64)).astype(str)
        return _categorical(name, codes, n_missing, n_rows,
                            f"{distinct} whole numbers ({', '.join(sorted(set(codes), key=int))}): codes",
                            nan_words)
    else:
        draft = _numeric(name, v, whole, distinct)
        _missing(draft, n_missing, n_rows, fill=_nice(float(np.median(v))))
    draft.nan_words = nan_words
    return draft


def _categorical(name: str, present: pd.Series, n_missing: int, n_rows: int, what: str,
                 nan_words: list[str] | None = None) -> FeatureDraft:
    counts = present.value_counts()
    categories = sorted(counts.index, key=_natural)
    shown = ", ".join(f"'{c}' {counts[c]}" for c in categories[:8]) + (" …" if len(categories) > 8 else "")
    draft = FeatureDraft(name, "categorical", {"categories": categories}, f"{what} ({shown})", list(nan_words or []))
    _missing(draft, n_missing, n_rows, fill=str(counts.index[0]))
    return draft


def _natural(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _missing(draft: FeatureDraft, n_missing: int, n_rows: int, fill) -> None:
    if not n_missing:
        draft.keys["missing"] = "reject"
        draft.why += "; no missing values, so a missing one is an error (use impute if later files have gaps)"
        return
    how = {"categorical": "the most frequent category", "numeric": "the median",
           "ordinal": "the median level", "binary": "the more frequent value"}[draft.kind]
    draft.keys["missing"] = "impute"
    draft.keys["impute"] = fill
    draft.why += f"; {n_missing} of {n_rows} cells missing → imputed with {how}, {fill!r}"


def _numeric(name: str, v: np.ndarray, whole: bool, distinct: int) -> FeatureDraft:
    stats = _shape(v)
    choices = [t for t in ("identity", "log1p", "signed-log1p") if t != "log1p" or v.min() >= 0]
    ranges = {t: _range(v, t, whole) for t in choices}
    spread = {t: _occupied_bins(v, t, *ranges[t], 64) for t in choices}
    transform = max(choices, key=lambda t: (round(spread[t], 1), t == "identity"))
    lo, hi = ranges[transform]
    bins = _bins(v, transform, lo, hi)
    kind_words = f"{distinct} distinct {'whole numbers' if whole else 'values'} from {_fmt(v.min())} to {_fmt(v.max())}"
    others = ", ".join(f"{t} {spread[t]:.0f}" for t in choices if t != transform)
    scale = "" if transform == "identity" else f" on the {transform} scale"
    why = (f"numeric: {kind_words} ({stats}). transform {transform}: it spreads the rows over "
           f"{spread[transform]:.0f} of 64 bins' worth (exp entropy; {others}). {bins} bins: the fewest with no bin "
           f"over {100 * MAX_BIN_SHARE:.0f} % of the rows (one-value bins excepted). range {_fmt(lo)}..{_fmt(hi)}: "
           f"the values seen, {100 * RANGE_MARGIN:.0f} % wider on each side{scale}"
           + (", not below 0 (no negative value seen)" if v.min() >= 0 else ""))
    keys: dict[str, Any] = {"range": [lo, hi]}
    if transform != "identity":
        keys["transform"] = transform
    keys["bins"] = bins
    return FeatureDraft(name, "numeric", keys, why)


def _range(v: np.ndarray, transform: str, whole: bool = False) -> tuple[float, float]:
    """The values' range widened by :data:`RANGE_MARGIN` of its span on each side, measured on the
    transform's scale (a log scale widens a heavy tail in proportion); not below 0 for values ≥ 0;
    whole numbers get whole bounds."""
    from configs.schema import apply_transform
    from models.encoder import inverse_transform

    t_lo, t_hi = (float(x) for x in apply_transform(transform, np.array([v.min(), v.max()], dtype=float)))
    margin = RANGE_MARGIN * (t_hi - t_lo)
    lo, hi = inverse_transform(transform, t_lo - margin), inverse_transform(transform, t_hi + margin)
    if v.min() >= 0:
        lo = max(0.0, lo)
    if whole:
        lo, hi = math.floor(lo), math.ceil(hi)
    return _round_out(lo, down=True), _round_out(hi, down=False)


def _round_out(x: float, down: bool) -> float:
    """``x`` rounded away from the data to three significant digits (0 stays 0); whole when it can be."""
    if x == 0:
        return 0
    digits = 2 - int(math.floor(math.log10(abs(x))))
    scale = 10.0 ** digits
    r = float(f"{(math.floor if down else math.ceil)(x * scale) / scale:.12g}")
    return int(r) if r.is_integer() else r


def _shape(v: np.ndarray) -> str:
    """Skewness E[z³] and excess kurtosis E[z⁴] − 3 of the standardised values z, and the share below 0."""
    sd = v.std()
    if sd == 0:
        return "constant"
    z = (v - v.mean()) / sd
    return (f"skew {float(np.mean(z ** 3)):.2f}, excess kurtosis {float(np.mean(z ** 4)) - 3:.1f}, "
            f"{100 * float(np.mean(v < 0)):.0f} % negative")


def _transformed_edges(transform: str, lo: float, hi: float, bins: int) -> np.ndarray:
    from configs.schema import apply_transform

    t_lo, t_hi = apply_transform(transform, np.array([lo, hi], dtype=float))
    return np.linspace(float(t_lo), float(t_hi), bins + 1)


def _histogram(v: np.ndarray, transform: str, lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of every value (as the encoder's statistics bin it) and the counts."""
    from configs.schema import apply_transform

    edges = _transformed_edges(transform, lo, hi, bins)
    t = apply_transform(transform, np.clip(v, lo, hi))
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    return idx, np.bincount(idx, minlength=bins)


def _occupied_bins(v: np.ndarray, transform: str, lo: float, hi: float, bins: int) -> float:
    """exp(entropy) of the bin shares: how many bins the rows effectively fill."""
    _, counts = _histogram(v, transform, lo, hi, bins)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _bins(v: np.ndarray, transform: str, lo: float, hi: float) -> int:
    for bins in BIN_CHOICES:
        idx, counts = _histogram(v, transform, lo, hi, bins)
        heavy = np.flatnonzero(counts > MAX_BIN_SHARE * len(v))
        if all(_point_mass(v[idx == b]) for b in heavy):
            return bins
    return MAX_BINS


def _point_mass(values: np.ndarray) -> bool:
    _, counts = np.unique(values, return_counts=True)
    return counts.max() >= POINT_MASS * len(values)


def _nice(x: float) -> float:
    return int(x) if float(x).is_integer() else float(f"{x:.4g}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"
