"""What a cell of an institution's table holds: text, a number, a missing value — vectorised.

Validation and schema drafting read cells the same way: :func:`as_text` (stripped text; a whole
float loses its ``.0``, so ``2.0`` in one export and ``2`` in another are the same code),
:func:`parse_numbers` (plain numbers only: no thousands separators, decimal commas, NaN words or
units — :func:`classify_non_number` says which of those a cell is, for the fix to suggest) and
:func:`looks_standardised` (a column of z-scores, for advice that fits it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NUMBER_PATTERN = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"

NAN_WORDS = {"nan", "null", "none", "na", "n/a", "#n/a", "nil", "missing", "-", "--", "—", "–", "?", ".",
              "#null!", "undefined", "#value!", "#div/0!", "n.a.", "<na>"}


def equals_text(col: pd.Series, text: str) -> np.ndarray:
    """Which cells of ``col`` are exactly the string ``text`` — cells that are not strings (lists,
    arrays, numbers in an object column) never are, and never make the comparison fail."""
    try:
        return np.asarray((col == text).to_numpy(dtype=bool, na_value=False), dtype=bool)
    except (TypeError, ValueError):  # e.g. array cells: elementwise comparison is ambiguous
        return np.fromiter((isinstance(v, str) and v == text for v in col), dtype=bool, count=len(col))


def as_text(s: pd.Series) -> pd.Series:
    """Cells as stripped text (pandas ``str`` dtype, NaN where missing); integral floats lose '.0'."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("str")
    if pd.api.types.is_numeric_dtype(s.dtype):
        if pd.api.types.is_integer_dtype(s.dtype) and not s.hasnans:
            return s.astype("str")
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        out = pd.Series(v).astype("str")
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(v) & (v == np.floor(v)) & (np.abs(v) < 2**53)
        if integral.any():
            out[integral] = v[integral].astype(np.int64).astype(str)
        out[np.isnan(v)] = np.nan
        return out
    t = s if str(s.dtype) == "str" else s.astype("str")
    return t.str.strip()


def parse_numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.Series | None]:
    """Parse a column as numbers: ``(values, missing, non_numeric, text)``.

    Text cells may have surrounding spaces; an empty cell is missing. Anything else that is
    not ``[sign] digits [. digits] [e exponent]`` is non-numeric — thousands separators,
    decimal commas and words such as NaN, null or inf included. ``values`` is NaN where the
    cell is missing or non-numeric; numbers too large for a float become ±inf.
    """
    if pd.api.types.is_bool_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64)
        return v, np.zeros(len(v), bool), np.zeros(len(v), bool), None
    if pd.api.types.is_numeric_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        return v, np.isnan(v), np.zeros(len(v), bool), None
    import pyarrow as pa
    import pyarrow.compute as pc

    text = as_text(s)
    missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
    filled = text.where(~missing, "0")
    try:
        v = _to_numpy(pc.cast(pa.array(filled, type=pa.large_string()), pa.float64()))
        if np.isfinite(v).all():
            v[missing] = np.nan
            return v, missing, np.zeros(len(v), bool), text
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    matched = filled.str.fullmatch(NUMBER_PATTERN).to_numpy(dtype=bool, na_value=False)
    bad = ~matched
    v = _to_numpy(pc.cast(pa.array(filled.where(matched, "0"), type=pa.large_string()), pa.float64()))
    v[bad | missing] = np.nan
    return v, missing, bad, text


def _to_numpy(arr) -> np.ndarray:
    """A writable float64 array of its own (Arrow's zero-copy views are read-only and copied;
    a chunked array's values are already gathered into a new array)."""
    out = arr.to_numpy() if hasattr(arr, "to_numpy") else np.asarray(arr)
    if out.dtype == np.float64 and out.flags.writeable:
        return out
    return np.array(out, dtype=np.float64, copy=True)


def classify_non_number(v: str) -> str:
    import re

    low = v.strip().lower()
    if low in NAN_WORDS:
        return "nan-word"
    if re.fullmatch(r"[+-]?(inf|infinity|∞)", low):
        return "infinite"
    if low in ("true", "false", "yes", "no", "y", "n", "t", "f"):
        return "boolean"
    if re.fullmatch(r"[+-]?\d{1,3}([,'’\u00a0 _]\d{3})+(\.\d+)?", low) or re.fullmatch(r"[+-]?\d{1,3}(\.\d{3})+(,\d+)?", low):
        return "thousands"
    if re.fullmatch(r"[+-]?\d*,\d+", low):
        return "decimal-comma"
    if re.search(r"\d", low) and re.search(r"[$€£¥%]|[a-z]{1,4}\$?\s*\d|\d\s*[a-z%]{1,5}$", low):
        return "unit"
    return "other"


def looks_standardised(values: np.ndarray) -> str:
    """``"(mean 0.01, sd 1.00)"`` when ``values`` look like z-scores — mean within 0.2 of 0, sd
    between 0.5 and 2, negative values and mostly fractions; ``""`` otherwise."""
    v = values[np.isfinite(values)]
    if v.size < 20:
        return ""
    mean, sd = float(v.mean()), float(v.std())
    fractional = float(np.mean(v != np.floor(v)))
    if abs(mean) <= 0.2 and 0.5 <= sd <= 2.0 and (v < 0).any() and fractional > 0.5:
        return f"(mean {round(mean, 2) + 0.0:.2f}, sd {sd:.2f})"  # (+ 0.0: no "-0.00")
    return ""
