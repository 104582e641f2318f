"""The file a member sends the operator with its DP drift release (``fedcredit drift release``).

Format :data:`DRIFT_FORMAT`, one JSON object::

    format       "fedcredit-drift-release/1"
    institution  the institution id of the member's privacy ledger
    created      UTC time of the release
    period       the member's label for what it released (e.g. "applicants 2025-07"), may be ""
    kind         "population" (cells: rows) or "outcomes" (cells: non_defaults, defaults, sum_pd)
    model        {"run_id", "weights_sha256"} of the package the rows were scored with
    bands        {"count", "bins", "bin_group_sha256", "pd_ranges"}: the package's development
                 score bands (models.score_bands.development_bands) the cells are over
    noise        {"mechanism": "gaussian", "multiplier": σ, "sensitivity": Δ, "std_per_cell": σ·Δ}
    cells        {name: [one noised number per band]}
    privacy      {"event", "epsilon_before", "epsilon_spent", "epsilon_budget", "delta", "accountant"}:
                 the recorded event and the ledger's public figures before and after it
    signature    optional: the node key's signature of everything else (fedcredit.node_signatures)

Nothing in it is an exact function of the member's rows: the cells are noised, the rest is a
function of the package, the member's choices and its ledger's public figures.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from configs.errors import UserError

DRIFT_FORMAT = "fedcredit-drift-release/1"
KIND_CELLS = {"population": ("rows",), "outcomes": ("non_defaults", "defaults", "sum_pd")}


def bands_record(bands) -> dict:
    """The band layout of a :class:`models.score_bands.ScoreBands`, as the file names it."""
    group = np.ascontiguousarray(bands.bin_group, dtype=np.int64)
    return {"count": int(bands.n_bands), "bins": int(bands.bins),
            "bin_group_sha256": hashlib.sha256(group.tobytes()).hexdigest(),
            "pd_ranges": [[float(lo), float(hi)] for lo, hi in bands.pd_ranges()]}


def canonical_bytes(body: dict) -> bytes:
    """What is signed: the body without its signature, as sorted, compact, strict JSON."""
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def read_drift_file(path: str | Path) -> dict:
    """A drift release file, checked for shape: every key present and typed, cells finite and one
    per band. :class:`UserError` naming the file and the key otherwise. The signature is checked
    by the caller (:func:`fedcredit.node_signatures.verify_node_signature`)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file; give the drift release files the members sent (fedcredit drift release "
                        "--out FILE)")
    try:
        body = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{p}: not a readable JSON file ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != DRIFT_FORMAT:
        found = body.get("format") if isinstance(body, dict) else type(body).__name__
        raise UserError(f"{p}: not a drift release (format {found!r}, expected {DRIFT_FORMAT!r})")
    problem = _problem(body)
    if problem:
        raise UserError(f"{p}: {problem}; the file is damaged or was edited — ask the institution to send it again")
    return body


def _problem(body: dict) -> str:
    for key, kind in (("institution", str), ("created", str), ("period", str), ("kind", str), ("model", dict),
                      ("bands", dict), ("noise", dict), ("cells", dict), ("privacy", dict)):
        if not isinstance(body.get(key), kind):
            return f"key '{key}' is missing or not a {kind.__name__}"
    if body["kind"] not in KIND_CELLS:
        return f"kind must be one of {', '.join(KIND_CELLS)}, got {body['kind']!r}"
    if set(body["cells"]) != set(KIND_CELLS[body["kind"]]):
        return f"cells must be {', '.join(KIND_CELLS[body['kind']])} for kind {body['kind']}"
    count = body["bands"].get("count")
    if not isinstance(count, int) or count < 1:
        return "bands.count must be a positive integer"
    for name, values in body["cells"].items():
        if not isinstance(values, list) or len(values) != count or not all(_finite(v) for v in values):
            return f"cells.{name} must be {count} finite numbers"
    std = body["noise"].get("std_per_cell")
    if not _finite(std) or std <= 0:
        return "noise.std_per_cell must be a positive number"
    if not isinstance(body["model"].get("weights_sha256"), str):
        return "model.weights_sha256 is missing"
    return ""


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def cells_of(body: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in body["cells"].items()}
