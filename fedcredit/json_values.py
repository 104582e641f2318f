"""JSON for run records (metrics, progress, checkpoints, sweep tables): NumPy values and paths.

``json.dumps(obj, default=json_default)`` writes NumPy scalars as numbers, NumPy arrays as lists
and paths as strings; anything else that JSON cannot hold is a TypeError, as without it.
:func:`loads_strict` reads JSON that must mean one thing (signed entries, applications).
:func:`print_json` prints a summary as one JSON line (the ``--json`` output of the commands);
:func:`finite` makes results strict JSON (an undefined rate or AUC becomes ``null``, not NaN).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def print_json(summary: Any) -> None:
    """``summary`` as one JSON line on standard output (flushed: it must be the last line)."""
    print(json.dumps(summary, default=json_default), flush=True)


def finite(obj):
    """``obj`` with NumPy values as Python ones and every NaN / infinity replaced by None."""
    import math

    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [finite(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key '{k}'")
        out[k] = v
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON that must mean one thing: a repeated key in an object, or NaN / Infinity
    (which Python's json accepts but JSON does not), is a ValueError naming it; bytes must be UTF-8
    (UnicodeDecodeError otherwise)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)

