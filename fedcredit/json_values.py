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


def write_json_atomic(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON (with :func:`json_default`) to ``path``: into
    ``path.partial`` first, then renamed over ``path``, so a reader never sees half a file."""
    import json
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")
    os.replace(tmp, path)
