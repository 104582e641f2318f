"""JSON for run records (metrics, progress, checkpoints, sweep tables): NumPy values and paths.

``json.dumps(obj, default=json_default)`` writes NumPy scalars as numbers, NumPy arrays as lists
and paths as strings; anything else that JSON cannot hold is a TypeError, as without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)

