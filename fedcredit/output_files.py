"""Results of the institution's commands (monitor, backtest, compare): an output directory
created on demand; JSON with the project's encoder for NumPy values and paths, where a
non-finite number (an undefined rate, an AUC without defaulters) is ``null`` — strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from configs.errors import UserError
from fedcredit.json_values import json_default


def output_dir(path: str | Path) -> Path:
    """``path`` as a directory, created with its parents; a :class:`UserError` naming it when it cannot be."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {p}: cannot create the directory ({exc.strerror or exc}); give a writable path") from None
    return p


def finite(obj):
    """``obj`` with NumPy values as Python ones and every NaN / infinity replaced by None."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [finite(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(payload: dict, indent: int | None = None) -> str:
    """Strict JSON of ``payload`` (see :func:`finite`)."""
    return json.dumps(finite(payload), indent=indent, default=json_default, allow_nan=False)


def write_json(path: Path, payload: dict) -> Path:
    """Write ``payload`` as indented strict JSON."""
    path.write_text(json_text(payload, indent=2), encoding="utf-8")
    return path
